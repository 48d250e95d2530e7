/* kernels/cuda/loss.cu: softmax cross-entropy over vocabulary rows on the GPU, loss and
 * gradient together, as kernels/cpu/loss.c.
 *
 * One block per row of logits[N,V] (Qwen: V = 151936): block max, block sum of
 * exp(x - max), then dlogits = softmax * grad_scale, minus grad_scale at the target.
 * Targets of -100, and any outside [0,V), are ignored: loss 0, gradient row 0. The row
 * losses (double, logsumexp - x[target] as the CPU forms it) and valid flags go to
 * ctx->reduce; a second single-block kernel sums them in a fixed order and WRITES
 * *loss_sum and *n_valid (device memory), so the result is deterministic and nothing
 * synchronises with the host. dlogits may alias logits: each thread reads x[target]
 * before the block's first barrier and writes only elements it read itself. */
#include "kernels/cuda/cuda_common.cuh"

#define CE_THREADS 512
#define CE_FINISH_THREADS 256

/* Block-wide max / sum of one value per thread (blockDim.x a multiple of 32, <= 1024).
 * red holds 32 floats; ends with a barrier so red can be reused. */
__device__ float block_max(float x, float *red) {
  const int lane = threadIdx.x % VLM_WARP, wid = threadIdx.x / VLM_WARP;
  const int nw = blockDim.x / VLM_WARP;
  x = warp_max(x);
  if (lane == 0) red[wid] = x;
  __syncthreads();
  float r = lane < nw ? red[lane] : -INFINITY;
  r = warp_max(r);
  __syncthreads();
  return r;
}

__device__ float block_sum(float x, float *red) {
  const int lane = threadIdx.x % VLM_WARP, wid = threadIdx.x / VLM_WARP;
  const int nw = blockDim.x / VLM_WARP;
  x = warp_sum(x);
  if (lane == 0) red[wid] = x;
  __syncthreads();
  float r = lane < nw ? red[lane] : 0.0f;
  r = warp_sum(r);
  __syncthreads();
  return r;
}

__global__ void cross_entropy_rows_kernel(float *dlogits, double *row_loss, int *row_valid,
                                          const float *logits, const int *targets, int V,
                                          float grad_scale) {
  __shared__ float red[VLM_WARP];
  const int n = blockIdx.x;
  const float *x = logits + (size_t)n * V;
  float *d = dlogits ? dlogits + (size_t)n * V : NULL;
  const int tgt = targets[n];
  if (tgt < 0 || tgt >= V) {
    if (d)
      for (int v = threadIdx.x; v < V; v += blockDim.x) d[v] = 0.0f;
    if (threadIdx.x == 0) {
      row_loss[n] = 0.0;
      row_valid[n] = 0;
    }
    return;
  }
  const float xt = x[tgt]; /* before any write (dlogits may alias logits) */
  float mx = -INFINITY;
  for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, x[v]);
  mx = block_max(mx, red);
  float s = 0.0f;
  for (int v = threadIdx.x; v < V; v += blockDim.x) s += expf(x[v] - mx);
  s = block_sum(s, red);
  if (d) {
    const float k = grad_scale / s;
    for (int v = threadIdx.x; v < V; v += blockDim.x) d[v] = expf(x[v] - mx) * k;
    __syncthreads();
    if (threadIdx.x == 0) d[tgt] -= grad_scale;
  }
  if (threadIdx.x == 0) {
    row_loss[n] = (double)mx + log((double)s) - (double)xt;
    row_valid[n] = 1;
  }
}

__global__ void cross_entropy_finish_kernel(double *loss_sum, int *n_valid,
                                            const double *row_loss, const int *row_valid, int N) {
  __shared__ double sl[CE_FINISH_THREADS];
  __shared__ int sv[CE_FINISH_THREADS];
  double l = 0.0;
  int c = 0;
  for (int n = threadIdx.x; n < N; n += CE_FINISH_THREADS) {
    l += row_loss[n];
    c += row_valid[n];
  }
  sl[threadIdx.x] = l;
  sv[threadIdx.x] = c;
  __syncthreads();
  for (int w = CE_FINISH_THREADS / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w) {
      sl[threadIdx.x] += sl[threadIdx.x + w];
      sv[threadIdx.x] += sv[threadIdx.x + w];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    loss_sum[0] = sl[0];
    if (n_valid) n_valid[0] = sv[0];
  }
}

extern "C" void cuda_cross_entropy_forward_backward(vlm_cuda_ctx *ctx, cudaStream_t stream,
                                                    float *dlogits, const float *logits,
                                                    const int *targets, int N, int V,
                                                    float grad_scale, double *loss_sum,
                                                    int *n_valid) {
  if (N <= 0) {
    VLM_CUDA_OK(cudaMemsetAsync(loss_sum, 0, sizeof(double), stream));
    if (n_valid) VLM_CUDA_OK(cudaMemsetAsync(n_valid, 0, sizeof(int), stream));
    return;
  }
  if ((size_t)N * (sizeof(double) + sizeof(int)) > ctx->reduce_bytes)
    vlm_cuda_die(__FILE__, __LINE__, "cuda_cross_entropy_forward_backward",
                 "more rows than the reduction buffer holds");
  double *row_loss = (double *)ctx->reduce;
  int *row_valid = (int *)(row_loss + N);
  cross_entropy_rows_kernel<<<N, CE_THREADS, 0, stream>>>(dlogits, row_loss, row_valid, logits,
                                                          targets, V, grad_scale);
  VLM_CUDA_LAUNCHED();
  cross_entropy_finish_kernel<<<1, CE_FINISH_THREADS, 0, stream>>>(loss_sum, n_valid, row_loss,
                                                                   row_valid, N);
  VLM_CUDA_LAUNCHED();
}
