/* kernels/cuda/precision.cu: fp32 <-> bf16 conversion for the mixed-precision path.
 *
 * bf16 is the upper 16 bits of an fp32. fp32 -> bf16 rounds to nearest, ties to even
 * (add 0x7fff plus the lowest kept bit, then truncate), which is what torch's
 * .to(torch.bfloat16) does; NaN maps to a quiet NaN of the same sign, +-Inf and values
 * that round past the largest bf16 become +-Inf. bf16 -> fp32 is exact. One element
 * per thread, grid-stride loops (memory-bound; a vectorised version is an easy gain). */
#include "kernels/cuda/cuda_common.cuh"

#define GRID_STRIDE(i, n)                                                               \
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                   \
       i += (long)gridDim.x * blockDim.x)

__global__ void f32_to_bf16_kernel(uint16_t *dst, const float *src, long n) {
  GRID_STRIDE(i, n) dst[i] = f32_to_bf16_bits(src[i]);
}

__global__ void bf16_to_f32_kernel(float *dst, const uint16_t *src, long n) {
  GRID_STRIDE(i, n) dst[i] = bf16_bits_to_f32(src[i]);
}

extern "C" void cuda_f32_to_bf16(vlm_cuda_ctx *ctx, cudaStream_t stream, vlm_bf16 *dst,
                                 const float *src, long n) {
  (void)ctx;
  if (n <= 0) return;
  f32_to_bf16_kernel<<<vlm_ew_blocks(n), VLM_EW_THREADS, 0, stream>>>(dst, src, n);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_bf16_to_f32(vlm_cuda_ctx *ctx, cudaStream_t stream, float *dst,
                                 const vlm_bf16 *src, long n) {
  (void)ctx;
  if (n <= 0) return;
  bf16_to_f32_kernel<<<vlm_ew_blocks(n), VLM_EW_THREADS, 0, stream>>>(dst, src, n);
  VLM_CUDA_LAUNCHED();
}
