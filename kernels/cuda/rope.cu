/* kernels/cuda/rope.cu: rotary position embedding as Qwen applies it (rotate-half,
 * cat(freqs, freqs)), in place on the GPU, as kernels/cpu/rope.c.
 *
 * Element (t,h,d) of x is x[t*ld + h*D + d]; the first R dims of each head rotate:
 * for i < R/2, y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin, angle = pos[t] * inv_freq[i],
 * inv_freq[i] = 1 / base^(2i/R). The inverse frequencies are computed on the host with
 * the same fp32 powf expression as the CPU kernel and passed by value, so both backends
 * form bit-identical angles (a device powf differing by an ulp would move the angle of
 * position 2000 by ~1e-4 rad); only cosf/sinf differ, by the device's 1-2 ulp. The
 * backward is the transpose rotation (sin negated). One thread per (t, h, i) pair. */
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"

/* Half of the largest rotary width supported (R <= 512). */
#define ROPE_MAX_HALF 256

typedef struct {
  float f[ROPE_MAX_HALF];
} rope_freqs;

__global__ void rope_kernel(float *x, const int *pos, int T, int H, int D, int half, int ld,
                            rope_freqs inv_freq, float sign) {
  const long total = (long)T * H * half;
  for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long)gridDim.x * blockDim.x) {
    const int i = (int)(idx % half);
    const long th = idx / half;
    const int h = (int)(th % H);
    const int t = (int)(th / H);
    const float ang = (float)pos[t] * inv_freq.f[i];
    const float c = cosf(ang), s = sign * sinf(ang);
    float *x1 = x + (size_t)t * ld + (size_t)h * D + i;
    float *x2 = x1 + half;
    const float a = *x1, b = *x2;
    *x1 = a * c - b * s;
    *x2 = b * c + a * s;
  }
}

static void rope_launch(cudaStream_t stream, float *x, const int *pos, int T, int H, int D, int R,
                        int ld, float base, float sign) {
  const int half = R / 2;
  if (T <= 0 || H <= 0 || half <= 0) return;
  if (half > ROPE_MAX_HALF)
    vlm_cuda_die(__FILE__, __LINE__, "cuda_rope", "rotary width R above 512 is not supported");
  rope_freqs fr;
  for (int i = 0; i < half; i++) {
    const float expo = (float)(2 * i) / (float)R;
    fr.f[i] = 1.0f / powf(base, expo);
  }
  for (int i = half; i < ROPE_MAX_HALF; i++) fr.f[i] = 0.0f;
  rope_kernel<<<vlm_ew_blocks((long)T * H * half), VLM_EW_THREADS, 0, stream>>>(
      x, pos, T, H, D, half, ld, fr, sign);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_rope_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *x,
                                  const int *pos, int T, int H, int D, int R, int ld,
                                  float base) {
  (void)ctx;
  rope_launch(stream, x, pos, T, H, D, R, ld, base, 1.0f);
}

extern "C" void cuda_rope_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *dx,
                                   const int *pos, int T, int H, int D, int R, int ld,
                                   float base) {
  (void)ctx;
  rope_launch(stream, dx, pos, T, H, D, R, ld, base, -1.0f);
}
