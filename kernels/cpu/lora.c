/* kernels/cpu/lora.c: Monkey's LoRA adapter as one kernel pair, y += scale *
 * B(A(x)), on OpenBLAS sgemm. The backward recomputes nothing large: it needs
 * only the rank-r intermediate t saved by the forward. */
#include <cblas.h>

#include "kernels/kernels.h"

void lora_forward(float *y, float *t, const float *x, const float *A, const float *B,
                  const float *scale, int N, int K, int O, int r) {
  /* t[N,r] = x[N,K] @ A[r,K]^T */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, r, K, 1.0f, x, K, A, K, 0.0f, t, r);
  /* y[N,O] += scale * t[N,r] @ B[O,r]^T */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, O, r, scale[0], t, r, B, r, 1.0f, y, O);
}

void lora_backward(float *dx, float *dA, float *dB, float *dscale, const float *dy, const float *x,
                   const float *t, const float *A, const float *B, const float *scale, int N, int K,
                   int O, int r, float *scratch) {
  const float s = scale[0];
  float *g = scratch; /* g[N,r] = dy[N,O] @ B[O,r] */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, r, O, 1.0f, dy, O, B, r, 0.0f, g, r);
  if (dscale) { /* d scale = sum(dy * (t @ B^T)) = sum(t * g) */
    double acc = 0.0;
    for (long i = 0; i < (long)N * r; i++) acc += (double)t[i] * g[i];
    dscale[0] += (float)acc;
  }
  /* dB[O,r] += s * dy^T @ t */
  if (dB) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, r, N, s, dy, O, t, r, 1.0f, dB, r);
  /* dt = s * g; dA[r,K] += dt^T @ x; dx[N,K] += dt @ A */
  if (dA) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, K, N, s, g, r, x, K, 1.0f, dA, K);
  if (dx) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, K, r, s, g, r, A, K, 1.0f, dx, K);
}
