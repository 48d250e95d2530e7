/* kernels/cpu/linear.c: dense layers on the CPU, forward and backward.
 *
 * linear_* applies an HF Linear weight W[O,I] as x @ W^T (+ b); matmul_* applies a
 * plain matrix P[I,O] from the right (visual.proj). The products go to OpenBLAS
 * (cblas_sgemm); the bias add and the bias gradient are OpenMP loops here. A
 * linear layer applied to at most SKINNY_ROWS rows (the LM head at the few rows
 * with a target) is a matrix-vector product per row, bound by reading W: the
 * skinny_* loops below do each of its three products in one pass over W, where
 * sgemm first copies (packs) all of W (2-3x the time for the LM head at 2 rows).
 * Backward ACCUMULATES into every gradient (beta = 1); a NULL gradient skips its
 * GEMM. Nothing is allocated, nothing fails. Zero-sized shapes are no-ops (an
 * empty inner dimension gives out = b, or 0). */
#include "kernels/kernels.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

/* OpenBLAS's cblas.h pulls in <complex.h>, whose macro I would clash with the
 * parameter named I (the input width) below. */
#undef I

/* Columns of the bias gradient handled by one OpenMP task (one local row sum). */
#define BIAS_BLOCK 256

/* out[N,O] = b[O] broadcast over the rows (b NULL: zeros). */
static void fill_rows(float *out, const float *b, int N, int O) {
  if (!b) {
    memset(out, 0, (size_t)N * (size_t)O * sizeof(float));
    return;
  }
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) memcpy(out + (size_t)n * O, b, (size_t)O * sizeof(float));
}

/* db[O] += sum_n dout[n,:], dout[N,O]. Parallel over blocks of columns, rows inner,
 * so every column is summed by one thread in row order (deterministic). */
static void bias_grad(float *db, const float *dout, int N, int O) {
  int nblocks = (O + BIAS_BLOCK - 1) / BIAS_BLOCK;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < nblocks; blk++) {
    int o0 = blk * BIAS_BLOCK;
    int len = O - o0 < BIAS_BLOCK ? O - o0 : BIAS_BLOCK;
    float acc[BIAS_BLOCK];
    for (int j = 0; j < len; j++) acc[j] = 0.0f;
    for (int n = 0; n < N; n++) {
      const float *row = dout + (size_t)n * O + o0;
      for (int j = 0; j < len; j++) acc[j] += row[j];
    }
    for (int j = 0; j < len; j++) db[o0 + j] += acc[j];
  }
}

/* ---- few rows: one pass over W per product ------------------------------- */

/* Rows up to which linear_* use the skinny_* loops. */
#define SKINNY_ROWS 4

/* out[n,o] += in[n,:] . W[o,:] for n < N <= SKINNY_ROWS; parallel over o. */
static void skinny_forward(float *out, const float *in, const float *W, int N, int I, int O) {
#pragma omp parallel for schedule(static)
  for (int o = 0; o < O; o++) {
    const float *w = W + (size_t)o * I;
    for (int n = 0; n < N; n++) {
      const float *x = in + (size_t)n * I;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int i = 0; i < I; i++) acc += x[i] * w[i];
      out[(size_t)n * O + o] += acc;
    }
  }
}

/* Columns of din that skinny_din sums per pass (its per-thread partial sums,
 * SKINNY_ROWS x SKINNY_IC floats, live on the stack: 16 KiB). */
#define SKINNY_IC 1024

/* din[n,:] += sum_o dout[n,o] W[o,:]. Each thread takes a contiguous range of
 * W's rows (reading W at unit stride, once) and sums it into partial sums; the
 * partials are then added into din in thread order (deterministic for a given
 * thread count). */
static void skinny_din(float *din, const float *dout, const float *W, int N, int I, int O) {
  for (int c0 = 0; c0 < I; c0 += SKINNY_IC) {
    const int nc = I - c0 < SKINNY_IC ? I - c0 : SKINNY_IC;
#pragma omp parallel
    {
      float acc[SKINNY_ROWS][SKINNY_IC];
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int o_lo = (int)((long)O * t / nt), o_hi = (int)((long)O * (t + 1) / nt);
      for (int n = 0; n < N; n++)
        for (int i = 0; i < nc; i++) acc[n][i] = 0.0f;
      for (int o = o_lo; o < o_hi; o++) {
        const float *w = W + (size_t)o * I + c0;
        for (int n = 0; n < N; n++) {
          const float g = dout[(size_t)n * O + o];
          float *a = acc[n];
#pragma omp simd
          for (int i = 0; i < nc; i++) a[i] += g * w[i];
        }
      }
#pragma omp for ordered schedule(static, 1)
      for (int tt = 0; tt < nt; tt++) {
#pragma omp ordered
        for (int n = 0; n < N; n++) {
          float *d = din + (size_t)n * I + c0;
#pragma omp simd
          for (int i = 0; i < nc; i++) d[i] += acc[n][i];
        }
      }
    }
  }
}

/* dW[o,:] += sum_n dout[n,o] in[n,:]; parallel over o. */
static void skinny_dW(float *dW, const float *dout, const float *in, int N, int I, int O) {
#pragma omp parallel for schedule(static)
  for (int o = 0; o < O; o++) {
    float *d = dW + (size_t)o * I;
    for (int n = 0; n < N; n++) {
      const float g = dout[(size_t)n * O + o];
      const float *x = in + (size_t)n * I;
#pragma omp simd
      for (int i = 0; i < I; i++) d[i] += g * x[i];
    }
  }
}

/* ---- linear and matmul ------------------------------------------------------ */

/* out[N,O] = in[N,I] @ W[O,I]^T + b[O] */
void linear_forward(float *out, const float *in, const float *W, const float *b, int N, int I,
                    int O) {
  if (N <= 0 || O <= 0) return;
  fill_rows(out, b, N, O);
  if (I <= 0) return;
  if (N <= SKINNY_ROWS) {
    skinny_forward(out, in, W, N, I, O);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, O, I, 1.0f, in, I, W, I, 1.0f, out, O);
}

/* din[N,I] += dout[N,O] @ W[O,I];  dW[O,I] += dout^T @ in[N,I];  db[O] += sum_n dout[n,:] */
void linear_backward(float *din, float *dW, float *db, const float *dout, const float *in,
                     const float *W, int N, int I, int O) {
  if (N <= 0 || O <= 0) return;
  if (db) bias_grad(db, dout, N, O);
  if (I <= 0) return;
  if (N <= SKINNY_ROWS) {
    if (din) skinny_din(din, dout, W, N, I, O);
    if (dW) skinny_dW(dW, dout, in, N, I, O);
    return;
  }
  if (din)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, I, O, 1.0f, dout, O, W, I, 1.0f,
                din, I);
  if (dW)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, I, N, 1.0f, dout, O, in, I, 1.0f, dW,
                I);
}

/* out[N,O] = in[N,I] @ P[I,O] */
void matmul_forward(float *out, const float *in, const float *P, int N, int I, int O) {
  if (N <= 0 || O <= 0) return;
  if (I <= 0) {
    fill_rows(out, NULL, N, O);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, O, I, 1.0f, in, I, P, O, 0.0f, out, O);
}

/* din[N,I] += dout[N,O] @ P[I,O]^T;  dP[I,O] += in[N,I]^T @ dout[N,O] */
void matmul_backward(float *din, float *dP, const float *dout, const float *in, const float *P,
                     int N, int I, int O) {
  if (N <= 0 || I <= 0 || O <= 0) return;
  if (din)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, I, O, 1.0f, dout, O, P, O, 1.0f, din,
                I);
  if (dP)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, I, O, N, 1.0f, in, I, dout, O, 1.0f, dP,
                O);
}
