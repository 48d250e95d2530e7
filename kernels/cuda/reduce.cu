/* kernels/cuda/reduce.cu: the deterministic two-stage sums shared by the CUDA kernels
 * (declared in cuda_common.cuh).
 *
 * vlm_column_sums: sums over the rows of [N, C] per column (bias gradient, LayerNorm
 *   dw/db, RMSNorm dw). Stage 1: a grid of (column tiles of 32) x (row chunks); a
 *   32 x 8 block walks its chunk's rows 8 at a time, then adds its 8 partials in a
 *   fixed order and writes one partial per column to ctx->reduce. Stage 2: one thread
 *   per column adds the chunk partials in chunk order into the destination (+=).
 * vlm_dot: x . y in double. Stage 1: a fixed number of blocks, grid-stride, a block
 *   tree; stage 2: one warp adds the block partials in a fixed order.
 * No floating-point atomics: the result depends on the shapes and the device's SM
 * count only. */
#include "kernels/cuda/cuda_common.cuh"

#define COL_TILE 32
#define ROW_LANES 8

template <int MODE>
__global__ void colsum_partial_kernel(float *part0, float *part1, const float *a,
                                      const float *x, const float *mean, const float *rstd,
                                      int N, int C, int rows_per_chunk) {
  __shared__ float s0[ROW_LANES][COL_TILE + 1], s1[ROW_LANES][COL_TILE + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * COL_TILE + tx;
  const int chunk = blockIdx.y;
  const int n0 = chunk * rows_per_chunk;
  const int n1 = min(N, n0 + rows_per_chunk);
  float acc0 = 0.0f, acc1 = 0.0f;
  if (c < C) {
    for (int n = n0 + ty; n < n1; n += ROW_LANES) {
      const size_t i = (size_t)n * C + c;
      const float g = a[i];
      if (MODE == COLSUM_PLAIN) {
        acc0 += g;
      } else if (MODE == COLSUM_LAYERNORM) {
        acc0 += g * (x[i] - mean[n]) * rstd[n];
        acc1 += g;
      } else {
        acc0 += g * x[i] * rstd[n];
      }
    }
  }
  s0[ty][tx] = acc0;
  s1[ty][tx] = acc1;
  __syncthreads();
  if (ty == 0 && c < C) {
    float t0 = 0.0f, t1 = 0.0f;
    for (int j = 0; j < ROW_LANES; j++) {
      t0 += s0[j][tx];
      t1 += s1[j][tx];
    }
    part0[(size_t)chunk * C + c] = t0;
    if (part1) part1[(size_t)chunk * C + c] = t1;
  }
}

__global__ void colsum_finish_kernel(float *acc0, float *acc1, const float *part0,
                                     const float *part1, int nchunks, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float t0 = 0.0f, t1 = 0.0f;
  for (int k = 0; k < nchunks; k++) {
    t0 += part0[(size_t)k * C + c];
    if (acc1) t1 += part1[(size_t)k * C + c];
  }
  if (acc0) acc0[c] += t0;
  if (acc1) acc1[c] += t1;
}

void vlm_column_sums(vlm_cuda_ctx *ctx, cudaStream_t stream, int mode, float *acc0, float *acc1,
                     const float *a, const float *x, const float *mean, const float *rstd, int N,
                     int C) {
  if (N <= 0 || C <= 0 || (!acc0 && !acc1)) return;
  const int ncols = (C + COL_TILE - 1) / COL_TILE;
  const int narr = mode == COLSUM_LAYERNORM ? 2 : 1;
  /* enough blocks to fill the device twice, at least 8 rows per chunk, and the
   * partials must fit the reduction buffer */
  long nchunks = (2L * ctx->sm_count + ncols - 1) / ncols;
  long max_by_rows = (N + ROW_LANES - 1) / ROW_LANES;
  long max_by_buf = (long)(ctx->reduce_bytes / ((size_t)narr * (size_t)C * sizeof(float)));
  if (nchunks > max_by_rows) nchunks = max_by_rows;
  if (nchunks > max_by_buf) nchunks = max_by_buf;
  if (nchunks > 65535) nchunks = 65535;
  if (nchunks < 1) {
    vlm_cuda_die(__FILE__, __LINE__, "vlm_column_sums", "reduction buffer too small for C");
  }
  const int rows_per_chunk = (int)((N + nchunks - 1) / nchunks);
  nchunks = (N + rows_per_chunk - 1) / rows_per_chunk;
  float *part0 = (float *)ctx->reduce;
  float *part1 = narr == 2 ? part0 + (size_t)nchunks * C : NULL;
  dim3 grid(ncols, (unsigned)nchunks), block(COL_TILE, ROW_LANES);
  switch (mode) {
    case COLSUM_PLAIN:
      colsum_partial_kernel<COLSUM_PLAIN>
          <<<grid, block, 0, stream>>>(part0, part1, a, x, mean, rstd, N, C, rows_per_chunk);
      break;
    case COLSUM_LAYERNORM:
      colsum_partial_kernel<COLSUM_LAYERNORM>
          <<<grid, block, 0, stream>>>(part0, part1, a, x, mean, rstd, N, C, rows_per_chunk);
      break;
    default:
      colsum_partial_kernel<COLSUM_RMSNORM>
          <<<grid, block, 0, stream>>>(part0, part1, a, x, mean, rstd, N, C, rows_per_chunk);
      break;
  }
  VLM_CUDA_LAUNCHED();
  colsum_finish_kernel<<<(C + 255) / 256, 256, 0, stream>>>(acc0, narr == 2 ? acc1 : NULL,
                                                             part0, part1, (int)nchunks, C);
  VLM_CUDA_LAUNCHED();
}

/* ---- dot product ----------------------------------------------------------------- */

#define DOT_THREADS 256
#define DOT_MAX_BLOCKS 1024

__global__ void dot_partial_kernel(double *part, const float *x, const float *y, long n) {
  __shared__ double warp_part[DOT_THREADS / VLM_WARP];
  double acc = 0.0;
  const long stride = (long)gridDim.x * blockDim.x;
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    acc += (double)x[i] * (double)y[i];
  acc = warp_sum_d(acc);
  const int lane = threadIdx.x % VLM_WARP, wid = threadIdx.x / VLM_WARP;
  if (lane == 0) warp_part[wid] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int w = 0; w < DOT_THREADS / VLM_WARP; w++) t += warp_part[w];
    part[blockIdx.x] = t;
  }
}

/* One warp: lane l sums partials l, l+32, ...; then a fixed shuffle tree. */
__global__ void dot_finish_kernel(double *dst_d, float *dst_f, const double *part, int nblocks) {
  double t = 0.0;
  for (int b = threadIdx.x; b < nblocks; b += VLM_WARP) t += part[b];
  t = warp_sum_d(t);
  if (threadIdx.x == 0) {
    if (dst_d)
      dst_d[0] += t;
    else
      dst_f[0] += (float)t;
  }
}

void vlm_dot(vlm_cuda_ctx *ctx, cudaStream_t stream, double *dst_d, float *dst_f, const float *x,
             const float *y, long n) {
  if (n <= 0) return;
  long nb = (n + DOT_THREADS - 1) / DOT_THREADS;
  if (nb > DOT_MAX_BLOCKS) nb = DOT_MAX_BLOCKS;
  double *part = (double *)ctx->reduce;
  dot_partial_kernel<<<(unsigned)nb, DOT_THREADS, 0, stream>>>(part, x, y, n);
  VLM_CUDA_LAUNCHED();
  dot_finish_kernel<<<1, VLM_WARP, 0, stream>>>(dst_d, dst_f, part, (int)nb);
  VLM_CUDA_LAUNCHED();
}
