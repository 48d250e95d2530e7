/* kernels/cuda/kernels_cuda.h: the CUDA backend of vlmtrain's compute primitives.
 *
 * Every kernel of kernels/kernels.h has a device twin here named cuda_<name>, with
 * the same arguments in the same order and the same meaning, preceded by two:
 *   (vlm_cuda_ctx *ctx, cudaStream_t stream, <the CPU kernel's arguments>)
 * All tensor pointers are DEVICE pointers (scalars and shapes stay on the host, as in
 * the CPU interface). Conventions carried over unchanged from kernels/kernels.h:
 *  - outputs, then inputs, then weights, then shapes; dense row-major fp32;
 *  - HF Linear weights are [out, in] and are applied as x @ W^T;
 *  - every backward ACCUMULATES (+=) into every gradient it writes; a NULL gradient
 *    pointer skips that work entirely;
 *  - kernels never allocate: scratch is passed in, sized by the *_scratch_floats()
 *    helpers. The ctx carries two buffers allocated once at creation: the cuBLAS /
 *    cuBLASLt workspace and a small reduction buffer for deterministic two-stage sums;
 *  - kernels never fail: a launch or cuBLAS error is a bug or a broken device, and
 *    aborts with file:line (vlm_cuda_die). Only ctx creation returns an error.
 * Work is enqueued on `stream` and nothing synchronises, except where a function
 * below says so. Kernels that use the ctx's workspace or reduction buffer (GEMMs,
 * the column sums inside the norm and bias backward, cross-entropy, sum_squares,
 * LoRA's dscale) must not run on two streams at once with the same ctx: use one ctx
 * per concurrently computing stream (the comm stream runs only NCCL).
 *
 * Where the interfaces differ (host return values become device outputs):
 *  - cuda_cross_entropy_forward_backward writes the loss sum (double) and the count
 *    of valid rows (int) to device memory instead of returning them;
 *  - cuda_sum_squares ADDS its double result into a device double;
 *  - lr_cosine_with_warmup is host arithmetic and has no twin: use the CPU one;
 *  - LoRA's `scale` is a device pointer to one float, as the CPU kernel reads scale[0].
 *
 * Mixed precision (bf16.enabled): bf16 is stored as raw uint16_t bits (vlm_bf16) so
 * this header compiles as C. The bf16 path keeps every activation, gradient, master
 * weight and AdamW moment in fp32 and feeds the GEMMs bf16 copies: the caller
 * converts the GEMM inputs with cuda_f32_to_bf16 (round to nearest even), calls the
 * *_bf16 GEMM variants (bf16 x bf16, fp32 accumulation CUBLAS_COMPUTE_32F, fp32 out,
 * beta = 1 accumulation into fp32 gradients), and AdamW updates the fp32 master shard
 * and writes its bf16 copy (cuda_adamw_step_bf16), the copy the ZeRO gather moves.
 * docs/cuda.md gives the recipe. Attention, norms, activations, loss and AdamW run in
 * fp32 in both modes.
 *
 * Not here: model composition, dispatch between CPU and CUDA (the lead's
 * kernel-dispatch table), NCCL (kernels/cuda/nccl_comm.h). */
#ifndef VLM_KERNELS_CUDA_H
#define VLM_KERNELS_CUDA_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h" /* attn_shape */

#ifdef __cplusplus
extern "C" {
#endif

/* bf16 as its 16 raw bits (the upper half of the fp32 bit pattern). */
typedef uint16_t vlm_bf16;

/* Element types a GEMM input may have (fp32 accumulation and output in both). */
typedef enum { VLM_DT_F32 = 0, VLM_DT_BF16 = 1 } vlm_dtype;

/* ---- context --------------------------------------------------------------- */

/* One per device per computing stream. blas and lt are bound to `workspace`; the
 * compute and comm streams are created non-blocking; reduce is the scratch of the
 * deterministic two-stage reductions; consts holds {0.0f, 1.0f} on the device (the
 * beta of GEMMs whose alpha is a device scalar); lt_cache memoises cuBLASLt's
 * algorithm choice per GEMM shape (gemm.cu). */
typedef struct vlm_cuda_ctx {
  int device;
  int sm_count;
  cublasHandle_t blas;
  cublasLtHandle_t lt;
  cudaStream_t compute, comm;
  void *workspace;
  size_t workspace_bytes;
  void *reduce;
  size_t reduce_bytes;
  float *consts;
  void *lt_cache;
} vlm_cuda_ctx;

/* Default cuBLAS/cuBLASLt workspace (32 MiB, what cuBLAS recommends on Hopper) and
 * reduction buffer (32 MiB). */
#define VLM_CUDA_WORKSPACE_BYTES ((size_t)32 << 20)
#define VLM_CUDA_REDUCE_BYTES ((size_t)32 << 20)

/* Makes `device` current and creates handles, streams and buffers (workspace_bytes 0:
 * the default). Returns 0, or -1 with a VLM_FAIL message (no device, out of memory). */
int vlm_cuda_ctx_create(vlm_cuda_ctx *ctx, int device, size_t workspace_bytes);
/* Synchronises both streams and frees everything; a zeroed ctx is a no-op. */
void vlm_cuda_ctx_destroy(vlm_cuda_ctx *ctx);
/* Prints "vlmtrain: CUDA error at FILE:LINE: WHAT: MSG" and aborts (kernels never fail). */
void vlm_cuda_die(const char *file, int line, const char *what, const char *msg)
    __attribute__((noreturn));

/* ---- GEMM (cuBLAS / cuBLASLt) ---------------------------------------------------
 * Row-major C[M,N] = alpha * op(A) @ op(B) + beta * C with fp32 C and fp32
 * accumulation. op(A) is [M,K]: A is stored [M,K] (ta = 0) or [K,M] (ta = 1) with row
 * stride lda; op(B) is [K,N]: B is [K,N] (tb = 0) or [N,K] (tb = 1) with row stride
 * ldb. A and B are both `ab` (fp32: cublasGemmEx with CUBLAS_COMPUTE_32F, no TF32;
 * bf16: cuBLASLt, CUBLAS_COMPUTE_32F). K <= 0 gives C = beta * C. */
void cuda_gemm(vlm_cuda_ctx *ctx, cudaStream_t stream, int ta, int tb, int M, int N, int K,
               float alpha, const void *A, int lda, const void *B, int ldb, vlm_dtype ab,
               float beta, float *C, int ldc);

/* ---- dense layers --------------------------------------------------------------- */

/* out[N,O] = in[N,K] @ W[O,K]^T + b[O]   (b may be NULL) */
void cuda_linear_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out, const float *in,
                         const float *W, const float *b, int N, int K, int O);
/* din[N,K] += dout @ W;  dW[O,K] += dout^T @ in;  db[O] += sum_n dout  (any may be NULL) */
void cuda_linear_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din, float *dW,
                          float *db, const float *dout, const float *in, const float *W, int N,
                          int K, int O);
/* out[N,O] = in[N,K] @ P[K,O] */
void cuda_matmul_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out, const float *in,
                         const float *P, int N, int K, int O);
/* din[N,K] += dout @ P^T;  dP[K,O] += in^T @ dout  (either may be NULL) */
void cuda_matmul_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din, float *dP,
                          const float *dout, const float *in, const float *P, int N, int K,
                          int O);
/* db[O] += sum_n dout[n,:], dout[N,O] fp32 (deterministic: fixed-order two-stage sum) */
void cuda_bias_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *db, const float *dout,
                        int N, int O);

/* bf16 GEMM variants: the same products with bf16 inputs and fp32 outputs/gradients.
 * The bias gradient needs the fp32 dout: call cuda_bias_backward for it. */
void cuda_linear_forward_bf16(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                              const vlm_bf16 *in, const vlm_bf16 *W, const float *b, int N,
                              int K, int O);
void cuda_linear_backward_bf16(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din, float *dW,
                               const vlm_bf16 *dout, const vlm_bf16 *in, const vlm_bf16 *W,
                               int N, int K, int O);
void cuda_matmul_forward_bf16(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                              const vlm_bf16 *in, const vlm_bf16 *P, int N, int K, int O);
void cuda_matmul_backward_bf16(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din, float *dP,
                               const vlm_bf16 *dout, const vlm_bf16 *in, const vlm_bf16 *P,
                               int N, int K, int O);

/* ---- mixed precision ---------------------------------------------------------- */

/* dst[n] = bf16(src[n]), round to nearest even; NaN stays NaN (quiet), +-Inf stays. */
void cuda_f32_to_bf16(vlm_cuda_ctx *ctx, cudaStream_t stream, vlm_bf16 *dst, const float *src,
                      long n);
/* dst[n] = float(src[n]) (exact) */
void cuda_bf16_to_f32(vlm_cuda_ctx *ctx, cudaStream_t stream, float *dst, const vlm_bf16 *src,
                      long n);

/* ---- normalisation ---------------------------------------------------------------- */

void cuda_layernorm_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out, float *mean,
                            float *rstd, const float *in, const float *w, const float *b, int N,
                            int C, float eps);
void cuda_layernorm_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din, float *dw,
                             float *db, const float *dout, const float *in, const float *w,
                             const float *mean, const float *rstd, int N, int C);
void cuda_rmsnorm_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out, float *rstd,
                          const float *in, const float *w, int N, int C, float eps);
void cuda_rmsnorm_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din, float *dw,
                           const float *dout, const float *in, const float *w,
                           const float *rstd, int N, int C);

/* ---- activations ------------------------------------------------------------------ */

void cuda_gelu_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out, const float *in,
                       long n);
void cuda_gelu_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din, const float *dout,
                        const float *in, long n);
void cuda_swiglu_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out, const float *a,
                         const float *g, long n);
void cuda_swiglu_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *da, float *dg,
                          const float *dout, const float *a, const float *g, long n);
/* out may alias in */
void cuda_softmax_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out, const float *in,
                          int N, int C);
void cuda_softmax_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din, const float *dout,
                           const float *out, int N, int C);

/* ---- rotary position embedding (pos is a device array of T ints) ------------------ */

void cuda_rope_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *x, const int *pos, int T,
                       int H, int D, int R, int ld, float base);
void cuda_rope_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *dx, const int *pos, int T,
                        int H, int D, int R, int ld, float base);

/* ---- attention (tiled, online softmax; no Tq x Tk matrix in memory) ----------------
 * Same layouts and semantics as kernels.h (strided q/k/v, out [Tq, H*D], lse [H, Tq],
 * causal: Tq <= Tk, the queries being the last Tq positions). Head dims up to
 * VLM_CUDA_ATTN_MAX_D. The forward needs no scratch; the backward needs
 * cuda_attention_scratch_floats(s) floats of device scratch (the row dots
 * D_i = dO_i . O_i). */
#define VLM_CUDA_ATTN_MAX_D 256
size_t cuda_attention_scratch_floats(const attn_shape *s);
void cuda_attention_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out, float *lse,
                            const float *q, const float *k, const float *v, const attn_shape *s,
                            float *scratch);
void cuda_attention_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *dq, float *dk,
                             float *dv, const float *dout, const float *out, const float *lse,
                             const float *q, const float *k, const float *v, const attn_shape *s,
                             float *scratch);

/* ---- loss ----------------------------------------------------------------------------
 * As cross_entropy_forward_backward (targets: device ints; -100 and any target outside
 * [0,V) ignored; dlogits written, may alias logits, may be NULL), but the loss sum is
 * WRITTEN to *loss_sum (device double) and the valid count to *n_valid (device int;
 * may be NULL). The sum is in a fixed order (deterministic). */
void cuda_cross_entropy_forward_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *dlogits,
                                         const float *logits, const int *targets, int N, int V,
                                         float grad_scale, double *loss_sum, int *n_valid);

/* ---- image ops ------------------------------------------------------------------------ */

void cuda_patch_im2col(vlm_cuda_ctx *ctx, cudaStream_t stream, float *cols, const float *img,
                       int Himg, int Wimg, int y0, int x0, int win, int p);
void cuda_bicubic_matrix(vlm_cuda_ctx *ctx, cudaStream_t stream, float *M, int out_n, int in_n);
/* tmp: Ho*Wi*C device floats */
void cuda_bicubic_resize_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                                 const float *in, int Hi, int Wi, int Ho, int Wo, int C,
                                 float *tmp);
void cuda_bicubic_resize_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *din,
                                  const float *dout, int Hi, int Wi, int Ho, int Wo, int C,
                                  float *tmp);
void cuda_sincos_2d_table(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out, int G, int dim);

/* ---- optimizer ------------------------------------------------------------------------ */

/* Fused AdamW on fp32 master weights p and fp32 moments m, v (torch.optim.AdamW), on the
 * gradient g * g_scale (the clipping coefficient; g is not modified). */
void cuda_adamw_step(vlm_cuda_ctx *ctx, cudaStream_t stream, float *p, const float *g, float *m,
                     float *v, long n, float lr, float beta1, float beta2, float eps,
                     float weight_decay, long t, float g_scale);
/* The same step, also writing p_bf16[n] = bf16(updated p) (round to nearest even): the
 * bf16 parameter copy that bf16 runs gather and compute with. */
void cuda_adamw_step_bf16(vlm_cuda_ctx *ctx, cudaStream_t stream, float *p, vlm_bf16 *p_bf16,
                          const float *g, float *m, float *v, long n, float lr, float beta1,
                          float beta2, float eps, float weight_decay, long t, float g_scale);
/* *sum_sq += sum_i g[i]^2 in double (sum_sq: device double; fixed-order, deterministic) */
void cuda_sum_squares(vlm_cuda_ctx *ctx, cudaStream_t stream, double *sum_sq, const float *g,
                      long n);
/* x[n] *= s */
void cuda_scale_inplace(vlm_cuda_ctx *ctx, cudaStream_t stream, float *x, long n, float s);

/* ---- LoRA (scale: device pointer to one float; scratch: N*r device floats) ---------- */

void cuda_lora_forward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *y, float *t, const float *x,
                       const float *A, const float *B, const float *scale, int N, int K, int O,
                       int r);
void cuda_lora_backward(vlm_cuda_ctx *ctx, cudaStream_t stream, float *dx, float *dA, float *dB,
                        float *dscale, const float *dy, const float *x, const float *t,
                        const float *A, const float *B, const float *scale, int N, int K, int O,
                        int r, float *scratch);

/* ---- rows helpers (kernels.h's last section; every index array is a DEVICE int array;
 * mean and std of image_normalize are host arrays) ---------------------------------- */

/* y[n] += x[n] */
void cuda_add_into(vlm_cuda_ctx *ctx, cudaStream_t stream, float *y, const float *x, long n);
/* out[n] = a[n] + b[n] (out may alias a or b) */
void cuda_add_vec(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out, const float *a,
                  const float *b, long n);
/* x[r, :] += t[r % P, :] for r < N   (x[N,C], t[P,C]) */
void cuda_add_rows_bcast(vlm_cuda_ctx *ctx, cudaStream_t stream, float *x, const float *t, int N,
                         int P, int C);
/* dst[dst_rows ? dst_rows[i] : i, :] = src[src_rows ? src_rows[i] : i, :] for i < n
 * (dst rows of one call distinct) */
void cuda_rows_copy(vlm_cuda_ctx *ctx, cudaStream_t stream, float *dst, const int *dst_rows,
                    const float *src, const int *src_rows, int n, int C);
/* dst[dst_rows[j], :] += sum of src[src_rows ? src_rows[i] : i, :] over i in
 * [seg[j], seg[j+1]) for j < n_seg, added in i order (one block per segment, no atomics:
 * deterministic and equal to the CPU's bits). seg[n_seg + 1] is read on the device only. */
void cuda_rows_segment_add(vlm_cuda_ctx *ctx, cudaStream_t stream, float *dst,
                           const int *dst_rows, const float *src, const int *src_rows,
                           const int *seg, int n_seg, int C);
/* out[3*i + c] = (px[3*i + c] / 255 - mean[c]) / std[c] for i < n_pixels */
void cuda_image_normalize(vlm_cuda_ctx *ctx, cudaStream_t stream, float *out,
                          const unsigned char *px, long n_pixels, const float mean[3],
                          const float std[3]);

#ifdef __cplusplus
}
#endif

#endif
