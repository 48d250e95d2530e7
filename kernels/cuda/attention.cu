/* kernels/cuda/attention.cu: multi-head scaled dot-product attention for one sequence
 * on the GPU, forward and backward, tiled with an online softmax (FlashAttention-2's
 * scheme) so that no Tq x Tk matrix ever exists in memory; same semantics and strided
 * layouts as kernels/cpu/attention.c (attn_shape in kernels/kernels.h).
 *
 * Tiles: 32 query rows x 32 keys, 128 threads (4 warps) per block, fp32 throughout.
 * Shared-memory rows have an odd stride (D | 1), so the 32 lanes reading 32 different
 * key rows at the same dim hit 32 different banks.
 *  - scores: a 32 x 32 tile S = scale * Q K^T is computed into shared memory, each
 *    thread 8 entries; every lane of a warp takes a different key, the query row is a
 *    broadcast;
 *  - causal: query i is at key position i + Tk - Tq (Tq <= Tk: the last Tq positions);
 *  - accumulators: thread t owns row t/4 of the tile and dims t%4, t%4+4, ... (up to
 *    VLM_CUDA_ATTN_MAX_D/4 registers), so P @ V, dS @ K, P^T dO, dS^T Q are register
 *    sums over the 32 tile columns.
 * Forward: one block per (query tile, head) streams the key tiles (causal: only tiles
 *   up to the diagonal), keeping the running max m, the running sum l and the output
 *   row in registers; it writes out = acc / l and lse = m + log(l).
 * Backward: D_i = dO_i . O_i (scratch [H, Tq]); then two kernels that recompute P from
 *   lse, as in FA2 but without atomics: one per (key tile, head) that walks the query
 *   tiles and accumulates dK and dV, one per (query tile, head) that walks the key
 *   tiles and accumulates dQ. Each gradient element has a single owner thread, so the
 *   results are deterministic. The score tile is recomputed twice (dq, dk/dv): +1 QK^T
 *   and +1 dO V^T over FA2's atomic variant, the price of determinism.
 *
 * Performance, honestly: this is a CUDA-core fp32 kernel bound by shared-memory loads
 * (one to two per FMA). Expect a few TFLOP/s on an H100 (well under 1 % of its bf16
 * tensor-core peak), i.e. attention will dominate a step at long sequence lengths
 * unless it is replaced by a tensor-core (mma.sync / wgmma bf16) kernel or cuDNN's
 * fused attention; docs/cuda.md keeps this on the list. Not here: dropout, masks
 * other than causal, grouped-query heads, batching several sequences in one launch. */
#include "kernels/cuda/cuda_common.cuh"

#define BQ 32
#define BK 32
#define NT 128
#define SPT ((BQ * BK) / NT) /* score entries per thread */

static_assert(BQ == 32 && BK == 32 && NT == 128,
              "the thread mappings assume 32 x 32 tiles and 128 threads");

static inline int smem_stride(int D) { return D | 1; }

/* Copies rows [t0, t0+32) of head h of a strided tensor into a [32][SD] tile, zeros
 * past T. */
__device__ __forceinline__ void load_tile(float *dst, const float *src, int t0, int T, int ld,
                                          int hs, int h, int D, int SD) {
  for (int e = threadIdx.x; e < 32 * D; e += NT) {
    const int rr = e / D, d = e % D, t = t0 + rr;
    dst[rr * SD + d] = t < T ? src[(size_t)t * ld + (size_t)h * hs + d] : 0.0f;
  }
}

__device__ __forceinline__ float dot_rows(const float *a, const float *b, int D) {
  float acc = 0.0f;
  for (int d = 0; d < D; d++) acc += a[d] * b[d];
  return acc;
}

/* ---- forward ----------------------------------------------------------------------- */

template <int DPT>
__global__ void __launch_bounds__(NT)
    attn_forward_kernel(float *out, float *lse, const float *q, const float *k, const float *v,
                        attn_shape s) {
  extern __shared__ float sm[];
  const int D = s.D, SD = D | 1, Tq = s.Tq, Tk = s.Tk;
  float *Qs = sm, *Ks = Qs + BQ * SD, *Vs = Ks + BK * SD, *Ss = Vs + BK * SD;
  const int h = blockIdx.y;
  const int i0 = (gridDim.x - 1 - blockIdx.x) * BQ; /* last (largest causal) tiles first */
  const int tid = threadIdx.x, r = tid >> 2, sub = tid & 3;

  load_tile(Qs, q, i0, Tq, s.ldq, s.hsq, h, D, SD);
  float o[DPT];
#pragma unroll
  for (int m = 0; m < DPT; m++) o[m] = 0.0f;
  float mrow = -INFINITY, lrow = 0.0f;
  const int kend = s.causal ? min(Tk, i0 + BQ + (Tk - Tq)) : Tk;

  for (int j0 = 0; j0 < kend; j0 += BK) {
    __syncthreads(); /* the previous tile's readers are done */
    load_tile(Ks, k, j0, Tk, s.ldk, s.hsk, h, D, SD);
    load_tile(Vs, v, j0, Tk, s.ldv, s.hsv, h, D, SD);
    __syncthreads();
#pragma unroll
    for (int u = 0; u < SPT; u++) {
      const int e = tid + NT * u, ii = e >> 5, jj = e & 31;
      float sc = s.scale * dot_rows(Qs + ii * SD, Ks + jj * SD, D);
      const int qi = i0 + ii, kj = j0 + jj;
      if (kj >= Tk || (s.causal && kj > qi + (Tk - Tq))) sc = -INFINITY;
      Ss[ii * (BK + 1) + jj] = sc;
    }
    __syncthreads();
    /* online softmax of row r: this thread holds columns sub*8 .. sub*8+7 */
    float *srow = Ss + r * (BK + 1) + sub * 8;
    float tmax = -INFINITY;
#pragma unroll
    for (int c = 0; c < 8; c++) tmax = fmaxf(tmax, srow[c]);
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
    const float mnew = fmaxf(mrow, tmax);
    float corr = 1.0f, psum = 0.0f;
    if (mnew == -INFINITY) {
#pragma unroll
      for (int c = 0; c < 8; c++) srow[c] = 0.0f;
    } else {
      corr = expf(mrow - mnew); /* 0 when mrow is -inf */
#pragma unroll
      for (int c = 0; c < 8; c++) {
        const float p = expf(srow[c] - mnew); /* 0 for masked entries */
        srow[c] = p;
        psum += p;
      }
    }
    psum += __shfl_xor_sync(0xffffffffu, psum, 1);
    psum += __shfl_xor_sync(0xffffffffu, psum, 2);
    lrow = lrow * corr + psum;
    mrow = mnew;
#pragma unroll
    for (int m = 0; m < DPT; m++) o[m] *= corr;
    __syncwarp(); /* row r's probabilities come from the 4 lanes of this warp */
    const float *prow = Ss + r * (BK + 1);
    for (int jj = 0; jj < BK; jj++) {
      const float p = prow[jj];
      const float *vr = Vs + jj * SD + sub;
#pragma unroll
      for (int m = 0; m < DPT; m++)
        if (sub + 4 * m < D) o[m] += p * vr[4 * m];
    }
  }

  const int qi = i0 + r;
  if (qi < Tq) {
    const float inv = lrow > 0.0f ? 1.0f / lrow : 0.0f;
    float *orow = out + (size_t)qi * ((size_t)s.H * D) + (size_t)h * D + sub;
#pragma unroll
    for (int m = 0; m < DPT; m++)
      if (sub + 4 * m < D) orow[4 * m] = o[m] * inv;
    if (sub == 0) lse[(size_t)h * Tq + qi] = lrow > 0.0f ? mrow + logf(lrow) : -INFINITY;
  }
}

/* ---- backward ---------------------------------------------------------------------- */

/* Di[h, t] = dO[t, h, :] . O[t, h, :]; one warp per (t, h). */
__global__ void attn_rowdot_kernel(float *Di, const float *dout, const float *out, int Tq, int H,
                                   int D) {
  const long w = ((long)blockIdx.x * blockDim.x + threadIdx.x) / VLM_WARP;
  const int lane = threadIdx.x % VLM_WARP;
  if (w >= (long)Tq * H) return;
  const int t = (int)(w / H), h = (int)(w % H);
  const size_t off = (size_t)t * H * D + (size_t)h * D;
  float acc = 0.0f;
  for (int d = lane; d < D; d += VLM_WARP) acc += dout[off + d] * out[off + d];
  acc = warp_sum(acc);
  if (lane == 0) Di[(size_t)h * Tq + t] = acc;
}

/* Loads lse and D_i of query rows [i0, i0+32) into shared memory (0 past Tq). */
__device__ __forceinline__ void load_row_stats(float *lse_s, float *Di_s, const float *lse,
                                               const float *Di, int i0, int Tq, int h) {
  for (int e = threadIdx.x; e < BQ; e += NT) {
    const int t = i0 + e;
    lse_s[e] = t < Tq ? lse[(size_t)h * Tq + t] : 0.0f;
    Di_s[e] = t < Tq ? Di[(size_t)h * Tq + t] : 0.0f;
  }
}

/* The P and dS tiles for query tile i0 x key tile j0 (dS only if need_ds). */
__device__ __forceinline__ void prob_tiles(float *Ps, float *dSs, const float *Qs,
                                           const float *Ks, const float *dOs, const float *Vs,
                                           const float *lse_s, const float *Di_s,
                                           const attn_shape &s, int i0, int j0, int SD,
                                           int need_ds) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int u = 0; u < SPT; u++) {
    const int e = tid + NT * u, ii = e >> 5, jj = e & 31;
    const int qi = i0 + ii, kj = j0 + jj;
    const int valid = qi < s.Tq && kj < s.Tk && !(s.causal && kj > qi + (s.Tk - s.Tq));
    float p = 0.0f;
    if (valid) p = expf(s.scale * dot_rows(Qs + ii * SD, Ks + jj * SD, s.D) - lse_s[ii]);
    if (Ps) Ps[ii * (BK + 1) + jj] = p;
    if (need_ds) {
      float ds = 0.0f;
      if (valid) ds = p * (dot_rows(dOs + ii * SD, Vs + jj * SD, s.D) - Di_s[ii]);
      dSs[ii * (BK + 1) + jj] = ds;
    }
  }
}

/* dK, dV for key tile blockIdx.x of head blockIdx.y. */
template <int DPT>
__global__ void __launch_bounds__(NT)
    attn_backward_dkdv_kernel(float *dk, float *dv, const float *dout, const float *lse,
                              const float *Di, const float *q, const float *k, const float *v,
                              attn_shape s) {
  extern __shared__ float sm[];
  const int D = s.D, SD = D | 1, Tq = s.Tq, Tk = s.Tk;
  float *Ks = sm, *Vs = Ks + BK * SD, *Qs = Vs + BK * SD, *dOs = Qs + BQ * SD;
  float *Ps = dOs + BQ * SD, *dSs = Ps + BQ * (BK + 1), *lse_s = dSs + BQ * (BK + 1);
  float *Di_s = lse_s + BQ;
  const int h = blockIdx.y, j0 = blockIdx.x * BK;
  const int tid = threadIdx.x, c = tid >> 2, sub = tid & 3;
  const int need_ds = dk != NULL;
  const size_t ldo = (size_t)s.H * D;

  load_tile(Ks, k, j0, Tk, s.ldk, s.hsk, h, D, SD);
  load_tile(Vs, v, j0, Tk, s.ldv, s.hsv, h, D, SD);
  float akk[DPT], avv[DPT];
#pragma unroll
  for (int m = 0; m < DPT; m++) akk[m] = avv[m] = 0.0f;

  /* causal: earlier queries see none of these keys (query i is at key position i + Tk - Tq) */
  const int istart = s.causal && j0 > Tk - Tq ? ((j0 - (Tk - Tq)) / BQ) * BQ : 0;
  for (int i0 = istart; i0 < Tq; i0 += BQ) {
    __syncthreads();
    load_tile(Qs, q, i0, Tq, s.ldq, s.hsq, h, D, SD);
    for (int e = tid; e < BQ * D; e += NT) {
      const int rr = e / D, d = e % D, t = i0 + rr;
      dOs[rr * SD + d] = t < Tq ? dout[(size_t)t * ldo + (size_t)h * D + d] : 0.0f;
    }
    load_row_stats(lse_s, Di_s, lse, Di, i0, Tq, h);
    __syncthreads();
    prob_tiles(Ps, dSs, Qs, Ks, dOs, Vs, lse_s, Di_s, s, i0, j0, SD, need_ds);
    __syncthreads();
    /* dV[c] += sum_i P[i][c] dO[i];  dK[c] += sum_i dS[i][c] Q[i] (scale applied last) */
    for (int ii = 0; ii < BQ; ii++) {
      const float p = Ps[ii * (BK + 1) + c];
      const float *dor = dOs + ii * SD + sub;
#pragma unroll
      for (int m = 0; m < DPT; m++)
        if (sub + 4 * m < D) avv[m] += p * dor[4 * m];
      if (need_ds) {
        const float ds = dSs[ii * (BK + 1) + c];
        const float *qr = Qs + ii * SD + sub;
#pragma unroll
        for (int m = 0; m < DPT; m++)
          if (sub + 4 * m < D) akk[m] += ds * qr[4 * m];
      }
    }
  }

  const int kj = j0 + c;
  if (kj < Tk) {
    if (dv) {
      float *row = dv + (size_t)kj * s.ldv + (size_t)h * s.hsv + sub;
#pragma unroll
      for (int m = 0; m < DPT; m++)
        if (sub + 4 * m < D) row[4 * m] += avv[m];
    }
    if (dk) {
      float *row = dk + (size_t)kj * s.ldk + (size_t)h * s.hsk + sub;
#pragma unroll
      for (int m = 0; m < DPT; m++)
        if (sub + 4 * m < D) row[4 * m] += s.scale * akk[m];
    }
  }
}

/* dQ for query tile blockIdx.x of head blockIdx.y. */
template <int DPT>
__global__ void __launch_bounds__(NT)
    attn_backward_dq_kernel(float *dq, const float *dout, const float *lse, const float *Di,
                            const float *q, const float *k, const float *v, attn_shape s) {
  extern __shared__ float sm[];
  const int D = s.D, SD = D | 1, Tq = s.Tq, Tk = s.Tk;
  float *Qs = sm, *dOs = Qs + BQ * SD, *Ks = dOs + BQ * SD, *Vs = Ks + BK * SD;
  float *dSs = Vs + BK * SD, *lse_s = dSs + BQ * (BK + 1), *Di_s = lse_s + BQ;
  const int h = blockIdx.y;
  const int i0 = (gridDim.x - 1 - blockIdx.x) * BQ;
  const int tid = threadIdx.x, r = tid >> 2, sub = tid & 3;
  const size_t ldo = (size_t)s.H * D;

  load_tile(Qs, q, i0, Tq, s.ldq, s.hsq, h, D, SD);
  for (int e = tid; e < BQ * D; e += NT) {
    const int rr = e / D, d = e % D, t = i0 + rr;
    dOs[rr * SD + d] = t < Tq ? dout[(size_t)t * ldo + (size_t)h * D + d] : 0.0f;
  }
  load_row_stats(lse_s, Di_s, lse, Di, i0, Tq, h);
  float aq[DPT];
#pragma unroll
  for (int m = 0; m < DPT; m++) aq[m] = 0.0f;
  const int kend = s.causal ? min(Tk, i0 + BQ + (Tk - Tq)) : Tk;

  for (int j0 = 0; j0 < kend; j0 += BK) {
    __syncthreads();
    load_tile(Ks, k, j0, Tk, s.ldk, s.hsk, h, D, SD);
    load_tile(Vs, v, j0, Tk, s.ldv, s.hsv, h, D, SD);
    __syncthreads();
    prob_tiles(NULL, dSs, Qs, Ks, dOs, Vs, lse_s, Di_s, s, i0, j0, SD, 1);
    __syncthreads();
    /* dQ[r] += sum_j dS[r][j] K[j] (scale applied last) */
    const float *dsrow = dSs + r * (BK + 1);
    for (int jj = 0; jj < BK; jj++) {
      const float ds = dsrow[jj];
      const float *kr = Ks + jj * SD + sub;
#pragma unroll
      for (int m = 0; m < DPT; m++)
        if (sub + 4 * m < D) aq[m] += ds * kr[4 * m];
    }
  }

  const int qi = i0 + r;
  if (qi < Tq) {
    float *row = dq + (size_t)qi * s.ldq + (size_t)h * s.hsq + sub;
#pragma unroll
    for (int m = 0; m < DPT; m++)
      if (sub + 4 * m < D) row[4 * m] += s.scale * aq[m];
  }
}

/* ---- launch ------------------------------------------------------------------------ */

static size_t fwd_smem(int D) {
  const int SD = smem_stride(D);
  return ((size_t)(BQ + 2 * BK) * SD + (size_t)BQ * (BK + 1)) * sizeof(float);
}
static size_t dkdv_smem(int D) {
  const int SD = smem_stride(D);
  return ((size_t)(2 * BK + 2 * BQ) * SD + 2 * (size_t)BQ * (BK + 1) + 2 * BQ) * sizeof(float);
}
static size_t dq_smem(int D) {
  const int SD = smem_stride(D);
  return ((size_t)(2 * BQ + 2 * BK) * SD + (size_t)BQ * (BK + 1) + 2 * BQ) * sizeof(float);
}

/* Kernels above 48 KiB of dynamic shared memory must opt in. */
template <typename K>
static void allow_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    VLM_CUDA_OK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)bytes));
}

template <int DPT>
static void forward_launch(cudaStream_t st, float *out, float *lse, const float *q,
                           const float *k, const float *v, const attn_shape *s) {
  const size_t sm = fwd_smem(s->D);
  allow_smem(attn_forward_kernel<DPT>, sm);
  dim3 grid((unsigned)((s->Tq + BQ - 1) / BQ), (unsigned)s->H);
  attn_forward_kernel<DPT><<<grid, NT, sm, st>>>(out, lse, q, k, v, *s);
  VLM_CUDA_LAUNCHED();
}

template <int DPT>
static void backward_launch(cudaStream_t st, float *dq, float *dk, float *dv, const float *dout,
                            const float *lse, const float *Di, const float *q, const float *k,
                            const float *v, const attn_shape *s) {
  if (dk || dv) {
    const size_t sm = dkdv_smem(s->D);
    allow_smem(attn_backward_dkdv_kernel<DPT>, sm);
    dim3 grid((unsigned)((s->Tk + BK - 1) / BK), (unsigned)s->H);
    attn_backward_dkdv_kernel<DPT><<<grid, NT, sm, st>>>(dk, dv, dout, lse, Di, q, k, v, *s);
    VLM_CUDA_LAUNCHED();
  }
  if (dq) {
    const size_t sm = dq_smem(s->D);
    allow_smem(attn_backward_dq_kernel<DPT>, sm);
    dim3 grid((unsigned)((s->Tq + BQ - 1) / BQ), (unsigned)s->H);
    attn_backward_dq_kernel<DPT><<<grid, NT, sm, st>>>(dq, dout, lse, Di, q, k, v, *s);
    VLM_CUDA_LAUNCHED();
  }
}

static void check_head_dim(int D) {
  if (D < 1 || D > VLM_CUDA_ATTN_MAX_D)
    vlm_cuda_die(__FILE__, __LINE__, "cuda_attention", "head dim outside 1..256");
}

extern "C" size_t cuda_attention_scratch_floats(const attn_shape *s) {
  return (size_t)s->H * (size_t)s->Tq;
}

extern "C" void cuda_attention_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                                       float *lse, const float *q, const float *k,
                                       const float *v, const attn_shape *s, float *scratch) {
  (void)ctx;
  (void)scratch;
  if (s->Tq <= 0 || s->H <= 0) return;
  check_head_dim(s->D);
  if (s->D <= 64)
    forward_launch<16>(stream, out, lse, q, k, v, s);
  else if (s->D <= 128)
    forward_launch<32>(stream, out, lse, q, k, v, s);
  else
    forward_launch<64>(stream, out, lse, q, k, v, s);
}

extern "C" void cuda_attention_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *dq,
                                        float *dk, float *dv, const float *dout,
                                        const float *out, const float *lse, const float *q,
                                        const float *k, const float *v, const attn_shape *s,
                                        float *scratch) {
  (void)ctx;
  if (!dq && !dk && !dv) return;
  if (s->Tq <= 0 || s->Tk <= 0 || s->H <= 0) return;
  check_head_dim(s->D);
  float *Di = scratch;
  const long warps = (long)s->Tq * s->H;
  const long threads = warps * VLM_WARP;
  attn_rowdot_kernel<<<(unsigned)((threads + 255) / 256), 256, 0, stream>>>(Di, dout, out, s->Tq,
                                                                            s->H, s->D);
  VLM_CUDA_LAUNCHED();
  if (s->D <= 64)
    backward_launch<16>(stream, dq, dk, dv, dout, lse, Di, q, k, v, s);
  else if (s->D <= 128)
    backward_launch<32>(stream, dq, dk, dv, dout, lse, Di, q, k, v, s);
  else
    backward_launch<64>(stream, dq, dk, dv, dout, lse, Di, q, k, v, s);
}
