/* kernels/cpu/rows.c: the element-wise and row-indexed helpers of kernels.h
 * (add_into, add_vec, add_rows_bcast, rows_copy, rows_segment_add,
 * image_normalize): the moves the model makes between its buffers, as kernels so
 * that a device backend can run them where its tensors live. OpenMP over rows or
 * elements; every output row is written by one thread, so results do not depend on
 * the thread count. */
#include <string.h>

#include "kernels/kernels.h"

void add_into(float *y, const float *x, long n) {
#pragma omp parallel for simd if (n > 32768) schedule(static)
  for (long i = 0; i < n; i++) y[i] += x[i];
}

void add_vec(float *out, const float *a, const float *b, long n) {
#pragma omp parallel for simd if (n > 32768) schedule(static)
  for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void add_rows_bcast(float *x, const float *t, int N, int P, int C) {
#pragma omp parallel for if ((long)N * C > 32768) schedule(static)
  for (int r = 0; r < N; r++) {
    float *xr = x + (size_t)r * C;
    const float *tr = t + (size_t)(r % P) * C;
    for (int c = 0; c < C; c++) xr[c] += tr[c];
  }
}

void rows_copy(float *dst, const int *dst_rows, const float *src, const int *src_rows, int n,
               int C) {
#pragma omp parallel for if ((long)n * C > 32768) schedule(static)
  for (int i = 0; i < n; i++) {
    size_t d = (size_t)(dst_rows ? dst_rows[i] : i), s = (size_t)(src_rows ? src_rows[i] : i);
    memcpy(dst + d * C, src + s * C, (size_t)C * sizeof(float));
  }
}

void rows_segment_add(float *dst, const int *dst_rows, const float *src, const int *src_rows,
                      const int *seg, int n_seg, int C) {
#pragma omp parallel for if ((long)seg[n_seg] * C > 32768) schedule(static)
  for (int j = 0; j < n_seg; j++) {
    float *d = dst + (size_t)dst_rows[j] * C;
    for (int i = seg[j]; i < seg[j + 1]; i++) {
      const float *s = src + (size_t)(src_rows ? src_rows[i] : i) * C;
      for (int c = 0; c < C; c++) d[c] += s[c];
    }
  }
}

void image_normalize(float *out, const unsigned char *px, long n_pixels, const float mean[3],
                     const float std[3]) {
#pragma omp parallel for schedule(static)
  for (long i = 0; i < n_pixels; i++)
    for (int c = 0; c < 3; c++)
      out[i * 3 + c] = ((float)px[i * 3 + c] / 255.0f - mean[c]) / std[c];
}
