/* kernels/cuda/norm.cu: LayerNorm (ViT, resampler) and RMSNorm (Qwen LLM) on the GPU,
 * forward and backward, with the formulas of kernels/cpu/norm.c.
 *
 * LayerNorm: biased variance, eps inside the square root; RMSNorm: x * rsqrt(mean(x^2)
 * + eps) * w. One warp per row (8 rows per 256-thread block): each lane strides over
 * the row's C channels and the row statistics are warp-shuffle sums. The mean is
 * taken first and the variance as mean((x - mean)^2), as the CPU does. The weight and
 * bias gradients are deterministic column sums (reduce.cu). Backward ACCUMULATES;
 * NULL skips. */
#include "kernels/cuda/cuda_common.cuh"

#define ROWS_PER_BLOCK 8

static unsigned row_blocks(int N) { return (unsigned)((N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK); }

__global__ void layernorm_forward_kernel(float *out, float *mean, float *rstd, const float *in,
                                         const float *w, const float *b, int N, int C,
                                         float eps) {
  const int n = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / VLM_WARP;
  const int lane = threadIdx.x % VLM_WARP;
  if (n >= N) return;
  const float *x = in + (size_t)n * C;
  float *y = out + (size_t)n * C;
  float s = 0.0f;
  for (int c = lane; c < C; c += VLM_WARP) s += x[c];
  const float m = warp_sum(s) / (float)C;
  float v = 0.0f;
  for (int c = lane; c < C; c += VLM_WARP) {
    const float d = x[c] - m;
    v += d * d;
  }
  const float r = 1.0f / sqrtf(warp_sum(v) / (float)C + eps);
  for (int c = lane; c < C; c += VLM_WARP) y[c] = (x[c] - m) * r * w[c] + b[c];
  if (lane == 0) {
    mean[n] = m;
    rstd[n] = r;
  }
}

/* din += r * (dy*w - mean(dy*w) - xhat * mean(dy*w*xhat)) */
__global__ void layernorm_backward_din_kernel(float *din, const float *dout, const float *in,
                                              const float *w, const float *mean,
                                              const float *rstd, int N, int C) {
  const int n = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / VLM_WARP;
  const int lane = threadIdx.x % VLM_WARP;
  if (n >= N) return;
  const float *x = in + (size_t)n * C;
  const float *dy = dout + (size_t)n * C;
  float *dx = din + (size_t)n * C;
  const float m = mean[n], r = rstd[n];
  float s1 = 0.0f, s2 = 0.0f;
  for (int c = lane; c < C; c += VLM_WARP) {
    const float g = dy[c] * w[c];
    s1 += g;
    s2 += g * (x[c] - m) * r;
  }
  s1 = warp_sum(s1) / (float)C;
  s2 = warp_sum(s2) / (float)C;
  for (int c = lane; c < C; c += VLM_WARP) {
    const float xh = (x[c] - m) * r;
    dx[c] += r * (dy[c] * w[c] - s1 - xh * s2);
  }
}

__global__ void rmsnorm_forward_kernel(float *out, float *rstd, const float *in, const float *w,
                                       int N, int C, float eps) {
  const int n = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / VLM_WARP;
  const int lane = threadIdx.x % VLM_WARP;
  if (n >= N) return;
  const float *x = in + (size_t)n * C;
  float *y = out + (size_t)n * C;
  float s = 0.0f;
  for (int c = lane; c < C; c += VLM_WARP) s += x[c] * x[c];
  const float r = 1.0f / sqrtf(warp_sum(s) / (float)C + eps);
  for (int c = lane; c < C; c += VLM_WARP) y[c] = x[c] * r * w[c];
  if (lane == 0) rstd[n] = r;
}

/* din += r * dy*w - x * r^3 * mean(dy*w*x) */
__global__ void rmsnorm_backward_din_kernel(float *din, const float *dout, const float *in,
                                            const float *w, const float *rstd, int N, int C) {
  const int n = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / VLM_WARP;
  const int lane = threadIdx.x % VLM_WARP;
  if (n >= N) return;
  const float *x = in + (size_t)n * C;
  const float *dy = dout + (size_t)n * C;
  float *dx = din + (size_t)n * C;
  const float r = rstd[n];
  float s = 0.0f;
  for (int c = lane; c < C; c += VLM_WARP) s += dy[c] * w[c] * x[c];
  const float k = warp_sum(s) / (float)C * r * r * r;
  for (int c = lane; c < C; c += VLM_WARP) dx[c] += r * dy[c] * w[c] - k * x[c];
}

extern "C" void cuda_layernorm_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                                       float *mean, float *rstd, const float *in, const float *w,
                                       const float *b, int N, int C, float eps) {
  (void)ctx;
  if (N <= 0 || C <= 0) return;
  layernorm_forward_kernel<<<row_blocks(N), ROWS_PER_BLOCK * VLM_WARP, 0, stream>>>(
      out, mean, rstd, in, w, b, N, C, eps);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_layernorm_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din,
                                        float *dw, float *db, const float *dout, const float *in,
                                        const float *w, const float *mean, const float *rstd,
                                        int N, int C) {
  if (N <= 0 || C <= 0) return;
  if (din) {
    layernorm_backward_din_kernel<<<row_blocks(N), ROWS_PER_BLOCK * VLM_WARP, 0, stream>>>(
        din, dout, in, w, mean, rstd, N, C);
    VLM_CUDA_LAUNCHED();
  }
  if (dw || db) vlm_column_sums(ctx, stream, COLSUM_LAYERNORM, dw, db, dout, in, mean, rstd, N, C);
}

extern "C" void cuda_rmsnorm_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                                     float *rstd, const float *in, const float *w, int N, int C,
                                     float eps) {
  (void)ctx;
  if (N <= 0 || C <= 0) return;
  rmsnorm_forward_kernel<<<row_blocks(N), ROWS_PER_BLOCK * VLM_WARP, 0, stream>>>(out, rstd, in,
                                                                                  w, N, C, eps);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_rmsnorm_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din,
                                      float *dw, const float *dout, const float *in,
                                      const float *w, const float *rstd, int N, int C) {
  if (N <= 0 || C <= 0) return;
  if (din) {
    rmsnorm_backward_din_kernel<<<row_blocks(N), ROWS_PER_BLOCK * VLM_WARP, 0, stream>>>(
        din, dout, in, w, rstd, N, C);
    VLM_CUDA_LAUNCHED();
  }
  if (dw) vlm_column_sums(ctx, stream, COLSUM_RMSNORM, dw, NULL, dout, in, NULL, rstd, N, C);
}
