/* kernels/cpu/image.c: image-side operations of the vision path.
 *
 * patch_im2col    the columns of conv1 (p x p patches, stride p) of one window;
 * bicubic_*       PyTorch's F.interpolate(mode="bicubic", align_corners=False): the 1-D
 *                 matrix, and a separable channels-last resize with its transpose
 *                 (global view, ViT positional embedding, resampler pos_embed);
 * sincos_2d_table the resampler's fixed 2-D sine-cosine position table (MAE/Qwen-VL).
 * Bicubic weights are recomputed from the index arithmetic where needed (no table is
 * allocated). Arithmetic follows PyTorch's CPU kernel: scale = in/out in fp32,
 * src = scale * (dst + 0.5) - 0.5 (double, not clamped), t = src - floor(src), cubic
 * A = -0.75, taps floor(src)-1 .. floor(src)+2 clamped to [0, n-1] (clamped taps add up). */
#include "kernels/kernels.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* cols[G*G, 3*p*p], G = win/p: row gy*G+gx holds patch (gy,gx) of the win x win window at
 * (y0,x0) of img[Himg, Wimg, 3], column c*p*p + ky*p + kx (conv1's [W, 3, p, p] order). */
void patch_im2col(float *cols, const float *img, int Himg, int Wimg, int y0, int x0, int win,
                  int p) {
  (void)Himg;
  int G = win / p;
  int K = 3 * p * p;
#pragma omp parallel for schedule(static)
  for (int gi = 0; gi < G * G; gi++) {
    int gy = gi / G, gx = gi % G;
    float *row = cols + (size_t)gi * K;
    for (int ky = 0; ky < p; ky++) {
      const float *src = img + ((size_t)(y0 + gy * p + ky) * Wimg + (size_t)(x0 + gx * p)) * 3;
      for (int kx = 0; kx < p; kx++)
        for (int c = 0; c < 3; c++) row[c * p * p + ky * p + kx] = src[kx * 3 + c];
    }
  }
}

/* Taps and weights of output index dst for a resize in_n -> out_n. As ATen's CPU kernel:
 * the scale in/out is rounded to fp32, the source coordinate and t are then formed in
 * double (no further rounding), the weights evaluated and rounded to fp32. */
static void cubic_taps(int dst, int in_n, int out_n, int idx[4], float wt[4]) {
  const double A = -0.75;
  float scale = (float)in_n / (float)out_n;
  double src = (double)scale * ((double)dst + 0.5) - 0.5;
  double fl = floor(src);
  double t = src - fl;
  int i0 = (int)fl;
  double x1 = t + 1.0, x2 = 1.0 - t, x3 = 2.0 - t;
  /* |x| <= 1: ((A+2)x - (A+3))x^2 + 1;  1 < |x| < 2: ((Ax - 5A)x + 8A)x - 4A */
  wt[0] = (float)(((A * x1 - 5.0 * A) * x1 + 8.0 * A) * x1 - 4.0 * A);
  wt[1] = (float)(((A + 2.0) * t - (A + 3.0)) * t * t + 1.0);
  wt[2] = (float)(((A + 2.0) * x2 - (A + 3.0)) * x2 * x2 + 1.0);
  wt[3] = (float)(((A * x3 - 5.0 * A) * x3 + 8.0 * A) * x3 - 4.0 * A);
  for (int k = 0; k < 4; k++) {
    int i = i0 - 1 + k;
    idx[k] = i < 0 ? 0 : (i > in_n - 1 ? in_n - 1 : i);
  }
}

/* M[out_n, in_n]: out = M @ in for a 1-D bicubic resize. */
void bicubic_matrix(float *M, int out_n, int in_n) {
  memset(M, 0, (size_t)out_n * (size_t)in_n * sizeof(float));
  for (int o = 0; o < out_n; o++) {
    int idx[4];
    float wt[4];
    cubic_taps(o, in_n, out_n, idx, wt);
    for (int k = 0; k < 4; k++) M[(size_t)o * in_n + idx[k]] += wt[k];
  }
}

/* out[Ho,Wo,C] = resize(in[Hi,Wi,C]): rows first into tmp[Ho,Wi,C], then columns. */
void bicubic_resize_forward(float *out, const float *in, int Hi, int Wi, int Ho, int Wo, int C,
                            float *tmp) {
  size_t rowlen = (size_t)Wi * C;
#pragma omp parallel for schedule(static)
  for (int ho = 0; ho < Ho; ho++) {
    int idx[4];
    float wt[4];
    cubic_taps(ho, Hi, Ho, idx, wt);
    float *t = tmp + (size_t)ho * rowlen;
    const float *r0 = in + (size_t)idx[0] * rowlen, *r1 = in + (size_t)idx[1] * rowlen;
    const float *r2 = in + (size_t)idx[2] * rowlen, *r3 = in + (size_t)idx[3] * rowlen;
    for (size_t j = 0; j < rowlen; j++)
      t[j] = wt[0] * r0[j] + wt[1] * r1[j] + wt[2] * r2[j] + wt[3] * r3[j];
  }
#pragma omp parallel for schedule(static)
  for (int ho = 0; ho < Ho; ho++) {
    const float *t = tmp + (size_t)ho * rowlen;
    float *o = out + (size_t)ho * Wo * C;
    for (int wo = 0; wo < Wo; wo++) {
      int idx[4];
      float wt[4];
      cubic_taps(wo, Wi, Wo, idx, wt);
      const float *p0 = t + (size_t)idx[0] * C, *p1 = t + (size_t)idx[1] * C;
      const float *p2 = t + (size_t)idx[2] * C, *p3 = t + (size_t)idx[3] * C;
      float *q = o + (size_t)wo * C;
      for (int c = 0; c < C; c++) q[c] = wt[0] * p0[c] + wt[1] * p1[c] + wt[2] * p2[c] + wt[3] * p3[c];
    }
  }
}

/* din[Hi,Wi,C] += resize^T(dout[Ho,Wo,C]): columns^T into tmp[Ho,Wi,C] (row-parallel),
 * then rows^T into din, parallel over slices of the Wi*C row so no two threads add
 * into the same element. */
void bicubic_resize_backward(float *din, const float *dout, int Hi, int Wi, int Ho, int Wo, int C,
                             float *tmp) {
  size_t rowlen = (size_t)Wi * C;
#pragma omp parallel for schedule(static)
  for (int ho = 0; ho < Ho; ho++) {
    float *t = tmp + (size_t)ho * rowlen;
    const float *g = dout + (size_t)ho * Wo * C;
    memset(t, 0, rowlen * sizeof(float));
    for (int wo = 0; wo < Wo; wo++) {
      int idx[4];
      float wt[4];
      cubic_taps(wo, Wi, Wo, idx, wt);
      const float *q = g + (size_t)wo * C;
      for (int k = 0; k < 4; k++) {
        float *p = t + (size_t)idx[k] * C;
        for (int c = 0; c < C; c++) p[c] += wt[k] * q[c];
      }
    }
  }
#pragma omp parallel
  {
#ifdef _OPENMP
    int nt = omp_get_num_threads(), tid = omp_get_thread_num();
#else
    int nt = 1, tid = 0;
#endif
    size_t j0 = rowlen * (size_t)tid / (size_t)nt, j1 = rowlen * (size_t)(tid + 1) / (size_t)nt;
    for (int ho = 0; ho < Ho; ho++) {
      int idx[4];
      float wt[4];
      cubic_taps(ho, Hi, Ho, idx, wt);
      const float *t = tmp + (size_t)ho * rowlen;
      for (int k = 0; k < 4; k++) {
        float *d = din + (size_t)idx[k] * rowlen;
        for (size_t j = j0; j < j1; j++) d[j] += wt[k] * t[j];
      }
    }
  }
}

/* out[G*G, dim], token y*G+x: [sin(x*w) | cos(x*w) | sin(y*w) | cos(y*w)], each dim/4
 * wide, w_i = 1/10000^(i/(dim/4)); computed in double, stored as fp32 (dim % 4 == 0). */
void sincos_2d_table(float *out, int G, int dim) {
  int q = dim / 4;
#pragma omp parallel for schedule(static)
  for (int gi = 0; gi < G * G; gi++) {
    double y = (double)(gi / G), x = (double)(gi % G);
    float *row = out + (size_t)gi * dim;
    for (int i = 0; i < q; i++) {
      double w = 1.0 / pow(10000.0, (double)i / (double)q);
      row[i] = (float)sin(x * w);
      row[q + i] = (float)cos(x * w);
      row[2 * q + i] = (float)sin(y * w);
      row[3 * q + i] = (float)cos(y * w);
    }
  }
}
