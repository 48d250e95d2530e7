/* kernels/cpu/activation.c: elementwise activations and the row softmax.
 *
 * gelu_*   exact GELU, x * Phi(x) with Phi(x) = 0.5 * (1 + erf(x / sqrt 2)) (ViT MLP);
 * swiglu_* Qwen's a * silu(g), silu(g) = g * sigmoid(g) (LLM MLP, gate g = w2(x));
 * softmax_* along the last axis of [N, C] (max-subtracted).
 * Elementwise kernels are flat OpenMP loops over n elements; softmax is row-parallel.
 * exp and erf are cpu_math.h's vectorisable vlm_expf, vlm_erff. Backward
 * ACCUMULATES into din (da, dg); a NULL gradient skips its work. */
#include "kernels/kernels.h"

#include <math.h>

#include "kernels/cpu/cpu_math.h"

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

/* out[n] = in * 0.5 * (1 + erf(in / sqrt(2))) */
void gelu_forward(float *out, const float *in, long n) {
#pragma omp parallel for simd schedule(static)
  for (long i = 0; i < n; i++) {
    float x = in[i];
    out[i] = x * 0.5f * (1.0f + vlm_erff(x * INV_SQRT2));
  }
}

/* din[n] += dout * (Phi(x) + x * phi(x)), phi(x) = exp(-x^2/2) / sqrt(2 pi); that
 * exponential is also the exp(-a^2) of erf(a) at a = x / sqrt(2), computed once. */
void gelu_backward(float *din, const float *dout, const float *in, long n) {
#pragma omp parallel for simd schedule(static)
  for (long i = 0; i < n; i++) {
    float x = in[i];
    float e = vlm_expf(-0.5f * x * x);
    float cdf = 0.5f * (1.0f + vlm_erff_e(x * INV_SQRT2, e));
    float pdf = INV_SQRT_2PI * e;
    din[i] += dout[i] * (cdf + x * pdf);
  }
}

/* out[n] = a * g * sigmoid(g) */
void swiglu_forward(float *out, const float *a, const float *g, long n) {
#pragma omp parallel for simd schedule(static)
  for (long i = 0; i < n; i++) {
    float s = 1.0f / (1.0f + vlm_expf(-g[i]));
    out[i] = a[i] * g[i] * s;
  }
}

/* da[n] += dout * silu(g);  dg[n] += dout * a * s * (1 + g * (1 - s)), s = sigmoid(g) */
void swiglu_backward(float *da, float *dg, const float *dout, const float *a, const float *g,
                     long n) {
  if (da && dg) {
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) {
      float s = 1.0f / (1.0f + vlm_expf(-g[i]));
      da[i] += dout[i] * g[i] * s;
      dg[i] += dout[i] * a[i] * s * (1.0f + g[i] * (1.0f - s));
    }
  } else if (da) {
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) {
      float s = 1.0f / (1.0f + vlm_expf(-g[i]));
      da[i] += dout[i] * g[i] * s;
    }
  } else if (dg) {
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) {
      float s = 1.0f / (1.0f + vlm_expf(-g[i]));
      dg[i] += dout[i] * a[i] * s * (1.0f + g[i] * (1.0f - s));
    }
  }
}

/* out[N,C] = exp(in - max) / sum(exp(in - max)) per row (out may alias in) */
void softmax_forward(float *out, const float *in, int N, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float *x = in + (size_t)n * C;
    float *y = out + (size_t)n * C;
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int c = 0; c < C; c++) mx = x[c] > mx ? x[c] : mx;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int c = 0; c < C; c++) {
      float e = vlm_expf(x[c] - mx);
      y[c] = e;
      s += e;
    }
    float inv = 1.0f / s;
    for (int c = 0; c < C; c++) y[c] *= inv;
  }
}

/* din[N,C] += out * (dout - sum_c(dout * out)) */
void softmax_backward(float *din, const float *dout, const float *out, int N, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float *dy = dout + (size_t)n * C;
    const float *y = out + (size_t)n * C;
    float *dx = din + (size_t)n * C;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int c = 0; c < C; c++) dot += dy[c] * y[c];
    for (int c = 0; c < C; c++) dx[c] += y[c] * (dy[c] - dot);
  }
}
