/* kernels/cuda/lora.cu: Monkey's LoRA adapter, y += scale * B(A(x)), on cuBLAS, as
 * kernels/cpu/lora.c.
 *
 * scale is a learnable scalar that lives on the device (a pointer to one float, read
 * as scale[0] like the CPU kernel). The GEMMs it multiplies read it through cuBLAS's
 * device pointer mode, so no host round trip is needed. dscale = sum(t * g) is a
 * deterministic double dot product (reduce.cu) added to dscale[0]. The backward needs
 * only the rank-r intermediate t saved by the forward and N*r floats of scratch.
 * fp32 only: the adapter's GEMMs have inner size r (tiny), so bf16 would gain little. */
#include "kernels/cuda/cuda_common.cuh"

extern "C" void cuda_lora_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *y, float *t,
                                  const float *x, const float *A, const float *B,
                                  const float *scale, int N, int K, int O, int r) {
  if (N <= 0 || r <= 0) return;
  /* t[N,r] = x[N,K] @ A[r,K]^T */
  cuda_gemm(ctx, stream, 0, 1, N, r, K, 1.0f, x, K, A, K, VLM_DT_F32, 0.0f, t, r);
  /* y[N,O] += scale * t[N,r] @ B[O,r]^T */
  gemm_f32_devscale_acc(ctx, stream, 0, 1, N, O, r, scale, t, r, B, r, y, O);
}

extern "C" void cuda_lora_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *dx, float *dA,
                                   float *dB, float *dscale, const float *dy, const float *x,
                                   const float *t, const float *A, const float *B,
                                   const float *scale, int N, int K, int O, int r,
                                   float *scratch) {
  if (N <= 0 || r <= 0) return;
  float *g = scratch; /* g[N,r] = dy[N,O] @ B[O,r] */
  cuda_gemm(ctx, stream, 0, 0, N, r, O, 1.0f, dy, O, B, r, VLM_DT_F32, 0.0f, g, r);
  /* dscale += sum(dy * (t @ B^T)) = sum(t * g) */
  if (dscale) vlm_dot(ctx, stream, NULL, dscale, t, g, (long)N * r);
  /* dB[O,r] += s * dy^T @ t */
  if (dB) gemm_f32_devscale_acc(ctx, stream, 1, 0, O, r, N, scale, dy, O, t, r, dB, r);
  /* dA[r,K] += s * g^T @ x;  dx[N,K] += s * g @ A */
  if (dA) gemm_f32_devscale_acc(ctx, stream, 1, 0, r, K, N, scale, g, r, x, K, dA, K);
  if (dx) gemm_f32_devscale_acc(ctx, stream, 0, 0, N, K, r, scale, g, r, A, K, dx, K);
}
