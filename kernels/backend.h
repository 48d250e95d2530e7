/* kernels/backend.h: the run-time kernel dispatch table (`--device cpu|cuda`).
 *
 * The model (modules/) never calls a kernel or touches a tensor's memory directly:
 * it goes through a `vlm_backend`, so the same model code runs on the CPU kernels
 * (kernels/cpu/, host memory) and on the CUDA kernels (kernels/cuda/, device memory).
 *
 * Every kernel of kernels/kernels.h appears here with exactly its arguments and
 * meaning (outputs, inputs, weights, shapes; backward ACCUMULATES; NULL gradient =
 * skipped). On a backend with on_device = 1 every tensor pointer AND every int index
 * array passed to a kernel is device memory; scalars and shapes stay host values.
 * Kernels are enqueued in order on the backend's compute stream; the only calls that
 * wait for the device are download, sync, and the two that return a host value
 * (cross_entropy_forward_backward, sum_squares).
 *
 * Host code may dereference a tensor only when on_device == 0. Work that modules/
 * used to do with host loops over tensors is done by the "rows" helpers at the end
 * (kernels/cpu/rows.c, kernels/cuda/rows.cu).
 *
 * Threads: the CPU backend parallelises inside each kernel with OpenMP, and a kernel
 * called from inside an OpenMP parallel region runs single-threaded, so modules/ may
 * run independent kernel calls (one per view) in a parallel loop when
 * host_parallel is 1. On the CUDA backend host_parallel is 0: calls are issued from
 * one thread, in order. */
#ifndef VLM_KERNELS_BACKEND_H
#define VLM_KERNELS_BACKEND_H

#include <stddef.h>


#include "kernels/kernels.h"

/* The communication groups of modules/zero.h's grid, and element types of collectives. */
typedef enum { VLM_GROUP_SHARD = 0, VLM_GROUP_REPLICA = 1, VLM_GROUP_WORLD = 2 } vlm_group;
typedef enum { VLM_COLL_F32 = 0, VLM_COLL_BF16 = 1 } vlm_coll_type;

typedef struct vlm_backend {
  const char *name;  /* "cpu" or "cuda" */
  int on_device;     /* 1: tensors live in device memory */
  int host_parallel; /* 1: independent kernel calls may be issued from OpenMP threads */

  /* ---- memory ---- */
  /* bytes of backend memory (64-byte aligned), NULL when it cannot be had; `what`
   * names the buffer for the caller's error message. */
  void *(*alloc)(size_t bytes, const char *what);
  void (*free)(void *p);
  void (*upload)(void *dst, const void *host_src, size_t bytes);   /* host -> backend */
  void (*download)(void *host_dst, const void *src, size_t bytes); /* backend -> host, waits */
  void (*copy)(void *dst, const void *src, size_t bytes);          /* backend -> backend */
  void (*zero)(float *x, long n);
  void (*sync)(void); /* waits until every enqueued kernel has finished */
  /* bf16.enabled: 1 = the GEMM entries (linear_*, matmul_*) multiply bf16-rounded
   * operands with fp32 accumulation and fp32 outputs; everything else stays fp32.
   * Returns 0. NULL on a backend without bf16 compute (the CPU). */
  int (*set_bf16)(int enabled);

  /* ---- the kernels of kernels/kernels.h, same arguments ---- */
  void (*linear_forward)(float *out, const float *in, const float *W, const float *b, int N,
                         int K, int O);
  void (*linear_backward)(float *din, float *dW, float *db, const float *dout, const float *in,
                          const float *W, int N, int K, int O);
  void (*matmul_forward)(float *out, const float *in, const float *P, int N, int K, int O);
  void (*matmul_backward)(float *din, float *dP, const float *dout, const float *in,
                          const float *P, int N, int K, int O);
  void (*layernorm_forward)(float *out, float *mean, float *rstd, const float *in, const float *w,
                            const float *b, int N, int C, float eps);
  void (*layernorm_backward)(float *din, float *dw, float *db, const float *dout, const float *in,
                             const float *w, const float *mean, const float *rstd, int N, int C);
  void (*rmsnorm_forward)(float *out, float *rstd, const float *in, const float *w, int N, int C,
                          float eps);
  void (*rmsnorm_backward)(float *din, float *dw, const float *dout, const float *in,
                           const float *w, const float *rstd, int N, int C);
  void (*gelu_forward)(float *out, const float *in, long n);
  void (*gelu_backward)(float *din, const float *dout, const float *in, long n);
  void (*swiglu_forward)(float *out, const float *a, const float *g, long n);
  void (*swiglu_backward)(float *da, float *dg, const float *dout, const float *a, const float *g,
                          long n);
  void (*softmax_forward)(float *out, const float *in, int N, int C);
  void (*softmax_backward)(float *din, const float *dout, const float *out, int N, int C);
  void (*rope_forward)(float *x, const int *pos, int T, int H, int D, int R, int ld, float base);
  void (*rope_backward)(float *dx, const int *pos, int T, int H, int D, int R, int ld, float base);
  /* scratch floats for ONE call issued by one thread (CPU: the kernel's per-call need
   * with nthreads OpenMP threads; CUDA: the backward's row-dot buffer) */
  size_t (*attention_scratch_floats)(const attn_shape *s, int nthreads);
  void (*attention_forward)(float *out, float *lse, const float *q, const float *k,
                            const float *v, const attn_shape *s, float *scratch);
  void (*attention_backward)(float *dq, float *dk, float *dv, const float *dout,
                             const float *out, const float *lse, const float *q, const float *k,
                             const float *v, const attn_shape *s, float *scratch);
  /* returns the loss sum and sets *n_valid (host values; targets in backend memory) */
  double (*cross_entropy_forward_backward)(float *dlogits, const float *logits,
                                           const int *targets, int N, int V, float grad_scale,
                                           int *n_valid);
  void (*patch_im2col)(float *cols, const float *img, int Himg, int Wimg, int y0, int x0, int win,
                       int p);
  void (*bicubic_resize_forward)(float *out, const float *in, int Hi, int Wi, int Ho, int Wo,
                                 int C, float *tmp);
  void (*bicubic_resize_backward)(float *din, const float *dout, int Hi, int Wi, int Ho, int Wo,
                                  int C, float *tmp);
  void (*sincos_2d_table)(float *out, int G, int dim);
  void (*adamw_step)(float *p, const float *g, float *m, float *v, long n, float lr, float beta1,
                     float beta2, float eps, float weight_decay, long t, float g_scale);
  double (*sum_squares)(const float *g, long n); /* host value */
  void (*lora_forward)(float *y, float *t, const float *x, const float *A, const float *B,
                       const float *scale, int N, int K, int O, int r);
  void (*lora_backward)(float *dx, float *dA, float *dB, float *dscale, const float *dy,
                        const float *x, const float *t, const float *A, const float *B,
                        const float *scale, int N, int K, int O, int r, float *scratch);

  /* ---- rows helpers of kernels.h (what modules/ did with host loops) ---- */
  /* y[n] += x[n] */
  void (*add_into)(float *y, const float *x, long n);
  /* out[n] = a[n] + b[n] (out may alias a or b) */
  void (*add_vec)(float *out, const float *a, const float *b, long n);
  /* x[r, :] += t[r % P, :] for r < N   (x[N,C], t[P,C]: a table added to every view) */
  void (*add_rows_bcast)(float *x, const float *t, int N, int P, int C);
  /* dst[dst_rows ? dst_rows[i] : i, :] = src[src_rows ? src_rows[i] : i, :], i < n
   * (a gather when dst_rows is NULL, a scatter when src_rows is NULL; the dst rows
   * of one call are distinct) */
  void (*rows_copy)(float *dst, const int *dst_rows, const float *src, const int *src_rows, int n,
                    int C);
  /* For each segment j < n_seg: dst[dst_rows[j], :] += sum over i in
   * [seg[j], seg[j+1]) of src[src_rows ? src_rows[i] : i, :], summed in i order
   * (deterministic). dst_rows of one call are distinct. Embedding gradients
   * (segments = the positions of one token id), view sums (segments = one row of
   * every view), scatter-adds (segments of length 1). */
  void (*rows_segment_add)(float *dst, const int *dst_rows, const float *src,
                           const int *src_rows, const int *seg, int n_seg, int C);
  /* out[n_pixels * 3] = (px / 255 - mean[c]) / std[c] for RGB uint8 px (CLIP
   * normalisation; px in backend memory, mean and std host arrays) */
  void (*image_normalize)(float *out, const unsigned char *px, long n_pixels, const float mean[3],
                          const float std[3]);

  /* ---- collectives between ranks (optional) ----
   * NULL on a backend whose memory MPI reads directly (the CPU): modules/zero.c then
   * calls MPI itself. The CUDA table runs them through NCCL on its comm stream
   * (kernels/cuda/nccl_comm.h): each collective is ordered after every kernel enqueued
   * so far on the compute stream, records `done` (an event from coll_event_create, or
   * NULL) when it has finished, and coll_wait(done) makes the compute stream wait for
   * it without blocking the host. Buffers are backend memory; sums are in the buffer's
   * type. Every entry returns 0, or -1 with a VLM_FAIL message. */
  /* Creates the communicators matching the MPI communicators *shard, *replica and
   * *world (each points to an MPI_Comm; MPI_COMM_NULL: that group is not used).
   * Pointers keep mpi.h out of this header. Collective over world; once per process
   * until coll_free. */
  int (*coll_init)(const void *shard, const void *replica, const void *world);
  void (*coll_free)(void); /* waits for the comm stream; a no-op before coll_init */
  void *(*coll_event_create)(void); /* NULL with a VLM_FAIL message on failure */
  void (*coll_event_destroy)(void *ev);
  /* recv[size * count] = every rank's send[count], in rank order */
  int (*all_gather)(vlm_group g, const void *send, void *recv, size_t count, vlm_coll_type t,
                    void *done);
  /* recv[recvcount] = sum over ranks of send[rank * recvcount ...] */
  int (*reduce_scatter)(vlm_group g, const void *send, void *recv, size_t recvcount, vlm_coll_type t,
                        void *done);
  /* recv[count] = sum over ranks of send[count] (send may equal recv) */
  int (*all_reduce)(vlm_group g, const void *send, void *recv, size_t count, vlm_coll_type t,
                    void *done);
  int (*coll_wait)(void *done);
  /* For bf16 collectives, on the compute stream: dst[n] = src[n] rounded to bf16
   * (nearest even), and back (exact). Backend memory; bf16 buffers are 2 bytes a value. */
  void (*to_bf16)(void *dst, const float *src, long n);
  void (*from_bf16)(float *dst, const void *src, long n);
} vlm_backend;

/* The CPU backend (always built). */
const vlm_backend *vlm_backend_cpu(void);

/* The backend called `name` ("cpu" or "cuda"), set up for this process (CUDA: the
 * rank's GPU chosen from the local rank, a context and streams). NULL with a
 * VLM_FAIL message when the name is unknown, when this build has no CUDA backend
 * (-DVLMTRAIN_CUDA=OFF), or when no GPU can be used. */
const vlm_backend *vlm_backend_get(const char *name);

/* Releases what vlm_backend_get set up (a no-op for the CPU). */
void vlm_backend_shutdown(const vlm_backend *b);

#endif
