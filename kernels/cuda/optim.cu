/* kernels/cuda/optim.cu: the optimizer step and its helpers on flat fp32 ranges on the
 * GPU, as kernels/cpu/optim.c.
 *
 * cuda_adamw_step       fused torch.optim.AdamW (decoupled decay, bias-corrected
 *                       moments) on fp32 master weights and fp32 moments, one pass;
 * cuda_adamw_step_bf16  the same, also writing the bf16 copy of the updated weights
 *                       (round to nearest even), the copy bf16 runs gather;
 * cuda_sum_squares      sum of g^2 in double, ADDED to a device double (deterministic);
 * cuda_scale_inplace    x *= s.
 * The per-step scalars are formed on the host in double exactly as the CPU does, then
 * applied in fp32 per element with the CPU's expression, so one step matches the CPU
 * to an ulp. lr_cosine_with_warmup is host arithmetic: the CPU function serves both. */
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"

#define GRID_STRIDE(i, n)                                                               \
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                   \
       i += (long)gridDim.x * blockDim.x)

typedef struct {
  float beta1, beta2, one_m_b1, one_m_b2, eps, decay, step_size, inv_bc2_sqrt, g_scale;
} adamw_scalars;

static adamw_scalars adamw_prepare(float lr, float beta1, float beta2, float eps,
                                   float weight_decay, long t, float g_scale) {
  adamw_scalars s;
  s.g_scale = g_scale;
  const double bc1 = 1.0 - pow((double)beta1, (double)t);
  const double bc2 = 1.0 - pow((double)beta2, (double)t);
  s.beta1 = beta1;
  s.beta2 = beta2;
  s.one_m_b1 = 1.0f - beta1;
  s.one_m_b2 = 1.0f - beta2;
  s.eps = eps;
  s.decay = (float)(1.0 - (double)lr * (double)weight_decay);
  s.step_size = (float)((double)lr / bc1);
  s.inv_bc2_sqrt = (float)(1.0 / sqrt(bc2));
  return s;
}

/* p_bf16 may be NULL (fp32-only step). */
__global__ void adamw_kernel(float *p, uint16_t *p_bf16, const float *g, float *m, float *v,
                             long n, adamw_scalars s) {
  GRID_STRIDE(i, n) {
    const float gi = g[i] * s.g_scale;
    const float mi = s.beta1 * m[i] + s.one_m_b1 * gi;
    const float vi = s.beta2 * v[i] + s.one_m_b2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float denom = sqrtf(vi) * s.inv_bc2_sqrt + s.eps;
    const float pi = p[i] * s.decay - s.step_size * mi / denom;
    p[i] = pi;
    if (p_bf16) p_bf16[i] = f32_to_bf16_bits(pi);
  }
}

__global__ void scale_kernel(float *x, long n, float s) {
  GRID_STRIDE(i, n) x[i] *= s;
}

extern "C" void cuda_adamw_step(vlm_cuda_ctx *ctx, cudaStream_t stream, float *p, const float *g,
                                float *m, float *v, long n, float lr, float beta1, float beta2,
                                float eps, float weight_decay, long t, float g_scale) {
  cuda_adamw_step_bf16(ctx, stream, p, NULL, g, m, v, n, lr, beta1, beta2, eps, weight_decay, t,
                       g_scale);
}

extern "C" void cuda_adamw_step_bf16(vlm_cuda_ctx *ctx, cudaStream_t stream, float *p,
                                     vlm_bf16 *p_bf16, const float *g, float *m, float *v,
                                     long n, float lr, float beta1, float beta2, float eps,
                                     float weight_decay, long t, float g_scale) {
  (void)ctx;
  if (n <= 0) return;
  const adamw_scalars s = adamw_prepare(lr, beta1, beta2, eps, weight_decay, t, g_scale);
  adamw_kernel<<<vlm_ew_blocks(n), VLM_EW_THREADS, 0, stream>>>(p, p_bf16, g, m, v, n, s);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_sum_squares(vlm_cuda_ctx *ctx, cudaStream_t stream, double *sum_sq,
                                 const float *g, long n) {
  vlm_dot(ctx, stream, sum_sq, NULL, g, g, n);
}

extern "C" void cuda_scale_inplace(vlm_cuda_ctx *ctx, cudaStream_t stream, float *x, long n,
                                   float s) {
  (void)ctx;
  if (n <= 0) return;
  scale_kernel<<<vlm_ew_blocks(n), VLM_EW_THREADS, 0, stream>>>(x, n, s);
  VLM_CUDA_LAUNCHED();
}
