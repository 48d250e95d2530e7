/* kernels/cpu/norm.c: LayerNorm (ViT, resampler) and RMSNorm (Qwen LLM), forward and
 * backward, on rows of C channels.
 *
 * LayerNorm: biased variance, eps inside the square root (torch.nn.LayerNorm).
 * RMSNorm:   x * rsqrt(mean(x^2) + eps) * w (Qwen's RMSNorm, no bias).
 * The forward saves the per-row statistics the backward needs. The input gradient is
 * row-parallel; the weight and bias gradients are column-parallel (blocks of channels,
 * rows in order inside each block), so no thread writes what another writes and the
 * sums do not depend on the thread count. Backward ACCUMULATES; NULL skips. */
#include "kernels/kernels.h"

#include <math.h>

/* Channels per block of the column-parallel weight-gradient loops. */
#define COL_BLOCK 64

/* out[N,C] = (in - mean) * rstd * w[C] + b[C]; mean[N], rstd[N] saved. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *in, const float *w,
                       const float *b, int N, int C, float eps) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float *x = in + (size_t)n * C;
    float *y = out + (size_t)n * C;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int c = 0; c < C; c++) s += x[c];
    float m = s / (float)C;
    float v = 0.0f;
#pragma omp simd reduction(+ : v)
    for (int c = 0; c < C; c++) {
      float d = x[c] - m;
      v += d * d;
    }
    float r = 1.0f / sqrtf(v / (float)C + eps);
    for (int c = 0; c < C; c++) y[c] = (x[c] - m) * r * w[c] + b[c];
    mean[n] = m;
    rstd[n] = r;
  }
}

/* din[N,C] += dL/din;  dw[C] += sum_n dout * xhat;  db[C] += sum_n dout
 * with xhat = (in - mean) * rstd. */
void layernorm_backward(float *din, float *dw, float *db, const float *dout, const float *in,
                        const float *w, const float *mean, const float *rstd, int N, int C) {
  if (din) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
      const float *x = in + (size_t)n * C;
      const float *dy = dout + (size_t)n * C;
      float *dx = din + (size_t)n * C;
      float m = mean[n], r = rstd[n];
      /* dxhat = dy * w; din = r * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) */
      float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
      for (int c = 0; c < C; c++) {
        float g = dy[c] * w[c];
        s1 += g;
        s2 += g * (x[c] - m) * r;
      }
      s1 /= (float)C;
      s2 /= (float)C;
      for (int c = 0; c < C; c++) {
        float xh = (x[c] - m) * r;
        dx[c] += r * (dy[c] * w[c] - s1 - xh * s2);
      }
    }
  }
  if (dw || db) {
    int nblocks = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
      int c0 = blk * COL_BLOCK;
      int len = C - c0 < COL_BLOCK ? C - c0 : COL_BLOCK;
      float aw[COL_BLOCK], ab[COL_BLOCK];
      for (int j = 0; j < len; j++) aw[j] = ab[j] = 0.0f;
      for (int n = 0; n < N; n++) {
        const float *x = in + (size_t)n * C + c0;
        const float *dy = dout + (size_t)n * C + c0;
        float m = mean[n], r = rstd[n];
        for (int j = 0; j < len; j++) {
          aw[j] += dy[j] * (x[j] - m) * r;
          ab[j] += dy[j];
        }
      }
      if (dw)
        for (int j = 0; j < len; j++) dw[c0 + j] += aw[j];
      if (db)
        for (int j = 0; j < len; j++) db[c0 + j] += ab[j];
    }
  }
}

/* out[N,C] = in * rstd * w[C], rstd[n] = 1/sqrt(mean(in[n,:]^2) + eps) saved. */
void rmsnorm_forward(float *out, float *rstd, const float *in, const float *w, int N, int C,
                     float eps) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float *x = in + (size_t)n * C;
    float *y = out + (size_t)n * C;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int c = 0; c < C; c++) s += x[c] * x[c];
    float r = 1.0f / sqrtf(s / (float)C + eps);
    for (int c = 0; c < C; c++) y[c] = x[c] * r * w[c];
    rstd[n] = r;
  }
}

/* din[N,C] += r * (dy*w) - x * r^3 * mean(dy*w*x);  dw[C] += sum_n dy * x * r */
void rmsnorm_backward(float *din, float *dw, const float *dout, const float *in, const float *w,
                      const float *rstd, int N, int C) {
  if (din) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
      const float *x = in + (size_t)n * C;
      const float *dy = dout + (size_t)n * C;
      float *dx = din + (size_t)n * C;
      float r = rstd[n];
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int c = 0; c < C; c++) s += dy[c] * w[c] * x[c];
      float k = s / (float)C * r * r * r;
      for (int c = 0; c < C; c++) dx[c] += r * dy[c] * w[c] - k * x[c];
    }
  }
  if (dw) {
    int nblocks = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
      int c0 = blk * COL_BLOCK;
      int len = C - c0 < COL_BLOCK ? C - c0 : COL_BLOCK;
      float aw[COL_BLOCK];
      for (int j = 0; j < len; j++) aw[j] = 0.0f;
      for (int n = 0; n < N; n++) {
        const float *x = in + (size_t)n * C + c0;
        const float *dy = dout + (size_t)n * C + c0;
        float r = rstd[n];
        for (int j = 0; j < len; j++) aw[j] += dy[j] * x[j] * r;
      }
      for (int j = 0; j < len; j++) dw[c0 + j] += aw[j];
    }
  }
}
