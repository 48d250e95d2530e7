/* kernels/cuda/rows.cu: the element-wise and row-indexed helpers of kernels.h on the
 * GPU, as kernels/cpu/rows.c: the moves the model makes between its buffers, run where
 * the tensors live (the dispatch table of kernels/backend.h calls them on the device).
 *
 * cuda_add_into, cuda_add_vec   grid-stride element-wise sums;
 * cuda_add_rows_bcast           x[r, :] += t[r % P, :] (one table added to every view);
 * cuda_rows_copy                gather / scatter / permute rows by device index arrays;
 * cuda_rows_segment_add         per-segment row sums added into distinct dst rows;
 * cuda_image_normalize          RGB uint8 -> CLIP-normalised fp32.
 * Index arrays (dst_rows, src_rows, seg) are DEVICE ints; mean and std are host arrays
 * passed by value. Every output element is written by one thread with the CPU's
 * expression in the CPU's order, so the results equal the CPU's bit for bit:
 * rows_segment_add gives each segment to one block, and each of its threads walks the
 * segment's rows in order for its columns (no atomics, deterministic). */
#include "kernels/cuda/cuda_common.cuh"

#define GRID_STRIDE(i, n)                                                               \
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                   \
       i += (long)gridDim.x * blockDim.x)

/* Blocks of the row kernels: one per row (segment), grid-stride beyond the cap. */
#define ROWS_MAX_BLOCKS 65535

static inline unsigned rows_blocks(long n) {
  return (unsigned)(n < ROWS_MAX_BLOCKS ? (n < 1 ? 1 : n) : ROWS_MAX_BLOCKS);
}

/* Threads per row block: the row length rounded up to a warp, at most 256. */
static inline unsigned rows_threads(int C) {
  int t = (C + VLM_WARP - 1) / VLM_WARP * VLM_WARP;
  if (t < VLM_WARP) t = VLM_WARP;
  if (t > 256) t = 256;
  return (unsigned)t;
}

__global__ void add_into_kernel(float *y, const float *x, long n) {
  GRID_STRIDE(i, n) y[i] += x[i];
}

__global__ void add_vec_kernel(float *out, const float *a, const float *b, long n) {
  GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}

__global__ void add_rows_bcast_kernel(float *x, const float *t, int P, int C, long total) {
  GRID_STRIDE(i, total) {
    const long r = i / C, c = i % C;
    x[i] += t[(size_t)(r % P) * C + c];
  }
}

__global__ void rows_copy_kernel(float *dst, const int *dst_rows, const float *src,
                                 const int *src_rows, int n, int C) {
  for (int i = blockIdx.x; i < n; i += gridDim.x) {
    const size_t d = (size_t)(dst_rows ? dst_rows[i] : i);
    const size_t s = (size_t)(src_rows ? src_rows[i] : i);
    float *dr = dst + d * C;
    const float *sr = src + s * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dr[c] = sr[c];
  }
}

/* Block j (grid-stride) owns segment j: dst row dst_rows[j] gets the rows of
 * [seg[j], seg[j+1]) added one after another, as the CPU adds them. */
__global__ void rows_segment_add_kernel(float *dst, const int *dst_rows, const float *src,
                                        const int *src_rows, const int *seg, int n_seg, int C) {
  for (int j = blockIdx.x; j < n_seg; j += gridDim.x) {
    const int i0 = seg[j], i1 = seg[j + 1];
    float *d = dst + (size_t)dst_rows[j] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      float acc = d[c];
      for (int i = i0; i < i1; i++) acc += src[(size_t)(src_rows ? src_rows[i] : i) * C + c];
      d[c] = acc;
    }
  }
}

typedef struct {
  float mean[3], std[3];
} norm_consts;

__global__ void image_normalize_kernel(float *out, const unsigned char *px, long n,
                                       norm_consts k) {
  GRID_STRIDE(i, n) {
    const int c = (int)(i % 3);
    out[i] = ((float)px[i] / 255.0f - k.mean[c]) / k.std[c];
  }
}

extern "C" void cuda_add_into(vlm_cuda_ctx *ctx, cudaStream_t stream, float *y, const float *x,
                              long n) {
  (void)ctx;
  if (n <= 0) return;
  add_into_kernel<<<vlm_ew_blocks(n), VLM_EW_THREADS, 0, stream>>>(y, x, n);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_add_vec(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out, const float *a,
                             const float *b, long n) {
  (void)ctx;
  if (n <= 0) return;
  add_vec_kernel<<<vlm_ew_blocks(n), VLM_EW_THREADS, 0, stream>>>(out, a, b, n);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_add_rows_bcast(vlm_cuda_ctx *ctx, cudaStream_t stream, float *x,
                                    const float *t, int N, int P, int C) {
  (void)ctx;
  const long total = (long)N * C;
  if (total <= 0 || P <= 0) return;
  add_rows_bcast_kernel<<<vlm_ew_blocks(total), VLM_EW_THREADS, 0, stream>>>(x, t, P, C, total);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_rows_copy(vlm_cuda_ctx *ctx, cudaStream_t stream, float *dst,
                               const int *dst_rows, const float *src, const int *src_rows, int n,
                               int C) {
  (void)ctx;
  if (n <= 0 || C <= 0) return;
  rows_copy_kernel<<<rows_blocks(n), rows_threads(C), 0, stream>>>(dst, dst_rows, src, src_rows,
                                                                    n, C);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_rows_segment_add(vlm_cuda_ctx *ctx, cudaStream_t stream, float *dst,
                                      const int *dst_rows, const float *src,
                                      const int *src_rows, const int *seg, int n_seg, int C) {
  (void)ctx;
  if (n_seg <= 0 || C <= 0) return;
  rows_segment_add_kernel<<<rows_blocks(n_seg), rows_threads(C), 0, stream>>>(
      dst, dst_rows, src, src_rows, seg, n_seg, C);
  VLM_CUDA_LAUNCHED();
}

extern "C" void cuda_image_normalize(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                                     const unsigned char *px, long n_pixels, const float mean[3],
                                     const float std[3]) {
  (void)ctx;
  if (n_pixels <= 0) return;
  norm_consts k;
  for (int c = 0; c < 3; c++) k.mean[c] = mean[c], k.std[c] = std[c];
  const long n = n_pixels * 3;
  image_normalize_kernel<<<vlm_ew_blocks(n), VLM_EW_THREADS, 0, stream>>>(out, px, n, k);
  VLM_CUDA_LAUNCHED();
}
