/* kernels/cuda/gemm.cu: dense layers on the GPU: the row-major GEMM wrapper over
 * cuBLAS (fp32) and cuBLASLt (bf16 inputs), and the linear / matmul layers, fp32 and
 * bf16, forward and backward.
 *
 * Row-major through column-major BLAS: a row-major C[M,N] is the column-major C^T, and
 * C^T = op(B)^T op(A)^T, so the call swaps A and B and the roles of M and N; no data is
 * ever transposed. Both paths accumulate in fp32 (CUBLAS_COMPUTE_32F) and write fp32.
 * The fp32 path keeps full fp32 products (no TF32), so it matches the CPU to rounding.
 * The bf16 path asks cuBLASLt's heuristic for an algorithm once per (shape, strides,
 * pointer alignments) and remembers it in ctx->lt_cache; the alignments given to the
 * heuristic are those of the actual pointers, so views into larger buffers are safe.
 * If cuBLASLt has no algorithm, cublasGemmEx with bf16 inputs is used instead.
 * Backward ACCUMULATES (beta = 1); NULL gradients skip their GEMM. */
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"

/* ---- cuBLASLt algorithm cache ---------------------------------------------------- */

#define LT_CACHE_N 256

typedef struct {
  int ta, tb, M, N, K, lda, ldb, ldc;
  int alA, alB, alC;
} lt_key;

typedef struct {
  lt_key key;
  int found; /* 0: cuBLASLt returned no algorithm for this key (use cublasGemmEx) */
  cublasLtMatmulAlgo_t algo;
} lt_entry;

typedef struct {
  int n;
  lt_entry e[LT_CACHE_N];
} lt_cache;

void gemm_cache_free(void *cache) { free(cache); }

/* Largest power of two (<= 256) dividing the address: what the heuristic may assume. */
static int ptr_alignment(const void *p) {
  uintptr_t u = (uintptr_t)p;
  int a = 256;
  while (a > 1 && (u % (uintptr_t)a) != 0) a >>= 1;
  return a;
}

/* C = beta * C on a row-major [M, N] view with row stride ldc (beta 0 writes zeros). */
__global__ void scale_matrix_kernel(float *C, int M, int N, int ldc, float beta) {
  const long total = (long)M * N;
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long)gridDim.x * blockDim.x) {
    const long r = i / N, c = i % N;
    float *p = C + (size_t)r * ldc + c;
    *p = beta == 0.0f ? 0.0f : beta * *p;
  }
}

static void scale_matrix(cudaStream_t stream, float *C, int M, int N, int ldc, float beta) {
  if (beta == 1.0f) return;
  scale_matrix_kernel<<<vlm_ew_blocks((long)M * N), VLM_EW_THREADS, 0, stream>>>(C, M, N, ldc,
                                                                                beta);
  VLM_CUDA_LAUNCHED();
}

static cublasOperation_t op_of(int t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

/* bf16 x bf16 -> fp32 through cuBLASLt (column-major arguments already swapped:
 * D[m,n] = alpha op(X)[m,k] op(Y)[k,n] + beta D). */
static void lt_matmul_bf16(vlm_cuda_ctx *ctx, cudaStream_t stream, int tx, int ty, int m, int n,
                           int k, float alpha, const void *X, int ldx, const void *Y, int ldy,
                           float beta, float *D, int ldd) {
  if (!ctx->lt_cache) {
    ctx->lt_cache = calloc(1, sizeof(lt_cache));
    if (!ctx->lt_cache) vlm_cuda_die(__FILE__, __LINE__, "lt_cache", "out of host memory");
  }
  lt_cache *cache = (lt_cache *)ctx->lt_cache;
  lt_key key;
  memset(&key, 0, sizeof key);
  key.ta = tx;
  key.tb = ty;
  key.M = m;
  key.N = n;
  key.K = k;
  key.lda = ldx;
  key.ldb = ldy;
  key.ldc = ldd;
  key.alA = ptr_alignment(X);
  key.alB = ptr_alignment(Y);
  key.alC = ptr_alignment(D);

  cublasOperation_t opx = op_of(tx), opy = op_of(ty);
  cublasLtMatmulDesc_t desc = NULL;
  cublasLtMatrixLayout_t lx = NULL, ly = NULL, ld = NULL;
  VLM_CUBLAS_OK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  VLM_CUBLAS_OK(
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opx, sizeof opx));
  VLM_CUBLAS_OK(
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opy, sizeof opy));
  /* stored (pre-op) shapes, column-major */
  VLM_CUBLAS_OK(cublasLtMatrixLayoutCreate(&lx, CUDA_R_16BF, tx ? k : m, tx ? m : k, ldx));
  VLM_CUBLAS_OK(cublasLtMatrixLayoutCreate(&ly, CUDA_R_16BF, ty ? n : k, ty ? k : n, ldy));
  VLM_CUBLAS_OK(cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, m, n, ldd));

  const lt_entry *hit = NULL;
  for (int i = 0; i < cache->n; i++)
    if (memcmp(&cache->e[i].key, &key, sizeof key) == 0) {
      hit = &cache->e[i];
      break;
    }
  lt_entry fresh;
  if (!hit) {
    memset(&fresh, 0, sizeof fresh);
    fresh.key = key;
    cublasLtMatmulPreference_t pref = NULL;
    VLM_CUBLAS_OK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = ctx->workspace_bytes;
    uint32_t a1 = (uint32_t)key.alA, a2 = (uint32_t)key.alB, a3 = (uint32_t)key.alC;
    VLM_CUBLAS_OK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    VLM_CUBLAS_OK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a1, sizeof a1));
    VLM_CUBLAS_OK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &a2, sizeof a2));
    VLM_CUBLAS_OK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &a3, sizeof a3));
    VLM_CUBLAS_OK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &a3, sizeof a3));
    cublasLtMatmulHeuristicResult_t res;
    int nres = 0;
    memset(&res, 0, sizeof res);
    cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(ctx->lt, desc, lx, ly, ld, ld, pref, 1, &res, &nres);
    cublasLtMatmulPreferenceDestroy(pref);
    fresh.found = st == CUBLAS_STATUS_SUCCESS && nres > 0;
    if (fresh.found) fresh.algo = res.algo;
    if (cache->n < LT_CACHE_N) cache->e[cache->n++] = fresh;
    hit = &fresh;
  }

  if (hit->found) {
    VLM_CUBLAS_OK(cublasLtMatmul(ctx->lt, desc, &alpha, X, lx, Y, ly, &beta, D, ld, D, ld,
                                 &hit->algo, ctx->workspace, ctx->workspace_bytes, stream));
  } else {
    VLM_CUBLAS_OK(cublasSetStream(ctx->blas, stream));
    VLM_CUBLAS_OK(cublasGemmEx(ctx->blas, opx, opy, m, n, k, &alpha, X, CUDA_R_16BF, ldx, Y,
                               CUDA_R_16BF, ldy, &beta, D, CUDA_R_32F, ldd, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
  }
  cublasLtMatrixLayoutDestroy(ld);
  cublasLtMatrixLayoutDestroy(ly);
  cublasLtMatrixLayoutDestroy(lx);
  cublasLtMatmulDescDestroy(desc);
}

extern "C" void cuda_gemm(vlm_cuda_ctx *ctx, cudaStream_t stream, int ta, int tb, int M, int N,
                          int K, float alpha, const void *A, int lda, const void *B, int ldb,
                          vlm_dtype ab, float beta, float *C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    scale_matrix(stream, C, M, N, ldc, beta);
    return;
  }
  /* row-major C[M,N] = op(A) op(B)  <=>  column-major C^T[N,M] = op(B)^T op(A)^T */
  if (ab == VLM_DT_BF16) {
    lt_matmul_bf16(ctx, stream, tb, ta, N, M, K, alpha, B, ldb, A, lda, beta, C, ldc);
    return;
  }
  VLM_CUBLAS_OK(cublasSetStream(ctx->blas, stream));
  VLM_CUBLAS_OK(cublasGemmEx(ctx->blas, op_of(tb), op_of(ta), N, M, K, &alpha, B, CUDA_R_32F, ldb,
                             A, CUDA_R_32F, lda, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                             CUBLAS_GEMM_DEFAULT));
}

/* fp32 GEMM whose alpha is a device scalar and beta is 1 (LoRA's learnable scale):
 * cuBLAS reads both through CUBLAS_POINTER_MODE_DEVICE, so nothing synchronises. */
void gemm_f32_devscale_acc(vlm_cuda_ctx *ctx, cudaStream_t stream, int ta, int tb, int M, int N,
                           int K, const float *alpha_dev, const float *A, int lda, const float *B,
                           int ldb, float *C, int ldc) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  VLM_CUBLAS_OK(cublasSetStream(ctx->blas, stream));
  VLM_CUBLAS_OK(cublasSetPointerMode(ctx->blas, CUBLAS_POINTER_MODE_DEVICE));
  cublasStatus_t st = cublasGemmEx(ctx->blas, op_of(tb), op_of(ta), N, M, K, alpha_dev, B,
                                   CUDA_R_32F, ldb, A, CUDA_R_32F, lda, ctx->consts + 1, C,
                                   CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  VLM_CUBLAS_OK(cublasSetPointerMode(ctx->blas, CUBLAS_POINTER_MODE_HOST));
  VLM_CUBLAS_OK(st);
}

/* ---- bias ------------------------------------------------------------------------- */

/* out[N,O] = b[O] broadcast over rows */
__global__ void fill_rows_kernel(float *out, const float *b, int N, int O) {
  const long total = (long)N * O;
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long)gridDim.x * blockDim.x)
    out[i] = b[i % O];
}

static void fill_rows(cudaStream_t stream, float *out, const float *b, int N, int O) {
  if (!b) {
    VLM_CUDA_OK(cudaMemsetAsync(out, 0, (size_t)N * O * sizeof(float), stream));
    return;
  }
  fill_rows_kernel<<<vlm_ew_blocks((long)N * O), VLM_EW_THREADS, 0, stream>>>(out, b, N, O);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_bias_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *db,
                                   const float *dout, int N, int O) {
  vlm_column_sums(ctx, stream, COLSUM_PLAIN, db, NULL, dout, NULL, NULL, NULL, N, O);
}

/* ---- linear and matmul, for either input type -------------------------------------- */

static void linear_fwd(vlm_cuda_ctx *ctx, cudaStream_t st, float *out, const void *in,
                       const void *W, const float *b, int N, int K, int O, vlm_dtype t) {
  if (N <= 0 || O <= 0) return;
  if (b) fill_rows(st, out, b, N, O);
  if (K <= 0) {
    if (!b) fill_rows(st, out, NULL, N, O);
    return;
  }
  cuda_gemm(ctx, st, 0, 1, N, O, K, 1.0f, in, K, W, K, t, b ? 1.0f : 0.0f, out, O);
}

static void linear_bwd(vlm_cuda_ctx *ctx, cudaStream_t st, float *din, float *dW,
                       const void *dout, const void *in, const void *W, int N, int K, int O,
                       vlm_dtype t) {
  if (N <= 0 || O <= 0 || K <= 0) return;
  if (din) cuda_gemm(ctx, st, 0, 0, N, K, O, 1.0f, dout, O, W, K, t, 1.0f, din, K);
  if (dW) cuda_gemm(ctx, st, 1, 0, O, K, N, 1.0f, dout, O, in, K, t, 1.0f, dW, K);
}

static void matmul_fwd(vlm_cuda_ctx *ctx, cudaStream_t st, float *out, const void *in,
                       const void *P, int N, int K, int O, vlm_dtype t) {
  if (N <= 0 || O <= 0) return;
  if (K <= 0) {
    fill_rows(st, out, NULL, N, O);
    return;
  }
  cuda_gemm(ctx, st, 0, 0, N, O, K, 1.0f, in, K, P, O, t, 0.0f, out, O);
}

static void matmul_bwd(vlm_cuda_ctx *ctx, cudaStream_t st, float *din, float *dP,
                       const void *dout, const void *in, const void *P, int N, int K, int O,
                       vlm_dtype t) {
  if (N <= 0 || K <= 0 || O <= 0) return;
  if (din) cuda_gemm(ctx, st, 0, 1, N, K, O, 1.0f, dout, O, P, O, t, 1.0f, din, K);
  if (dP) cuda_gemm(ctx, st, 1, 0, K, O, N, 1.0f, in, K, dout, O, t, 1.0f, dP, O);
}

extern "C" void cuda_linear_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                                    const float *in, const float *W, const float *b, int N, int K,
                                    int O) {
  linear_fwd(ctx, stream, out, in, W, b, N, K, O, VLM_DT_F32);
}

extern "C" void cuda_linear_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din,
                                     float *dW, float *db, const float *dout, const float *in,
                                     const float *W, int N, int K, int O) {
  if (N <= 0 || O <= 0) return;
  if (db) cuda_bias_backward(ctx, stream, db, dout, N, O);
  linear_bwd(ctx, stream, din, dW, dout, in, W, N, K, O, VLM_DT_F32);
}

extern "C" void cuda_matmul_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                                    const float *in, const float *P, int N, int K, int O) {
  matmul_fwd(ctx, stream, out, in, P, N, K, O, VLM_DT_F32);
}

extern "C" void cuda_matmul_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din,
                                     float *dP, const float *dout, const float *in,
                                     const float *P, int N, int K, int O) {
  matmul_bwd(ctx, stream, din, dP, dout, in, P, N, K, O, VLM_DT_F32);
}

extern "C" void cuda_linear_forward_bf16(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                                         const vlm_bf16 *in, const vlm_bf16 *W, const float *b,
                                         int N, int K, int O) {
  linear_fwd(ctx, stream, out, in, W, b, N, K, O, VLM_DT_BF16);
}

extern "C" void cuda_linear_backward_bf16(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din,
                                          float *dW, const vlm_bf16 *dout, const vlm_bf16 *in,
                                          const vlm_bf16 *W, int N, int K, int O) {
  linear_bwd(ctx, stream, din, dW, dout, in, W, N, K, O, VLM_DT_BF16);
}

extern "C" void cuda_matmul_forward_bf16(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                                         const vlm_bf16 *in, const vlm_bf16 *P, int N, int K,
                                         int O) {
  matmul_fwd(ctx, stream, out, in, P, N, K, O, VLM_DT_BF16);
}

extern "C" void cuda_matmul_backward_bf16(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din,
                                          float *dP, const vlm_bf16 *dout, const vlm_bf16 *in,
                                          const vlm_bf16 *P, int N, int K, int O) {
  matmul_bwd(ctx, stream, din, dP, dout, in, P, N, K, O, VLM_DT_BF16);
}
