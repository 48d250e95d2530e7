/* kernels/cuda/cuda_common.cuh: helpers private to the CUDA kernels: error checks that
 * abort (kernels never fail), launch sizes, warp reductions, and the deterministic
 * two-stage sums shared by several kernels (column sums for bias / norm weight
 * gradients, dot products for sum_squares and LoRA's dscale).
 *
 * Determinism: no kernel here uses floating-point atomics. Every reduction is a fixed
 * tree inside a block followed by a fixed-order sum over blocks, so a result depends
 * only on the shapes and the device's block counts (not on scheduling). */
#ifndef VLM_KERNELS_CUDA_COMMON_CUH
#define VLM_KERNELS_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels/cuda/kernels_cuda.h"

/* Aborts with file:line if the last launch (or any earlier asynchronous error) failed. */
#define VLM_CUDA_LAUNCHED() vlm_cuda_check_launch(__FILE__, __LINE__)
/* Aborts with file:line if a runtime call failed. */
#define VLM_CUDA_OK(call) vlm_cuda_check((call), __FILE__, __LINE__, #call)
/* Aborts with file:line if a cuBLAS / cuBLASLt call failed. */
#define VLM_CUBLAS_OK(call) vlm_cublas_check((call), __FILE__, __LINE__, #call)

static inline void vlm_cuda_check(cudaError_t e, const char *file, int line, const char *what) {
  if (e != cudaSuccess) vlm_cuda_die(file, line, what, cudaGetErrorString(e));
}
static inline void vlm_cuda_check_launch(const char *file, int line) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) vlm_cuda_die(file, line, "kernel launch", cudaGetErrorString(e));
}
static inline void vlm_cublas_check(cublasStatus_t s, const char *file, int line,
                                    const char *what) {
  if (s != CUBLAS_STATUS_SUCCESS) vlm_cuda_die(file, line, what, cublasGetStatusString(s));
}

#define VLM_WARP 32
/* Threads per block of the elementwise kernels. */
#define VLM_EW_THREADS 256

/* Blocks for a grid-stride loop over n elements (capped; the loop covers the rest). */
static inline unsigned vlm_ew_blocks(long n) {
  long b = (n + VLM_EW_THREADS - 1) / VLM_EW_THREADS;
  if (b < 1) b = 1;
  if (b > 65536L) b = 65536L;
  return (unsigned)b;
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = VLM_WARP / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ double warp_sum_d(double x) {
  for (int o = VLM_WARP / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
  for (int o = VLM_WARP / 2; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

/* fp32 -> bf16 bits, round to nearest even (NaN -> quiet NaN with its sign). */
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) {
  return __uint_as_float((uint32_t)h << 16);
}

/* ---- deterministic column sums (reduce.cu) -------------------------------------------
 * For a [N, C] row-major input, acc0[c] += sum_n f0(n, c) and (if acc1) acc1[c] +=
 * sum_n f1(n, c), where the mode picks f:
 *   COLSUM_PLAIN:     f0 = a[n,c]                                       (bias gradient)
 *   COLSUM_LAYERNORM: f0 = a[n,c] * (x[n,c] - mean[n]) * rstd[n], f1 = a[n,c]  (LN dw, db)
 *   COLSUM_RMSNORM:   f0 = a[n,c] * x[n,c] * rstd[n]                        (RMSNorm dw)
 * a is the upstream gradient. Rows are split into chunks whose partial sums go to
 * ctx->reduce and are then added in chunk order. acc0 may be NULL when acc1 is not. */
enum { COLSUM_PLAIN = 0, COLSUM_LAYERNORM = 1, COLSUM_RMSNORM = 2 };
void vlm_column_sums(vlm_cuda_ctx *ctx, cudaStream_t stream, int mode, float *acc0, float *acc1,
                     const float *a, const float *x, const float *mean, const float *rstd, int N,
                     int C);

/* Dot product x . y (y may equal x) over n elements in double, deterministic. The
 * result is ADDED to *dst_d (device double) if dst_d, else to *dst_f (device float). */
void vlm_dot(vlm_cuda_ctx *ctx, cudaStream_t stream, double *dst_d, float *dst_f, const float *x,
             const float *y, long n);

/* ---- GEMM internals (gemm.cu) --------------------------------------------------- */

/* Row-major C[M,N] += (*alpha_dev) * op(A) op(B), fp32, alpha a device scalar. */
void gemm_f32_devscale_acc(vlm_cuda_ctx *ctx, cudaStream_t stream, int ta, int tb, int M, int N,
                           int K, const float *alpha_dev, const float *A, int lda, const float *B,
                           int ldb, float *C, int ldc);
/* Frees the cuBLASLt algorithm cache (ctx.cu). */
void gemm_cache_free(void *cache);

#endif
