/* tests/gpu/emu/emu_runtime.cpp: the CPU emulation of the CUDA runtime, cuBLAS and
 * cuBLASLt declared in include/emu_cuda.h (what it checks and what it cannot: there).
 *
 * Kernel launches: blocks run one after another; the threads of a block are ucontext
 * fibers that run until they reach a barrier (__syncthreads, __syncwarp, a shuffle),
 * in a fresh random order in every phase. A warp barrier is released when all 32 lanes
 * of the warp are waiting at one; a block barrier when every live thread is. Anything
 * else is a deadlock or undefined behaviour on a GPU, and aborts with a message.
 * GEMMs: column-major, double accumulation, every argument validated first. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <map>
#include <random>
#include <vector>

#include "emu_cuda.h"

static void emu_die(const char *what) {
  fprintf(stderr, "emu: %s\n", what);
  fflush(stderr);
  abort();
}

/* ---- device memory ---------------------------------------------------------------- */

static std::map<uintptr_t, size_t> g_allocs; /* base -> bytes */
/* What cudaGetLastError returns: as on a GPU, a failed cudaMalloc also records its error
 * there (it is not sticky: the next cudaGetLastError clears it). */
static cudaError_t g_last_error = cudaSuccess;

/* The allocation holding [p, p+bytes), or 0 if none holds it whole. */
static int in_device(const void *p, size_t bytes) {
  uintptr_t u = (uintptr_t)p;
  auto it = g_allocs.upper_bound(u);
  if (it == g_allocs.begin()) return 0;
  --it;
  return u >= it->first && u + bytes <= it->first + it->second;
}

static int is_device_ptr(const void *p) { return in_device(p, 1); }
extern "C" int emu_is_device_range(const void *p, size_t bytes) { return in_device(p, bytes); }

extern "C" cudaError_t cudaMalloc(void **p, size_t bytes) {
  /* cudaMalloc's pointers are 256-byte aligned; so are these */
  const size_t want = bytes ? bytes : 1;
  void *m = want > ((size_t)1 << 40) ? NULL /* more than any GPU has */
                                      : aligned_alloc(256, (want + 255) / 256 * 256);
  if (!m) return g_last_error = cudaErrorMemoryAllocation;
  memset(m, 0xff, bytes); /* NaN: reading memory nobody wrote shows */
  g_allocs[(uintptr_t)m] = bytes ? bytes : 1;
  *p = m;
  return cudaSuccess;
}

extern "C" cudaError_t cudaFree(void *p) {
  if (!p) return cudaSuccess;
  auto it = g_allocs.find((uintptr_t)p);
  if (it == g_allocs.end()) emu_die("cudaFree of a pointer cudaMalloc did not return");
  g_allocs.erase(it);
  free(p);
  return cudaSuccess;
}

extern "C" cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes,
                                       enum cudaMemcpyKind kind, cudaStream_t s) {
  (void)s;
  if (bytes == 0) return cudaSuccess;
  const int dd = in_device(dst, bytes), sd = in_device(src, bytes);
  const int want_dd = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const int want_sd = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (kind != cudaMemcpyDefault && (dd != want_dd || sd != want_sd))
    emu_die("cudaMemcpy: a pointer is not where the copy kind says (or out of bounds)");
  memmove(dst, src, bytes);
  return cudaSuccess;
}

extern "C" cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes,
                                  enum cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, bytes, kind, 0);
}

extern "C" cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t s) {
  (void)s;
  if (bytes && !in_device(p, bytes)) emu_die("cudaMemsetAsync outside device memory");
  memset(p, value, bytes);
  return cudaSuccess;
}

/* ---- streams, events, device ----------------------------------------------------------- */

struct emu_stream {
  int dummy;
};
struct emu_event {
  int dummy;
};

extern "C" cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
  (void)flags;
  *s = new emu_stream();
  return cudaSuccess;
}
extern "C" cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;
  return cudaSuccess;
}
extern "C" cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  (void)s;
  return cudaSuccess;
}
extern "C" cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned f) {
  (void)s, (void)e, (void)f;
  return cudaSuccess;
}
extern "C" cudaError_t cudaEventCreate(cudaEvent_t *e) {
  *e = new emu_event();
  return cudaSuccess;
}
extern "C" cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned f) {
  (void)f;
  return cudaEventCreate(e);
}
extern "C" cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  (void)e, (void)s;
  return cudaSuccess;
}
extern "C" cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  (void)e;
  return cudaSuccess;
}
extern "C" cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
  (void)a, (void)b;
  *ms = 1.0f;
  return cudaSuccess;
}
extern "C" cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
/* Devices visible to this process: 1, or VLM_EMU_DEVICES (1..64), so that several MPI
 * ranks of one node can each pick their own, as on a multi-GPU node (every process
 * emulates its devices in its own memory; nothing is shared between ranks). */
static int emu_device_count(void) {
  const char *e = getenv("VLM_EMU_DEVICES");
  int n = e ? atoi(e) : 1;
  return n < 1 ? 1 : n > 64 ? 64 : n;
}
extern "C" cudaError_t cudaGetDeviceCount(int *n) {
  *n = emu_device_count();
  return cudaSuccess;
}
extern "C" cudaError_t cudaSetDevice(int d) {
  return d >= 0 && d < emu_device_count() ? cudaSuccess : cudaErrorInvalidValue;
}
extern "C" cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr a, int d) {
  (void)d;
  *v = a == cudaDevAttrMultiProcessorCount ? 4 : 1000000;
  return cudaSuccess;
}
extern "C" cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d) {
  (void)d;
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "CPU emulation (tests/gpu/emu)");
  p->major = 9, p->minor = 0, p->multiProcessorCount = 4;
  p->totalGlobalMem = (size_t)1 << 30;
  return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceGetPCIBusId(char *bus, int len, int d) {
  if (d < 0 || d >= emu_device_count() || len < 13) return cudaErrorInvalidValue;
  snprintf(bus, (size_t)len, "0000:%02x:00.0", d + 1); /* one bus per emulated device */
  return cudaSuccess;
}

extern "C" cudaError_t cudaGetLastError(void) {
  cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}
extern "C" const char *cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "emulated error";
  }
}

static std::map<const void *, int> g_func_smem;
extern "C" cudaError_t emu_func_set_smem(const void *fn, int bytes) {
  if (bytes > 227 * 1024) return cudaErrorInvalidValue; /* sm_90's opt-in maximum */
  g_func_smem[fn] = bytes;
  return cudaSuccess;
}

/* ---- kernel launches: fibers ---------------------------------------------------------- */

enum { F_RUN = 0, F_AT_BLOCK = 1, F_AT_WARP = 2, F_DONE = 3 };
struct fiber {
  ucontext_t uc;
  dim3 tid;
  int state;
  unsigned lane, warp;
};

#define FIBER_STACK (128 * 1024)
static std::vector<fiber> g_fib;
/* Fiber stacks, kept across launches and freed at exit (so LeakSanitizer stays quiet). */
static struct stack_pool {
  std::vector<char *> v;
  ~stack_pool() {
    for (char *p : v) free(p);
  }
} g_stack_pool;
static std::vector<char *> &g_stacks = g_stack_pool.v;
static ucontext_t g_sched;
static int g_cur = -1;
static const std::function<void()> *g_body;
static unsigned char g_xslot[32][32][8]; /* [warp][lane] shuffle slots (<= 1024 threads) */
static void *g_dyn_smem;
static std::mt19937 g_rng(12345);
dim3 emu_block_idx, emu_block_dim, emu_grid_dim;

const dim3 &emu_thread_idx(void) {
  if (g_cur < 0) emu_die("threadIdx read outside a kernel");
  return g_fib[g_cur].tid;
}
void *emu_dyn_smem(void) { return g_dyn_smem; }

static void fiber_main(void) {
  (*g_body)();
  g_fib[g_cur].state = F_DONE;
  /* returning resumes uc_link = the scheduler */
}

static void wait_at(int state) {
  fiber &f = g_fib[g_cur];
  f.state = state;
  swapcontext(&f.uc, &g_sched);
}

void __syncthreads(void) { wait_at(F_AT_BLOCK); }

void __syncwarp(unsigned mask) {
  if (mask != 0xffffffffu) emu_die("__syncwarp with a partial mask is not emulated");
  wait_at(F_AT_WARP);
}

void emu_warp_exchange(unsigned mask, const void *in, void *out, size_t bytes, int x) {
  if (mask != 0xffffffffu) emu_die("shuffle with a partial mask is not emulated");
  fiber &f = g_fib[g_cur];
  const unsigned lane = f.lane, warp = f.warp;
  memcpy(g_xslot[warp][lane], in, bytes);
  wait_at(F_AT_WARP);
  memcpy(out, g_xslot[warp][lane ^ (unsigned)x], bytes);
  wait_at(F_AT_WARP);
}

static void run_block(unsigned nthreads) {
  if (g_stacks.size() < nthreads) {
    while (g_stacks.size() < nthreads) {
      char *st = (char *)malloc(FIBER_STACK);
      if (!st) emu_die("out of memory for fiber stacks");
      g_stacks.push_back(st);
    }
  }
  g_fib.assign(nthreads, fiber());
  for (unsigned t = 0; t < nthreads; t++) {
    fiber &f = g_fib[t];
    f.tid = dim3(t % emu_block_dim.x, (t / emu_block_dim.x) % emu_block_dim.y,
                 t / (emu_block_dim.x * emu_block_dim.y));
    f.state = F_RUN;
    f.lane = t % 32, f.warp = t / 32;
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = g_stacks[t];
    f.uc.uc_stack.ss_size = FIBER_STACK;
    f.uc.uc_link = &g_sched;
    makecontext(&f.uc, fiber_main, 0);
  }
  std::vector<unsigned> order(nthreads);
  for (unsigned t = 0; t < nthreads; t++) order[t] = t;
  for (;;) {
    std::shuffle(order.begin(), order.end(), g_rng);
    for (unsigned t : order)
      if (g_fib[t].state == F_RUN) {
        g_cur = (int)t;
        swapcontext(&g_sched, &g_fib[t].uc);
        g_cur = -1;
      }
    /* everyone waits or is done: release a barrier */
    int released = 0, live = 0, at_block = 0;
    for (unsigned w = 0; w * 32 < nthreads; w++) {
      const unsigned lo = w * 32, hi = lo + 32 < nthreads ? lo + 32 : nthreads;
      int n_warp = 0, n_live = 0;
      for (unsigned t = lo; t < hi; t++) {
        n_live += g_fib[t].state != F_DONE;
        n_warp += g_fib[t].state == F_AT_WARP;
      }
      if (n_warp > 0 && n_warp == n_live) {
        if (n_live != 32) emu_die("warp barrier/shuffle with exited lanes or a partial warp");
        for (unsigned t = lo; t < hi; t++) g_fib[t].state = F_RUN;
        released = 1;
      }
    }
    if (released) continue;
    for (unsigned t = 0; t < nthreads; t++) {
      live += g_fib[t].state != F_DONE;
      at_block += g_fib[t].state == F_AT_BLOCK;
    }
    if (live == 0) break;
    if (at_block != live)
      emu_die("deadlock: threads wait at different barriers (__syncthreads vs warp)");
    for (unsigned t = 0; t < nthreads; t++)
      if (g_fib[t].state == F_AT_BLOCK) g_fib[t].state = F_RUN;
  }
}

long emu_launches = 0;

void emu_launch(const void *kernel, const emu_cfg &cfg, const std::function<void()> &body) {
  const unsigned nthreads = cfg.block.x * cfg.block.y * cfg.block.z;
  if (nthreads == 0 || nthreads > 1024 || cfg.block.z > 64 || cfg.grid.x == 0 ||
      cfg.grid.y == 0 || cfg.grid.z == 0 || cfg.grid.y > 65535 || cfg.grid.z > 65535) {
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  auto it = g_func_smem.find(kernel);
  const size_t limit = it != g_func_smem.end() && it->second > 48 * 1024 ? (size_t)it->second
                                                                          : 48 * 1024;
  if (cfg.smem > limit) {
    g_last_error = cudaErrorInvalidValue;
    return;
  }
  emu_launches++;
  std::vector<unsigned char> smem(cfg.smem ? cfg.smem : 1, 0xff);
  g_dyn_smem = smem.data();
  g_body = &body;
  emu_block_dim = cfg.block;
  emu_grid_dim = cfg.grid;
  for (unsigned z = 0; z < cfg.grid.z; z++)
    for (unsigned y = 0; y < cfg.grid.y; y++)
      for (unsigned x = 0; x < cfg.grid.x; x++) {
        emu_block_idx = dim3(x, y, z);
        memset(smem.data(), 0xff, smem.size()); /* a block starts with garbage (NaN) */
        run_block(nthreads);
      }
  g_dyn_smem = NULL;
}

/* ---- cuBLAS ------------------------------------------------------------------------------ */

struct emu_blas {
  cublasPointerMode_t mode;
};

extern "C" cublasStatus_t cublasCreate(cublasHandle_t *h) {
  *h = new emu_blas();
  (*h)->mode = CUBLAS_POINTER_MODE_HOST;
  return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasDestroy(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t bytes) {
  (void)h;
  if (!in_device(ws, bytes)) emu_die("cublasSetWorkspace: not device memory");
  return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
  (void)h, (void)m;
  return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
  (void)h, (void)s;
  return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasSetPointerMode(cublasHandle_t h, cublasPointerMode_t m) {
  h->mode = m;
  return CUBLAS_STATUS_SUCCESS;
}
extern "C" const char *cublasGetStatusString(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "success" : "emulated cuBLAS error";
}

static size_t type_size(cudaDataType t) { return t == CUDA_R_16BF ? 2 : 4; }

static double load(const void *p, cudaDataType t, size_t i) {
  if (t == CUDA_R_32F) return ((const float *)p)[i];
  uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* The stored rows x cols matrix with leading dimension ld lies in one device allocation. */
static void check_matrix(const char *what, const void *p, cudaDataType t, long rows, long cols,
                         long ld) {
  char msg[160];
  if (ld < (rows > 1 ? rows : 1)) {
    snprintf(msg, sizeof msg, "GEMM %s: leading dimension %ld < rows %ld", what, ld, rows);
    emu_die(msg);
  }
  if (rows == 0 || cols == 0) return;
  const size_t last = ((size_t)(cols - 1) * ld + (size_t)rows) * type_size(t);
  if (!in_device(p, last)) {
    snprintf(msg, sizeof msg, "GEMM %s (%ld x %ld, ld %ld) is not inside one device allocation",
             what, rows, cols, ld);
    emu_die(msg);
  }
}

/* C[m,n] = alpha op(A) op(B) + beta C, column-major, after validation. */
static void gemm_core(int ta, int tb, int m, int n, int k, double alpha, const void *A,
                      cudaDataType at, long lda, const void *B, cudaDataType bt, long ldb,
                      double beta, float *C, long ldc) {
  if (m < 0 || n < 0 || k < 0) emu_die("GEMM with a negative size");
  if (at != bt || (at != CUDA_R_32F && at != CUDA_R_16BF)) emu_die("GEMM input types");
  check_matrix("A", A, at, ta ? k : m, ta ? m : k, lda);
  check_matrix("B", B, bt, tb ? n : k, tb ? k : n, ldb);
  check_matrix("C", C, CUDA_R_32F, m, n, ldc);
#pragma omp parallel for schedule(static)
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      double acc = 0.0;
      for (int l = 0; l < k; l++) {
        const double a = ta ? load(A, at, (size_t)l + (size_t)i * lda)
                            : load(A, at, (size_t)i + (size_t)l * lda);
        const double b = tb ? load(B, bt, (size_t)j + (size_t)l * ldb)
                            : load(B, bt, (size_t)l + (size_t)j * ldb);
        acc += a * b;
      }
      float *c = C + (size_t)i + (size_t)j * ldc;
      *c = (float)(alpha * acc + (beta == 0.0 ? 0.0 : beta * (double)*c));
    }
}

static double read_scalar(cublasPointerMode_t mode, const void *p) {
  const int dev = is_device_ptr(p);
  if (mode == CUBLAS_POINTER_MODE_DEVICE && !dev)
    emu_die("device pointer mode with a host scalar");
  if (mode == CUBLAS_POINTER_MODE_HOST && dev)
    emu_die("host pointer mode with a device scalar");
  return *(const float *)p;
}

extern "C" cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta,
                                       cublasOperation_t tb, int m, int n, int k,
                                       const void *alpha, const void *A, cudaDataType at, int lda,
                                       const void *B, cudaDataType bt, int ldb, const void *beta,
                                       void *C, cudaDataType ct, int ldc,
                                       cublasComputeType_t compute, cublasGemmAlgo_t algo) {
  (void)algo;
  if (ct != CUDA_R_32F || compute != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  gemm_core(ta == CUBLAS_OP_T, tb == CUBLAS_OP_T, m, n, k, read_scalar(h->mode, alpha), A, at,
            lda, B, bt, ldb, read_scalar(h->mode, beta), (float *)C, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

/* ---- cuBLASLt --------------------------------------------------------------------------- */

struct emu_lt {
  int dummy;
};
struct emu_lt_desc {
  int ta, tb;
};
struct emu_lt_layout {
  cudaDataType t;
  long rows, cols, ld;
};
struct emu_lt_pref {
  uint64_t ws;
  uint32_t align[4];
};

extern "C" cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
  *h = new emu_lt();
  return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t c,
                                                   cudaDataType scale) {
  if (c != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  *d = new emu_lt_desc();
  return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
  delete d;
  return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d,
                                                         cublasLtMatmulDescAttributes_t a,
                                                         const void *v, size_t bytes) {
  if (bytes != sizeof(cublasOperation_t)) return CUBLAS_STATUS_INVALID_VALUE;
  const int t = *(const cublasOperation_t *)v == CUBLAS_OP_T;
  if (a == CUBLASLT_MATMUL_DESC_TRANSA)
    d->ta = t;
  else
    d->tb = t;
  return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType t,
                                                     uint64_t rows, uint64_t cols, int64_t ld) {
  *l = new emu_lt_layout();
  (*l)->t = t, (*l)->rows = (long)rows, (*l)->cols = (long)cols, (*l)->ld = (long)ld;
  return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
  delete l;
  return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) {
  *p = new emu_lt_pref();
  memset(*p, 0, sizeof **p);
  for (int i = 0; i < 4; i++) (*p)->align[i] = 256; /* cuBLASLt's default assumption */
  return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
  delete p;
  return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasLtMatmulPreferenceSetAttribute(
    cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t a, const void *v,
    size_t bytes) {
  if (a == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
    if (bytes != 8) return CUBLAS_STATUS_INVALID_VALUE;
    p->ws = *(const uint64_t *)v;
  } else {
    if (bytes != 4) return CUBLAS_STATUS_INVALID_VALUE;
    p->align[a - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES] = *(const uint32_t *)v;
  }
  return CUBLAS_STATUS_SUCCESS;
}

/* m, n, k from the layouts, or an abort if they disagree. */
static void lt_dims(const emu_lt_desc *d, const emu_lt_layout *a, const emu_lt_layout *b,
                    const emu_lt_layout *c, const emu_lt_layout *dd, long *m, long *n, long *k) {
  *m = dd->rows, *n = dd->cols;
  if (c->rows != dd->rows || c->cols != dd->cols || c->ld != dd->ld) emu_die("Lt: C != D layout");
  const long am = d->ta ? a->cols : a->rows, ak = d->ta ? a->rows : a->cols;
  const long bk = d->tb ? b->cols : b->rows, bn = d->tb ? b->rows : b->cols;
  if (am != *m || bn != *n || ak != bk) emu_die("Lt: layouts inconsistent with the ops");
  *k = ak;
}

static uint32_t alignment_of(const void *p) {
  uint32_t a = 256;
  while (a > 1 && (uintptr_t)p % a) a >>= 1;
  return a;
}

extern "C" cublasStatus_t cublasLtMatmulAlgoGetHeuristic(
    cublasLtHandle_t h, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
    cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t dd, cublasLtMatmulPreference_t p,
    int requested, cublasLtMatmulHeuristicResult_t *res, int *count) {
  (void)h;
  long m, n, k;
  lt_dims(d, a, b, c, dd, &m, &n, &k);
  if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
  memset(res, 0, sizeof *res);
  for (int i = 0; i < 4; i++) res->algo.data[i] = p->align[i];
  res->algo.data[4] = p->ws;
  *count = 1;
  return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t d,
                                         const void *alpha, const void *A,
                                         cublasLtMatrixLayout_t la, const void *B,
                                         cublasLtMatrixLayout_t lb, const void *beta,
                                         const void *C, cublasLtMatrixLayout_t lc, void *D,
                                         cublasLtMatrixLayout_t ld,
                                         const cublasLtMatmulAlgo_t *algo, void *ws,
                                         size_t ws_bytes, cudaStream_t s) {
  (void)h, (void)s;
  long m, n, k;
  lt_dims(d, la, lb, lc, ld, &m, &n, &k);
  if (C != D) emu_die("Lt: out-of-place C -> D is not used by vlmtrain");
  const void *ptrs[4] = {A, B, C, D};
  for (int i = 0; i < 4; i++)
    if (alignment_of(ptrs[i]) < algo->data[i])
      emu_die("Lt: a pointer is less aligned than the heuristic was told");
  if (ws_bytes > algo->data[4] || (ws_bytes && !in_device(ws, ws_bytes)))
    emu_die("Lt: workspace larger than the preference or not device memory");
  if (lc->t != CUDA_R_32F) emu_die("Lt: C must be fp32 here");
  gemm_core(d->ta, d->tb, (int)m, (int)n, (int)k, read_scalar(CUBLAS_POINTER_MODE_HOST, alpha), A,
            la->t, la->ld, B, lb->t, lb->ld, read_scalar(CUBLAS_POINTER_MODE_HOST, beta),
            (float *)D, ld->ld);
  return CUBLAS_STATUS_SUCCESS;
}
