/* kernels/cuda/activation.cu: elementwise activations and the row softmax on the GPU,
 * with the formulas of kernels/cpu/activation.c.
 *
 * gelu_*   exact GELU x * 0.5 * (1 + erf(x / sqrt 2)) with the device's erff (ViT MLP);
 * swiglu_* Qwen's a * silu(g), silu(g) = g * sigmoid(g) (LLM MLP);
 * softmax_* along the last axis of [N, C], max-subtracted, one warp per row.
 * Elementwise kernels are grid-stride loops over n (long) elements. expf / erff are the
 * accurate device functions (no fast-math), so results agree with the CPU's
 * vectorised approximations to a few ulp. Backward ACCUMULATES; NULL skips. */
#include "kernels/cuda/cuda_common.cuh"

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

#define GRID_STRIDE(i, n)                                                               \
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                   \
       i += (long)gridDim.x * blockDim.x)

__global__ void gelu_forward_kernel(float *out, const float *in, long n) {
  GRID_STRIDE(i, n) {
    const float x = in[i];
    out[i] = x * 0.5f * (1.0f + erff(x * INV_SQRT2));
  }
}

__global__ void gelu_backward_kernel(float *din, const float *dout, const float *in, long n) {
  GRID_STRIDE(i, n) {
    const float x = in[i];
    const float cdf = 0.5f * (1.0f + erff(x * INV_SQRT2));
    const float pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
    din[i] += dout[i] * (cdf + x * pdf);
  }
}

__global__ void swiglu_forward_kernel(float *out, const float *a, const float *g, long n) {
  GRID_STRIDE(i, n) {
    const float s = 1.0f / (1.0f + expf(-g[i]));
    out[i] = a[i] * g[i] * s;
  }
}

__global__ void swiglu_backward_kernel(float *da, float *dg, const float *dout, const float *a,
                                       const float *g, long n) {
  GRID_STRIDE(i, n) {
    const float gi = g[i];
    const float s = 1.0f / (1.0f + expf(-gi));
    if (da) da[i] += dout[i] * gi * s;
    if (dg) dg[i] += dout[i] * a[i] * s * (1.0f + gi * (1.0f - s));
  }
}

#define SOFTMAX_ROWS 8

/* One warp per row: max, sum of exp, then the normalised write (each element is read
 * and written by the same lane, so out may alias in). */
__global__ void softmax_forward_kernel(float *out, const float *in, int N, int C) {
  const int n = blockIdx.x * SOFTMAX_ROWS + threadIdx.x / VLM_WARP;
  const int lane = threadIdx.x % VLM_WARP;
  if (n >= N) return;
  const float *x = in + (size_t)n * C;
  float *y = out + (size_t)n * C;
  float mx = -INFINITY;
  for (int c = lane; c < C; c += VLM_WARP) mx = fmaxf(mx, x[c]);
  mx = warp_max(mx);
  float s = 0.0f;
  for (int c = lane; c < C; c += VLM_WARP) s += expf(x[c] - mx);
  const float inv = 1.0f / warp_sum(s);
  for (int c = lane; c < C; c += VLM_WARP) y[c] = expf(x[c] - mx) * inv;
}

__global__ void softmax_backward_kernel(float *din, const float *dout, const float *out, int N,
                                        int C) {
  const int n = blockIdx.x * SOFTMAX_ROWS + threadIdx.x / VLM_WARP;
  const int lane = threadIdx.x % VLM_WARP;
  if (n >= N) return;
  const float *dy = dout + (size_t)n * C;
  const float *y = out + (size_t)n * C;
  float *dx = din + (size_t)n * C;
  float dot = 0.0f;
  for (int c = lane; c < C; c += VLM_WARP) dot += dy[c] * y[c];
  dot = warp_sum(dot);
  for (int c = lane; c < C; c += VLM_WARP) dx[c] += y[c] * (dy[c] - dot);
}

extern "C" void cuda_gelu_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                                  const float *in, long n) {
  (void)ctx;
  if (n <= 0) return;
  gelu_forward_kernel<<<vlm_ew_blocks(n), VLM_EW_THREADS, 0, stream>>>(out, in, n);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_gelu_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din,
                                   const float *dout, const float *in, long n) {
  (void)ctx;
  if (n <= 0 || !din) return;
  gelu_backward_kernel<<<vlm_ew_blocks(n), VLM_EW_THREADS, 0, stream>>>(din, dout, in, n);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_swiglu_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                                    const float *a, const float *g, long n) {
  (void)ctx;
  if (n <= 0) return;
  swiglu_forward_kernel<<<vlm_ew_blocks(n), VLM_EW_THREADS, 0, stream>>>(out, a, g, n);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_swiglu_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *da,
                                     float *dg, const float *dout, const float *a, const float *g,
                                     long n) {
  (void)ctx;
  if (n <= 0 || (!da && !dg)) return;
  swiglu_backward_kernel<<<vlm_ew_blocks(n), VLM_EW_THREADS, 0, stream>>>(da, dg, dout, a, g, n);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_softmax_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                                     const float *in, int N, int C) {
  (void)ctx;
  if (N <= 0 || C <= 0) return;
  softmax_forward_kernel<<<(N + SOFTMAX_ROWS - 1) / SOFTMAX_ROWS, SOFTMAX_ROWS * VLM_WARP, 0,
                           stream>>>(out, in, N, C);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_softmax_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din,
                                      const float *dout, const float *out, int N, int C) {
  (void)ctx;
  if (N <= 0 || C <= 0 || !din) return;
  softmax_backward_kernel<<<(N + SOFTMAX_ROWS - 1) / SOFTMAX_ROWS, SOFTMAX_ROWS * VLM_WARP, 0,
                            stream>>>(din, dout, out, N, C);
  VLM_CUDA_LAUNCHED();
}
