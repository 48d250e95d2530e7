/* kernels/cuda/backend_cuda.c: the CUDA backend of the run-time dispatch table
 * (kernels/backend.h): one process-wide vlm_cuda_ctx on this rank's GPU, device memory
 * through the CUDA runtime, and every kernel entry a thin wrapper that calls
 * cuda_<name>(&ctx, ctx.compute, ...), and the collective entries through NCCL
 * (kernels/cuda/nccl_comm.h) on the ctx's comm stream.
 *
 * Ordering: everything (copies, memsets, kernels) is enqueued in order on ctx.compute;
 * only download, sync and the two entries that return a host value
 * (cross_entropy_forward_backward, sum_squares) wait for it. upload is a
 * cudaMemcpyAsync from host memory and relies on the runtime staging a pageable
 * source before it returns (CUDA's "API synchronization behavior" notes), so for the
 * pageable memory vlmtrain allocates (vlm_alloc) the caller may reuse its host buffer
 * at once; check_backend checks this on the GPU. Pinned host memory would not allow it.
 * Errors: init reports through VLM_FAIL and returns NULL; afterwards a failing runtime
 * call is a bug or a broken device and aborts with file:line (vlm_cuda_die), as the
 * kernels do. alloc is the exception: out of device memory returns NULL (reported,
 * naming the buffer) so the caller can say what did not fit. */
#include "kernels/cuda/backend_cuda.h"

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "common/vlm.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kernels_cuda.h"
#include "kernels/cuda/nccl_comm.h"

/* Aborts with file:line if a runtime call failed (as the kernels do). */
#define RT_OK(call) rt_ok((call), __FILE__, __LINE__, #call)
static void rt_ok(cudaError_t e, const char *file, int line, const char *what) {
  if (e != cudaSuccess) vlm_cuda_die(file, line, what, cudaGetErrorString(e));
}

/* The host values of cross-entropy and sum_squares land here on the device, then are
 * downloaded synchronously. */
typedef struct {
  double value;
  int count;
} host_result;

static vlm_cuda_ctx g_ctx;
static host_result *g_result; /* device */
static int g_ready;

/* ---- memory ---------------------------------------------------------------------- */

static void *be_alloc(size_t bytes, const char *what) {
  void *p = NULL;
  /* cudaMalloc aligns to at least 256 bytes (the contract asks for 64) */
  cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
  if (e != cudaSuccess) {
    (void)cudaGetLastError(); /* not sticky: clear it so the next launch check passes */
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "cannot allocate %zu bytes of GPU memory for %s on device %d: %s", bytes,
                 what ? what : "a buffer", g_ctx.device, cudaGetErrorString(e));
    return NULL;
  }
  return p;
}

static void be_free(void *p) {
  if (p) RT_OK(cudaFree(p));
}

static void be_upload(void *dst, const void *host_src, size_t bytes) {
  if (bytes)
    RT_OK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, g_ctx.compute));
}

static void be_download(void *host_dst, const void *src, size_t bytes) {
  if (bytes)
    RT_OK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, g_ctx.compute));
  RT_OK(cudaStreamSynchronize(g_ctx.compute));
}

static void be_copy(void *dst, const void *src, size_t bytes) {
  if (bytes && dst != src)
    RT_OK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g_ctx.compute));
}

static void be_zero(float *x, long n) {
  if (n > 0) RT_OK(cudaMemsetAsync(x, 0, (size_t)n * sizeof(float), g_ctx.compute));
}

static void be_sync(void) { RT_OK(cudaStreamSynchronize(g_ctx.compute)); }

/* ---- kernels ------------------------------------------------------------------------ */

#define CTX &g_ctx, g_ctx.compute

/* ---- bf16 mixed precision (bf16.enabled) ---------------------------------------------
 * With bf16 on, the four GEMM entries round their fp32 operands to bf16 (round to
 * nearest even) into staging buffers and multiply those with fp32 accumulation into
 * fp32 outputs and gradients (cuBLASLt, CUBLAS_COMPUTE_32F); a bias gradient is summed
 * from the fp32 dout. Norms, activations, attention, loss, AdamW, the master weights,
 * moments and gradients stay fp32. The three staging buffers grow to the largest GEMM
 * operand seen (the first step's shapes) and are then reused: no allocation in the
 * steady state. Stream order makes the reuse safe (one compute stream). */
static int g_bf16;
typedef struct {
  vlm_bf16 *p;
  size_t n;
} bf16_stage;
static bf16_stage g_stage[3];

static int be_set_bf16(int enabled) {
  g_bf16 = enabled != 0;
  return 0;
}

/* x[n] rounded to bf16 in staging buffer `slot` (0: activations or dout, 1: the second
 * operand, 2: the third). */
static const vlm_bf16 *to_bf16(int slot, const float *x, long n) {
  bf16_stage *s = &g_stage[slot];
  if ((size_t)n > s->n) {
    RT_OK(cudaStreamSynchronize(g_ctx.compute)); /* the old buffer's readers are done */
    if (s->p) RT_OK(cudaFree(s->p));
    size_t cap = (size_t)n + (size_t)n / 4;
    cudaError_t e = cudaMalloc((void **)&s->p, cap * sizeof(vlm_bf16));
    if (e != cudaSuccess) {
      char what[96];
      snprintf(what, sizeof what, "bf16 staging buffer of %zu elements (bf16.enabled)", cap);
      vlm_cuda_die(__FILE__, __LINE__, what, cudaGetErrorString(e));
    }
    s->n = cap;
  }
  cuda_f32_to_bf16(&g_ctx, g_ctx.compute, s->p, x, n);
  return s->p;
}

static void be_linear_forward(float *out, const float *in, const float *W, const float *b, int N,
                              int K, int O) {
  if (!g_bf16 || N <= 0 || K <= 0 || O <= 0) {
    cuda_linear_forward(CTX, out, in, W, b, N, K, O);
    return;
  }
  cuda_linear_forward_bf16(CTX, out, to_bf16(0, in, (long)N * K), to_bf16(1, W, (long)O * K), b,
                           N, K, O);
}
static void be_linear_backward(float *din, float *dW, float *db, const float *dout,
                               const float *in, const float *W, int N, int K, int O) {
  if (!g_bf16 || N <= 0 || K <= 0 || O <= 0) {
    cuda_linear_backward(CTX, din, dW, db, dout, in, W, N, K, O);
    return;
  }
  if (db) cuda_bias_backward(CTX, db, dout, N, O);
  if (!din && !dW) return;
  const vlm_bf16 *d16 = to_bf16(0, dout, (long)N * O);
  cuda_linear_backward_bf16(CTX, din, dW, d16, dW ? to_bf16(1, in, (long)N * K) : NULL,
                            din ? to_bf16(2, W, (long)O * K) : NULL, N, K, O);
}
static void be_matmul_forward(float *out, const float *in, const float *P, int N, int K, int O) {
  if (!g_bf16 || N <= 0 || K <= 0 || O <= 0) {
    cuda_matmul_forward(CTX, out, in, P, N, K, O);
    return;
  }
  cuda_matmul_forward_bf16(CTX, out, to_bf16(0, in, (long)N * K), to_bf16(1, P, (long)K * O), N,
                           K, O);
}
static void be_matmul_backward(float *din, float *dP, const float *dout, const float *in,
                               const float *P, int N, int K, int O) {
  if (!g_bf16 || N <= 0 || K <= 0 || O <= 0) {
    cuda_matmul_backward(CTX, din, dP, dout, in, P, N, K, O);
    return;
  }
  if (!din && !dP) return;
  const vlm_bf16 *d16 = to_bf16(0, dout, (long)N * O);
  cuda_matmul_backward_bf16(CTX, din, dP, d16, dP ? to_bf16(1, in, (long)N * K) : NULL,
                            din ? to_bf16(2, P, (long)K * O) : NULL, N, K, O);
}
static void be_layernorm_forward(float *out, float *mean, float *rstd, const float *in,
                                 const float *w, const float *b, int N, int C, float eps) {
  cuda_layernorm_forward(CTX, out, mean, rstd, in, w, b, N, C, eps);
}
static void be_layernorm_backward(float *din, float *dw, float *db, const float *dout,
                                  const float *in, const float *w, const float *mean,
                                  const float *rstd, int N, int C) {
  cuda_layernorm_backward(CTX, din, dw, db, dout, in, w, mean, rstd, N, C);
}
static void be_rmsnorm_forward(float *out, float *rstd, const float *in, const float *w, int N,
                               int C, float eps) {
  cuda_rmsnorm_forward(CTX, out, rstd, in, w, N, C, eps);
}
static void be_rmsnorm_backward(float *din, float *dw, const float *dout, const float *in,
                                const float *w, const float *rstd, int N, int C) {
  cuda_rmsnorm_backward(CTX, din, dw, dout, in, w, rstd, N, C);
}
static void be_gelu_forward(float *out, const float *in, long n) {
  cuda_gelu_forward(CTX, out, in, n);
}
static void be_gelu_backward(float *din, const float *dout, const float *in, long n) {
  cuda_gelu_backward(CTX, din, dout, in, n);
}
static void be_swiglu_forward(float *out, const float *a, const float *g, long n) {
  cuda_swiglu_forward(CTX, out, a, g, n);
}
static void be_swiglu_backward(float *da, float *dg, const float *dout, const float *a,
                               const float *g, long n) {
  cuda_swiglu_backward(CTX, da, dg, dout, a, g, n);
}
static void be_softmax_forward(float *out, const float *in, int N, int C) {
  cuda_softmax_forward(CTX, out, in, N, C);
}
static void be_softmax_backward(float *din, const float *dout, const float *out, int N, int C) {
  cuda_softmax_backward(CTX, din, dout, out, N, C);
}
static void be_rope_forward(float *x, const int *pos, int T, int H, int D, int R, int ld,
                            float base) {
  cuda_rope_forward(CTX, x, pos, T, H, D, R, ld, base);
}
static void be_rope_backward(float *dx, const int *pos, int T, int H, int D, int R, int ld,
                             float base) {
  cuda_rope_backward(CTX, dx, pos, T, H, D, R, ld, base);
}
static size_t be_attention_scratch_floats(const attn_shape *s, int nthreads) {
  (void)nthreads; /* one call runs on the device, whatever the host threads */
  return cuda_attention_scratch_floats(s);
}
static void be_attention_forward(float *out, float *lse, const float *q, const float *k,
                                 const float *v, const attn_shape *s, float *scratch) {
  cuda_attention_forward(CTX, out, lse, q, k, v, s, scratch);
}
static void be_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                  const float *out, const float *lse, const float *q,
                                  const float *k, const float *v, const attn_shape *s,
                                  float *scratch) {
  cuda_attention_backward(CTX, dq, dk, dv, dout, out, lse, q, k, v, s, scratch);
}
static double be_cross_entropy_forward_backward(float *dlogits, const float *logits,
                                                const int *targets, int N, int V,
                                                float grad_scale, int *n_valid) {
  host_result r;
  cuda_cross_entropy_forward_backward(CTX, dlogits, logits, targets, N, V, grad_scale,
                                      &g_result->value, &g_result->count);
  be_download(&r, g_result, sizeof r);
  if (n_valid) *n_valid = r.count;
  return r.value;
}
static void be_patch_im2col(float *cols, const float *img, int Himg, int Wimg, int y0, int x0,
                            int win, int p) {
  cuda_patch_im2col(CTX, cols, img, Himg, Wimg, y0, x0, win, p);
}
static void be_bicubic_resize_forward(float *out, const float *in, int Hi, int Wi, int Ho, int Wo,
                                      int C, float *tmp) {
  cuda_bicubic_resize_forward(CTX, out, in, Hi, Wi, Ho, Wo, C, tmp);
}
static void be_bicubic_resize_backward(float *din, const float *dout, int Hi, int Wi, int Ho,
                                       int Wo, int C, float *tmp) {
  cuda_bicubic_resize_backward(CTX, din, dout, Hi, Wi, Ho, Wo, C, tmp);
}
static void be_sincos_2d_table(float *out, int G, int dim) {
  cuda_sincos_2d_table(CTX, out, G, dim);
}
static void be_adamw_step(float *p, const float *g, float *m, float *v, long n, float lr,
                          float beta1, float beta2, float eps, float weight_decay, long t,
                          float g_scale) {
  cuda_adamw_step(CTX, p, g, m, v, n, lr, beta1, beta2, eps, weight_decay, t, g_scale);
}
static double be_sum_squares(const float *g, long n) {
  double r = 0.0;
  /* cuda_sum_squares ADDS into its double: start it from 0 */
  RT_OK(cudaMemsetAsync(&g_result->value, 0, sizeof(double), g_ctx.compute));
  cuda_sum_squares(CTX, &g_result->value, g, n);
  be_download(&r, &g_result->value, sizeof r);
  return r;
}
static void be_lora_forward(float *y, float *t, const float *x, const float *A, const float *B,
                            const float *scale, int N, int K, int O, int r) {
  cuda_lora_forward(CTX, y, t, x, A, B, scale, N, K, O, r);
}
static void be_lora_backward(float *dx, float *dA, float *dB, float *dscale, const float *dy,
                             const float *x, const float *t, const float *A, const float *B,
                             const float *scale, int N, int K, int O, int r, float *scratch) {
  cuda_lora_backward(CTX, dx, dA, dB, dscale, dy, x, t, A, B, scale, N, K, O, r, scratch);
}
static void be_add_into(float *y, const float *x, long n) { cuda_add_into(CTX, y, x, n); }
static void be_add_vec(float *out, const float *a, const float *b, long n) {
  cuda_add_vec(CTX, out, a, b, n);
}
static void be_add_rows_bcast(float *x, const float *t, int N, int P, int C) {
  cuda_add_rows_bcast(CTX, x, t, N, P, C);
}
static void be_rows_copy(float *dst, const int *dst_rows, const float *src, const int *src_rows,
                         int n, int C) {
  cuda_rows_copy(CTX, dst, dst_rows, src, src_rows, n, C);
}
static void be_rows_segment_add(float *dst, const int *dst_rows, const float *src,
                                const int *src_rows, const int *seg, int n_seg, int C) {
  cuda_rows_segment_add(CTX, dst, dst_rows, src, src_rows, seg, n_seg, C);
}
static void be_image_normalize(float *out, const unsigned char *px, long n_pixels,
                               const float mean[3], const float std[3]) {
  cuda_image_normalize(CTX, out, px, n_pixels, mean, std);
}

#undef CTX

/* ---- collectives (NCCL) ----------------------------------------------------------------
 * One vlm_nccl (kernels/cuda/nccl_comm.h) on the ctx's compute and comm streams, made by
 * coll_init from the ZeRO-3 grid's MPI communicators. Events are cudaEvent_t behind the
 * table's void pointers. */
static vlm_nccl g_nccl;
static int g_nccl_ready;

static int be_coll_init(const void *shard, const void *replica, const void *world) {
  if (g_nccl_ready)
    VLM_FAIL("the NCCL communicators exist already (one ZeRO-3 state per process)");
  if (!shard || !replica || !world) VLM_FAIL("coll_init needs three MPI communicators");
  VLM_CHECK(vlm_nccl_init(&g_nccl, *(const MPI_Comm *)shard, *(const MPI_Comm *)replica,
                          *(const MPI_Comm *)world, g_ctx.device, g_ctx.compute, g_ctx.comm));
  g_nccl_ready = 1;
  return 0;
}

static void be_coll_free(void) {
  if (!g_nccl_ready) return;
  vlm_nccl_free(&g_nccl);
  g_nccl_ready = 0;
}

static void *be_coll_event_create(void) {
  cudaEvent_t ev = NULL;
  if (vlm_nccl_event_create(&ev) != 0) {
    vlm_trace_at(__FILE__, __LINE__, __func__, "vlm_nccl_event_create");
    return NULL;
  }
  return ev;
}

static void be_coll_event_destroy(void *ev) {
  if (ev) RT_OK(cudaEventDestroy((cudaEvent_t)ev));
}

static ncclDataType_t nccl_type(vlm_coll_type t) { return t == VLM_COLL_BF16 ? ncclBfloat16 : ncclFloat32; }

/* vlm_group and vlm_nccl_group number the groups alike (shard, replica, world) */
static vlm_nccl_group nccl_group(vlm_group g) { return (vlm_nccl_group)g; }

static int be_all_gather(vlm_group g, const void *send, void *recv, size_t count, vlm_coll_type t,
                         void *done) {
  if (!g_nccl_ready) VLM_FAIL("all_gather before coll_init");
  VLM_CHECK(vlm_nccl_all_gather(&g_nccl, nccl_group(g), send, recv, count, nccl_type(t),
                                (cudaEvent_t)done));
  return 0;
}

static int be_reduce_scatter(vlm_group g, const void *send, void *recv, size_t recvcount,
                             vlm_coll_type t, void *done) {
  if (!g_nccl_ready) VLM_FAIL("reduce_scatter before coll_init");
  VLM_CHECK(vlm_nccl_reduce_scatter(&g_nccl, nccl_group(g), send, recv, recvcount, nccl_type(t),
                                    (cudaEvent_t)done));
  return 0;
}

static int be_all_reduce(vlm_group g, const void *send, void *recv, size_t count, vlm_coll_type t,
                         void *done) {
  if (!g_nccl_ready) VLM_FAIL("all_reduce before coll_init");
  VLM_CHECK(vlm_nccl_all_reduce(&g_nccl, nccl_group(g), send, recv, count, nccl_type(t),
                                (cudaEvent_t)done));
  return 0;
}

static int be_coll_wait(void *done) {
  if (!g_nccl_ready) VLM_FAIL("coll_wait before coll_init");
  VLM_CHECK(vlm_nccl_wait(&g_nccl, (cudaEvent_t)done));
  return 0;
}

static void be_to_bf16(void *dst, const float *src, long n) {
  cuda_f32_to_bf16(&g_ctx, g_ctx.compute, (vlm_bf16 *)dst, src, n);
}

static void be_from_bf16(float *dst, const void *src, long n) {
  cuda_bf16_to_f32(&g_ctx, g_ctx.compute, dst, (const vlm_bf16 *)src, n);
}

static const vlm_backend g_table = {
    .name = "cuda",
    .on_device = 1,
    .host_parallel = 0,
    .alloc = be_alloc,
    .free = be_free,
    .upload = be_upload,
    .download = be_download,
    .copy = be_copy,
    .zero = be_zero,
    .sync = be_sync,
    .set_bf16 = be_set_bf16,
    .linear_forward = be_linear_forward,
    .linear_backward = be_linear_backward,
    .matmul_forward = be_matmul_forward,
    .matmul_backward = be_matmul_backward,
    .layernorm_forward = be_layernorm_forward,
    .layernorm_backward = be_layernorm_backward,
    .rmsnorm_forward = be_rmsnorm_forward,
    .rmsnorm_backward = be_rmsnorm_backward,
    .gelu_forward = be_gelu_forward,
    .gelu_backward = be_gelu_backward,
    .swiglu_forward = be_swiglu_forward,
    .swiglu_backward = be_swiglu_backward,
    .softmax_forward = be_softmax_forward,
    .softmax_backward = be_softmax_backward,
    .rope_forward = be_rope_forward,
    .rope_backward = be_rope_backward,
    .attention_scratch_floats = be_attention_scratch_floats,
    .attention_forward = be_attention_forward,
    .attention_backward = be_attention_backward,
    .cross_entropy_forward_backward = be_cross_entropy_forward_backward,
    .patch_im2col = be_patch_im2col,
    .bicubic_resize_forward = be_bicubic_resize_forward,
    .bicubic_resize_backward = be_bicubic_resize_backward,
    .sincos_2d_table = be_sincos_2d_table,
    .adamw_step = be_adamw_step,
    .sum_squares = be_sum_squares,
    .lora_forward = be_lora_forward,
    .lora_backward = be_lora_backward,
    .add_into = be_add_into,
    .add_vec = be_add_vec,
    .add_rows_bcast = be_add_rows_bcast,
    .rows_copy = be_rows_copy,
    .rows_segment_add = be_rows_segment_add,
    .image_normalize = be_image_normalize,
    .coll_init = be_coll_init,
    .coll_free = be_coll_free,
    .coll_event_create = be_coll_event_create,
    .coll_event_destroy = be_coll_event_destroy,
    .all_gather = be_all_gather,
    .reduce_scatter = be_reduce_scatter,
    .all_reduce = be_all_reduce,
    .coll_wait = be_coll_wait,
    .to_bf16 = be_to_bf16,
    .from_bf16 = be_from_bf16,
};

/* ---- set-up ------------------------------------------------------------------------- */

const vlm_backend *vlm_backend_cuda_init(void) {
  if (g_ready) return &g_table;
  int initialized = 0, device = -1;
  if (MPI_Initialized(&initialized) != MPI_SUCCESS || !initialized) {
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "the CUDA backend needs MPI initialised first (it picks the GPU from the "
                 "rank's place on its node)");
    return NULL;
  }
  if (vlm_cuda_select_device(MPI_COMM_WORLD, &device, NULL, NULL) != 0) {
    vlm_trace_at(__FILE__, __LINE__, __func__, "vlm_cuda_select_device(MPI_COMM_WORLD, ...)");
    return NULL;
  }
  if (vlm_cuda_ctx_create(&g_ctx, device, 0) != 0) {
    vlm_trace_at(__FILE__, __LINE__, __func__, "vlm_cuda_ctx_create(&g_ctx, device, 0)");
    return NULL;
  }
  cudaError_t e = cudaMalloc((void **)&g_result, sizeof *g_result);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "cannot allocate the backend's %zu-byte result buffer on GPU %d: %s",
                 sizeof *g_result, device, cudaGetErrorString(e));
    g_result = NULL;
    vlm_cuda_ctx_destroy(&g_ctx);
    return NULL;
  }
  g_ready = 1;
  return &g_table;
}

void vlm_backend_cuda_shutdown(void) {
  if (!g_ready) return;
  be_coll_free(); /* normally zero_free did it */
  RT_OK(cudaStreamSynchronize(g_ctx.compute));
  RT_OK(cudaFree(g_result));
  g_result = NULL;
  for (int i = 0; i < 3; i++) {
    if (g_stage[i].p) RT_OK(cudaFree(g_stage[i].p));
    g_stage[i].p = NULL;
    g_stage[i].n = 0;
  }
  g_bf16 = 0;
  vlm_cuda_ctx_destroy(&g_ctx);
  g_ready = 0;
}
