/* kernels/cuda/image.cu: image-side operations of the vision path on the GPU, as
 * kernels/cpu/image.c.
 *
 * patch_im2col    conv1's columns (p x p patches, stride p) of one window;
 * bicubic_*       PyTorch's F.interpolate(mode="bicubic", align_corners=False): the 1-D
 *                 matrix, and the separable channels-last resize with its transpose;
 * sincos_2d_table the resampler's fixed 2-D sine-cosine table.
 * Bicubic taps use the CPU's arithmetic exactly (scale in fp32, source coordinate and
 * weights in double, weights rounded to fp32, taps clamped to the edge). Every output
 * element is owned by one thread that adds its terms in the CPU's order, so the
 * backward needs no atomics: its first pass gives each (output row, channel) to a
 * thread that scatters along the row, its second gives each (input column, channel)
 * to a thread that walks the output rows. */
#include "kernels/cuda/cuda_common.cuh"

#define GRID_STRIDE(i, n)                                                               \
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                   \
       i += (long)gridDim.x * blockDim.x)

__global__ void patch_im2col_kernel(float *cols, const float *img, int Wimg, int y0, int x0,
                                    int G, int p) {
  const int K = 3 * p * p;
  const long total = (long)G * G * K;
  GRID_STRIDE(i, total) {
    const int gi = (int)(i / K), col = (int)(i % K);
    const int c = col / (p * p), ky = (col / p) % p, kx = col % p;
    const int gy = gi / G, gx = gi % G;
    const size_t src = ((size_t)(y0 + gy * p + ky) * Wimg + (size_t)(x0 + gx * p + kx)) * 3 + c;
    cols[i] = img[src];
  }
}

/* Taps and weights of output index dst for a resize in_n -> out_n (CPU's cubic_taps). */
__device__ void cubic_taps(int dst, int in_n, int out_n, int idx[4], float wt[4]) {
  const double A = -0.75;
  const float scale = (float)in_n / (float)out_n;
  const double src = (double)scale * ((double)dst + 0.5) - 0.5;
  const double fl = floor(src);
  const double t = src - fl;
  const int i0 = (int)fl;
  const double x1 = t + 1.0, x2 = 1.0 - t, x3 = 2.0 - t;
  wt[0] = (float)(((A * x1 - 5.0 * A) * x1 + 8.0 * A) * x1 - 4.0 * A);
  wt[1] = (float)(((A + 2.0) * t - (A + 3.0)) * t * t + 1.0);
  wt[2] = (float)(((A + 2.0) * x2 - (A + 3.0)) * x2 * x2 + 1.0);
  wt[3] = (float)(((A * x3 - 5.0 * A) * x3 + 8.0 * A) * x3 - 4.0 * A);
  for (int k = 0; k < 4; k++) {
    const int i = i0 - 1 + k;
    idx[k] = i < 0 ? 0 : (i > in_n - 1 ? in_n - 1 : i);
  }
}

__global__ void bicubic_matrix_kernel(float *M, int out_n, int in_n) {
  GRID_STRIDE(o, (long)out_n) {
    float *row = M + (size_t)o * in_n;
    for (int i = 0; i < in_n; i++) row[i] = 0.0f;
    int idx[4];
    float wt[4];
    cubic_taps((int)o, in_n, out_n, idx, wt);
    for (int k = 0; k < 4; k++) row[idx[k]] += wt[k];
  }
}

/* tmp[Ho, Wi*C]: rows resized */
__global__ void bicubic_rows_kernel(float *tmp, const float *in, int Hi, int Ho, long rowlen) {
  GRID_STRIDE(i, (long)Ho * rowlen) {
    const int ho = (int)(i / rowlen);
    const long j = i % rowlen;
    int idx[4];
    float wt[4];
    cubic_taps(ho, Hi, Ho, idx, wt);
    tmp[i] = wt[0] * in[(size_t)idx[0] * rowlen + j] + wt[1] * in[(size_t)idx[1] * rowlen + j] +
             wt[2] * in[(size_t)idx[2] * rowlen + j] + wt[3] * in[(size_t)idx[3] * rowlen + j];
  }
}

/* out[Ho, Wo, C]: columns of tmp resized */
__global__ void bicubic_cols_kernel(float *out, const float *tmp, int Wi, int Ho, int Wo, int C) {
  GRID_STRIDE(i, (long)Ho * Wo * C) {
    const int c = (int)(i % C);
    const long hw = i / C;
    const int wo = (int)(hw % Wo), ho = (int)(hw / Wo);
    int idx[4];
    float wt[4];
    cubic_taps(wo, Wi, Wo, idx, wt);
    const float *t = tmp + (size_t)ho * Wi * C + c;
    out[i] = wt[0] * t[(size_t)idx[0] * C] + wt[1] * t[(size_t)idx[1] * C] +
             wt[2] * t[(size_t)idx[2] * C] + wt[3] * t[(size_t)idx[3] * C];
  }
}

/* tmp[ho, :, c] = columns^T of dout[ho, :, c]; one thread per (ho, c) */
__global__ void bicubic_cols_t_kernel(float *tmp, const float *dout, int Wi, int Ho, int Wo,
                                      int C) {
  GRID_STRIDE(i, (long)Ho * C) {
    const int ho = (int)(i / C), c = (int)(i % C);
    float *t = tmp + (size_t)ho * Wi * C + c;
    const float *g = dout + (size_t)ho * Wo * C + c;
    for (int wi = 0; wi < Wi; wi++) t[(size_t)wi * C] = 0.0f;
    for (int wo = 0; wo < Wo; wo++) {
      int idx[4];
      float wt[4];
      cubic_taps(wo, Wi, Wo, idx, wt);
      const float q = g[(size_t)wo * C];
      for (int k = 0; k < 4; k++) t[(size_t)idx[k] * C] += wt[k] * q;
    }
  }
}

/* din[:, j] += rows^T of tmp[:, j]; one thread per j in [0, Wi*C) */
__global__ void bicubic_rows_t_kernel(float *din, const float *tmp, int Hi, int Ho, long rowlen) {
  GRID_STRIDE(j, rowlen) {
    for (int ho = 0; ho < Ho; ho++) {
      int idx[4];
      float wt[4];
      cubic_taps(ho, Hi, Ho, idx, wt);
      const float t = tmp[(size_t)ho * rowlen + j];
      for (int k = 0; k < 4; k++) din[(size_t)idx[k] * rowlen + j] += wt[k] * t;
    }
  }
}

__global__ void sincos_2d_kernel(float *out, int G, int dim) {
  const int q = dim / 4;
  GRID_STRIDE(e, (long)G * G * q) {
    const int gi = (int)(e / q), i = (int)(e % q);
    const double y = (double)(gi / G), x = (double)(gi % G);
    const double w = 1.0 / pow(10000.0, (double)i / (double)q);
    float *row = out + (size_t)gi * dim;
    row[i] = (float)sin(x * w);
    row[q + i] = (float)cos(x * w);
    row[2 * q + i] = (float)sin(y * w);
    row[3 * q + i] = (float)cos(y * w);
  }
}

extern "C" void cuda_patch_im2col(vlm_cuda_ctx *ctx, cudaStream_t stream, float *cols,
                                  const float *img, int Himg, int Wimg, int y0, int x0, int win,
                                  int p) {
  (void)ctx;
  (void)Himg;
  const int G = win / p;
  const long total = (long)G * G * 3 * p * p;
  if (total <= 0) return;
  patch_im2col_kernel<<<vlm_ew_blocks(total), VLM_EW_THREADS, 0, stream>>>(cols, img, Wimg, y0,
                                                                          x0, G, p);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_bicubic_matrix(vlm_cuda_ctx *ctx, cudaStream_t stream, float *M, int out_n,
                                    int in_n) {
  (void)ctx;
  if (out_n <= 0 || in_n <= 0) return;
  bicubic_matrix_kernel<<<vlm_ew_blocks(out_n), VLM_EW_THREADS, 0, stream>>>(M, out_n, in_n);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_bicubic_resize_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                                            const float *in, int Hi, int Wi, int Ho, int Wo,
                                            int C, float *tmp) {
  (void)ctx;
  const long rowlen = (long)Wi * C;
  if (Ho <= 0 || Wo <= 0 || rowlen <= 0) return;
  bicubic_rows_kernel<<<vlm_ew_blocks((long)Ho * rowlen), VLM_EW_THREADS, 0, stream>>>(
      tmp, in, Hi, Ho, rowlen);
  VLM_CUDA_LAUNCHED();
  bicubic_cols_kernel<<<vlm_ew_blocks((long)Ho * Wo * C), VLM_EW_THREADS, 0, stream>>>(
      out, tmp, Wi, Ho, Wo, C);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_bicubic_resize_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din,
                                             const float *dout, int Hi, int Wi, int Ho, int Wo,
                                             int C, float *tmp) {
  (void)ctx;
  const long rowlen = (long)Wi * C;
  if (Ho <= 0 || Wo <= 0 || rowlen <= 0 || !din) return;
  bicubic_cols_t_kernel<<<vlm_ew_blocks((long)Ho * C), VLM_EW_THREADS, 0, stream>>>(
      tmp, dout, Wi, Ho, Wo, C);
  VLM_CUDA_LAUNCHED();
  bicubic_rows_t_kernel<<<vlm_ew_blocks(rowlen), VLM_EW_THREADS, 0, stream>>>(din, tmp, Hi, Ho,
                                                                             rowlen);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_sincos_2d_table(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out, int G,
                                     int dim) {
  (void)ctx;
  const long total = (long)G * G * (dim / 4);
  if (total <= 0) return;
  sincos_2d_kernel<<<vlm_ew_blocks(total), VLM_EW_THREADS, 0, stream>>>(out, G, dim);
  VLM_CUDA_LAUNCHED();
}
