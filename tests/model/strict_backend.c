/* tests/model/strict_backend.c: a TEST-ONLY dispatch table ("cpu-strict") that
 * checks the model's device-clean property without a GPU. It runs the CPU
 * kernels, but claims on_device = 1 and host_parallel = 0 (as the CUDA backend
 * does), and its memory is mapped PROT_NONE except while one of its own calls
 * runs: any host read or write of backend memory outside a backend call
 * (modules/ touching a tensor) is a SIGSEGV, reported with the buffer's name.
 * Never linked into vlmtrain. */
#define _GNU_SOURCE
#include "tests/model/strict_backend.h"

#include <omp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum { MAX_REGIONS = 64 };
static struct {
  char *p;
  size_t len;
  const char *what;
} g_reg[MAX_REGIONS];
static int g_n;
static long g_calls;

static void set_prot(int prot) {
  for (int i = 0; i < g_n; i++)
    if (g_reg[i].p) mprotect(g_reg[i].p, g_reg[i].len, prot);
}
static void open_all(void) {
  g_calls++;
  set_prot(PROT_READ | PROT_WRITE);
}
static void close_all(void) { set_prot(PROT_NONE); }

static void put(const char *s) {
  ssize_t r = write(2, s, strlen(s));
  (void)r;
}

static void on_segv(int sig, siginfo_t *si, void *uc) {
  (void)sig;
  (void)uc;
  const char *a = si->si_addr;
  for (int i = 0; i < g_n; i++)
    if (g_reg[i].p && a >= g_reg[i].p && a < g_reg[i].p + g_reg[i].len) {
      put("cpu-strict: the host touched backend memory outside a backend call: buffer \"");
      put(g_reg[i].what);
      put("\"\n");
      _exit(STRICT_VIOLATION_EXIT);
    }
  put("cpu-strict: segmentation fault outside backend memory\n");
  _exit(STRICT_VIOLATION_EXIT + 1);
}

static void *s_alloc(size_t bytes, const char *what) {
  if (g_n == MAX_REGIONS) return NULL;
  size_t page = (size_t)sysconf(_SC_PAGESIZE), len = (bytes + page - 1) / page * page;
  if (len == 0) len = page;
  void *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return NULL;
  int i = 0;
  while (i < g_n && g_reg[i].p) i++;
  if (i == g_n) g_n++;
  g_reg[i].p = p;
  g_reg[i].len = len;
  g_reg[i].what = what;
  return p;
}

static void s_free(void *p) {
  for (int i = 0; i < g_n; i++)
    if (g_reg[i].p == p) {
      munmap(p, g_reg[i].len);
      g_reg[i].p = NULL;
    }
}

static void s_memcpy(void *dst, const void *src, size_t bytes) {
  open_all();
  if (bytes) memcpy(dst, src, bytes);
  close_all();
}
static void s_zero(float *x, long n) {
  open_all();
  if (n > 0) memset(x, 0, (size_t)n * sizeof(float));
  close_all();
}
static void s_sync(void) {}

#define CPU vlm_backend_cpu()
/* a void kernel: open the memory, run the CPU kernel, close it */
#define WRAP(name, params, args) \
  static void s_##name params {  \
    open_all();                  \
    CPU->name args;              \
    close_all();                 \
  }

WRAP(linear_forward, (float *out, const float *in, const float *W, const float *b, int N, int K, int O),
     (out, in, W, b, N, K, O))
WRAP(linear_backward, (float *din, float *dW, float *db, const float *dout, const float *in,
                       const float *W, int N, int K, int O), (din, dW, db, dout, in, W, N, K, O))
WRAP(matmul_forward, (float *out, const float *in, const float *P, int N, int K, int O),
     (out, in, P, N, K, O))
WRAP(matmul_backward, (float *din, float *dP, const float *dout, const float *in, const float *P,
                       int N, int K, int O), (din, dP, dout, in, P, N, K, O))
WRAP(layernorm_forward, (float *out, float *mean, float *rstd, const float *in, const float *w,
                         const float *b, int N, int C, float eps), (out, mean, rstd, in, w, b, N, C, eps))
WRAP(layernorm_backward, (float *din, float *dw, float *db, const float *dout, const float *in,
                          const float *w, const float *mean, const float *rstd, int N, int C),
     (din, dw, db, dout, in, w, mean, rstd, N, C))
WRAP(rmsnorm_forward, (float *out, float *rstd, const float *in, const float *w, int N, int C,
                       float eps), (out, rstd, in, w, N, C, eps))
WRAP(rmsnorm_backward, (float *din, float *dw, const float *dout, const float *in, const float *w,
                        const float *rstd, int N, int C), (din, dw, dout, in, w, rstd, N, C))
WRAP(gelu_forward, (float *out, const float *in, long n), (out, in, n))
WRAP(gelu_backward, (float *din, const float *dout, const float *in, long n), (din, dout, in, n))
WRAP(swiglu_forward, (float *out, const float *a, const float *g, long n), (out, a, g, n))
WRAP(swiglu_backward, (float *da, float *dg, const float *dout, const float *a, const float *g,
                       long n), (da, dg, dout, a, g, n))
WRAP(softmax_forward, (float *out, const float *in, int N, int C), (out, in, N, C))
WRAP(softmax_backward, (float *din, const float *dout, const float *out, int N, int C),
     (din, dout, out, N, C))
WRAP(rope_forward, (float *x, const int *pos, int T, int H, int D, int R, int ld, float base),
     (x, pos, T, H, D, R, ld, base))
WRAP(rope_backward, (float *dx, const int *pos, int T, int H, int D, int R, int ld, float base),
     (dx, pos, T, H, D, R, ld, base))
WRAP(attention_forward, (float *out, float *lse, const float *q, const float *k, const float *v,
                         const attn_shape *s, float *scratch), (out, lse, q, k, v, s, scratch))
WRAP(attention_backward, (float *dq, float *dk, float *dv, const float *dout, const float *out,
                          const float *lse, const float *q, const float *k, const float *v,
                          const attn_shape *s, float *scratch),
     (dq, dk, dv, dout, out, lse, q, k, v, s, scratch))
WRAP(patch_im2col, (float *cols, const float *img, int Himg, int Wimg, int y0, int x0, int win,
                    int p), (cols, img, Himg, Wimg, y0, x0, win, p))
WRAP(bicubic_resize_forward, (float *out, const float *in, int Hi, int Wi, int Ho, int Wo, int C,
                              float *tmp), (out, in, Hi, Wi, Ho, Wo, C, tmp))
WRAP(bicubic_resize_backward, (float *din, const float *dout, int Hi, int Wi, int Ho, int Wo, int C,
                               float *tmp), (din, dout, Hi, Wi, Ho, Wo, C, tmp))
WRAP(sincos_2d_table, (float *out, int G, int dim), (out, G, dim))
WRAP(adamw_step, (float *p, const float *g, float *m, float *v, long n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, long t, float g_scale),
     (p, g, m, v, n, lr, beta1, beta2, eps, weight_decay, t, g_scale))
WRAP(lora_forward, (float *y, float *t, const float *x, const float *A, const float *B,
                    const float *scale, int N, int K, int O, int r), (y, t, x, A, B, scale, N, K, O, r))
WRAP(lora_backward, (float *dx, float *dA, float *dB, float *dscale, const float *dy, const float *x,
                     const float *t, const float *A, const float *B, const float *scale, int N,
                     int K, int O, int r, float *scratch),
     (dx, dA, dB, dscale, dy, x, t, A, B, scale, N, K, O, r, scratch))
WRAP(add_into, (float *y, const float *x, long n), (y, x, n))
WRAP(add_vec, (float *out, const float *a, const float *b, long n), (out, a, b, n))
WRAP(add_rows_bcast, (float *x, const float *t, int N, int P, int C), (x, t, N, P, C))
WRAP(rows_copy, (float *dst, const int *dst_rows, const float *src, const int *src_rows, int n, int C),
     (dst, dst_rows, src, src_rows, n, C))
WRAP(rows_segment_add, (float *dst, const int *dst_rows, const float *src, const int *src_rows,
                        const int *seg, int n_seg, int C), (dst, dst_rows, src, src_rows, seg, n_seg, C))
WRAP(image_normalize, (float *out, const unsigned char *px, long n_pixels, const float mean[3],
                       const float std[3]), (out, px, n_pixels, mean, std))

/* The model sizes scratch for one issuing thread (host_parallel = 0); a CPU
 * kernel called from one thread still runs with every OpenMP thread. */
static size_t s_attention_scratch_floats(const attn_shape *s, int nthreads) {
  (void)nthreads;
  return CPU->attention_scratch_floats(s, omp_get_max_threads());
}

static double s_cross_entropy(float *dlogits, const float *logits, const int *targets, int N, int V,
                              float grad_scale, int *n_valid) {
  open_all();
  double r = CPU->cross_entropy_forward_backward(dlogits, logits, targets, N, V, grad_scale, n_valid);
  close_all();
  return r;
}

static double s_sum_squares(const float *g, long n) {
  open_all();
  double r = CPU->sum_squares(g, n);
  close_all();
  return r;
}

static vlm_backend g_strict;

const vlm_backend *strict_backend(void) {
  static int done;
  if (!done) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, NULL);
    g_strict = (vlm_backend){
        .name = "cpu-strict", .on_device = 1, .host_parallel = 0,
        .alloc = s_alloc, .free = s_free, .upload = s_memcpy, .download = s_memcpy,
        .copy = s_memcpy, .zero = s_zero, .sync = s_sync,
        .linear_forward = s_linear_forward, .linear_backward = s_linear_backward,
        .matmul_forward = s_matmul_forward, .matmul_backward = s_matmul_backward,
        .layernorm_forward = s_layernorm_forward, .layernorm_backward = s_layernorm_backward,
        .rmsnorm_forward = s_rmsnorm_forward, .rmsnorm_backward = s_rmsnorm_backward,
        .gelu_forward = s_gelu_forward, .gelu_backward = s_gelu_backward,
        .swiglu_forward = s_swiglu_forward, .swiglu_backward = s_swiglu_backward,
        .softmax_forward = s_softmax_forward, .softmax_backward = s_softmax_backward,
        .rope_forward = s_rope_forward, .rope_backward = s_rope_backward,
        .attention_scratch_floats = s_attention_scratch_floats,
        .attention_forward = s_attention_forward, .attention_backward = s_attention_backward,
        .cross_entropy_forward_backward = s_cross_entropy, .patch_im2col = s_patch_im2col,
        .bicubic_resize_forward = s_bicubic_resize_forward,
        .bicubic_resize_backward = s_bicubic_resize_backward,
        .sincos_2d_table = s_sincos_2d_table, .adamw_step = s_adamw_step,
        .sum_squares = s_sum_squares,
        .lora_forward = s_lora_forward, .lora_backward = s_lora_backward,
        .add_into = s_add_into, .add_vec = s_add_vec, .add_rows_bcast = s_add_rows_bcast,
        .rows_copy = s_rows_copy, .rows_segment_add = s_rows_segment_add,
        .image_normalize = s_image_normalize};
    done = 1;
  }
  return &g_strict;
}

long strict_backend_calls(void) { return g_calls; }
