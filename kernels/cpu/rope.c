/* kernels/cpu/rope.c: rotary position embedding as Qwen applies it, in place.
 *
 * x holds T tokens x H heads x D dims, element (t,h,d) at x[t*ld + h*D + d]; the first
 * R dims of each head (R even) are rotated, the rest pass through. Rotate-half
 * convention with cat(freqs, freqs): for i < R/2, with x1 = x[i], x2 = x[i + R/2],
 *   y1 = x1*cos - x2*sin,   y2 = x2*cos + x1*sin,   angle = pos[t] * inv_freq[i],
 * inv_freq[i] = 1 / base^(2i/R). Exponent, inv_freq and angle are computed in fp32 as
 * Qwen does (torch fp32), so the same positions give the same angles. The backward
 * applies the transpose rotation (angle -> -angle) to the gradient in place.
 * Parallel over tokens; cos/sin are computed once per token in chunks of CHUNK
 * frequencies and reused by every head. */
#include "kernels/kernels.h"

#include <math.h>

#define CHUNK 64

/* sign = +1: forward rotation; sign = -1: its transpose. */
static void rope_apply(float *x, const int *pos, int T, int H, int D, int R, int ld, float base,
                       float sign) {
  int half = R / 2;
#pragma omp parallel for schedule(static)
  for (int t = 0; t < T; t++) {
    float cs[CHUNK], sn[CHUNK];
    float p = (float)pos[t];
    for (int i0 = 0; i0 < half; i0 += CHUNK) {
      int len = half - i0 < CHUNK ? half - i0 : CHUNK;
      for (int j = 0; j < len; j++) {
        float expo = (float)(2 * (i0 + j)) / (float)R;
        float inv_freq = 1.0f / powf(base, expo);
        float ang = p * inv_freq;
        cs[j] = cosf(ang);
        sn[j] = sign * sinf(ang);
      }
      for (int h = 0; h < H; h++) {
        float *x1 = x + (size_t)t * ld + (size_t)h * D + i0;
        float *x2 = x1 + half;
        for (int j = 0; j < len; j++) {
          float a = x1[j], b = x2[j];
          x1[j] = a * cs[j] - b * sn[j];
          x2[j] = b * cs[j] + a * sn[j];
        }
      }
    }
  }
}

/* x[T, ld] (heads at h*D): rotate the first R dims of every head in place. */
void rope_forward(float *x, const int *pos, int T, int H, int D, int R, int ld, float base) {
  rope_apply(x, pos, T, H, D, R, ld, base, 1.0f);
}

/* dx[T, ld]: dL/d(rotated x) -> dL/dx in place (rotation by -angle). */
void rope_backward(float *dx, const int *pos, int T, int H, int D, int R, int ld, float base) {
  rope_apply(dx, pos, T, H, D, R, ld, base, -1.0f);
}
