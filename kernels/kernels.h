/* kernels/kernels.h: the compute primitives of vlmtrain, forward and backward.
 *
 * One interface; kernels/cpu/ implements it with OpenBLAS and OpenMP (a CUDA
 * backend will implement the same signatures). Conventions, as in llm.c:
 *  - argument order: outputs, then inputs, then weights, then shapes;
 *  - all tensors are dense row-major fp32, shapes restated in the comment;
 *  - HF Linear weights are [out, in] and are applied as x @ W^T;
 *  - every backward ACCUMULATES (+=) into every gradient it writes, inputs
 *    included; the caller zeroes. A NULL gradient pointer means "not needed":
 *    the kernel skips that work entirely (a frozen weight never gets a weight
 *    gradient computed);
 *  - kernels never allocate: scratch space is passed in, sized by the
 *    *_scratch_floats() helpers, and allocated once by the caller at set-up;
 *  - kernels never fail; shapes are validated where data enters the program;
 *  - no parameter is called `I`: OpenBLAS's cblas.h includes complex.h, whose
 *    macro I breaks such a declaration (we use K for inner dimensions).
 * OpenMP parallelises inside each kernel; a kernel called from inside an
 * OpenMP parallel region runs single-threaded (OpenBLAS's OpenMP build does). */
#ifndef VLM_KERNELS_H
#define VLM_KERNELS_H

#include <stddef.h>

/* ---- dense layers ------------------------------------------------------ */

/* out[N,O] = in[N,K] @ W[O,K]^T + b[O]   (b may be NULL) */
void linear_forward(float *out, const float *in, const float *W, const float *b, int N, int K, int O);
/* din[N,K] += dout[N,O] @ W[O,K];  dW[O,K] += dout^T @ in;  db[O] += sum_n dout[n,:]
 * (each of din, dW, db may be NULL) */
void linear_backward(float *din, float *dW, float *db, const float *dout, const float *in,
                     const float *W, int N, int K, int O);

/* out[N,O] = in[N,K] @ P[K,O]   (a plain matrix applied from the right, e.g. visual.proj) */
void matmul_forward(float *out, const float *in, const float *P, int N, int K, int O);
/* din[N,K] += dout[N,O] @ P^T;  dP[K,O] += in^T @ dout   (either may be NULL) */
void matmul_backward(float *din, float *dP, const float *dout, const float *in, const float *P,
                     int N, int K, int O);

/* ---- normalisation ----------------------------------------------------- */

/* out[N,C] = (in - mean) * rstd * w[C] + b[C]; saves mean[N], rstd[N] (biased variance) */
void layernorm_forward(float *out, float *mean, float *rstd, const float *in, const float *w,
                       const float *b, int N, int C, float eps);
/* din[N,C] +=, dw[C] +=, db[C] += (any may be NULL) */
void layernorm_backward(float *din, float *dw, float *db, const float *dout, const float *in,
                        const float *w, const float *mean, const float *rstd, int N, int C);

/* out[N,C] = in * rsqrt(mean(in^2) + eps) * w[C]; saves rstd[N] */
void rmsnorm_forward(float *out, float *rstd, const float *in, const float *w, int N, int C, float eps);
/* din[N,C] +=, dw[C] += (either may be NULL) */
void rmsnorm_backward(float *din, float *dw, const float *dout, const float *in, const float *w,
                      const float *rstd, int N, int C);

/* ---- activations ------------------------------------------------------- */

/* out[n] = in * 0.5 * (1 + erf(in / sqrt(2)))   (exact GELU) */
void gelu_forward(float *out, const float *in, long n);
/* din[n] += dout * gelu'(in) */
void gelu_backward(float *din, const float *dout, const float *in, long n);

/* Qwen's SwiGLU: out[n] = a * silu(g) with silu(g) = g * sigmoid(g); a = w1(x), g = w2(x) */
void swiglu_forward(float *out, const float *a, const float *g, long n);
/* da[n] += dout * silu(g);  dg[n] += dout * a * silu'(g) */
void swiglu_backward(float *da, float *dg, const float *dout, const float *a, const float *g, long n);

/* Row softmax: out[N,C] = softmax(in[N,C]) along C (out may alias in) */
void softmax_forward(float *out, const float *in, int N, int C);
/* din[N,C] += out * (dout - sum_c(dout * out)) */
void softmax_backward(float *din, const float *dout, const float *out, int N, int C);

/* ---- rotary position embedding (Qwen: rotate-half, cat(freqs, freqs)) ---
 * x holds T tokens x H heads x D head dims: element (t,h,d) at x[t*ld + h*D + d].
 * The first R dims of each head are rotated (R = rotary_pct * D, even); pos[T]
 * gives each token's position. inv_freq[i] = 1/base^(2i/R), angles in fp32. */
void rope_forward(float *x, const int *pos, int T, int H, int D, int R, int ld, float base);
/* In place: turns dL/d(rotated x) into dL/d(x) (the transpose rotation). */
void rope_backward(float *dx, const int *pos, int T, int H, int D, int R, int ld, float base);

/* ---- attention -----------------------------------------------------------
 * Multi-head scaled dot-product attention for ONE sequence, never storing a
 * Tq x Tk matrix: queries are processed in blocks with an online softmax, and
 * the backward recomputes probabilities from the saved log-sum-exp.
 * Element (t, h, d) of q is q[t*ldq + h*hsq + d] (same for k, v and for the
 * gradients dq, dk, dv, which use the strides of q, k, v). This covers the ViT's
 * per-head [q_h|k_h|v_h] layout (ld 3W, head stride 3D), the LLM's [q|k|v]
 * (ld 3C, head stride D) and the resampler's separate q and k/v buffers.
 * out is [Tq, H*D] contiguous; lse is [H, Tq]. causal: query t is at position
 * t + Tk - Tq and sees the keys up to it (requires Tq <= Tk; Tq < Tk computes
 * only the last Tq rows of a causal sequence, given all its keys and values). */
typedef struct {
  int Tq, Tk, H, D;
  int ldq, ldk, ldv; /* row strides (elements between consecutive tokens) */
  int hsq, hsk, hsv; /* head strides (elements between consecutive heads) */
  int causal;
  float scale; /* usually 1/sqrt(D) */
} attn_shape;

/* Floats of scratch the attention kernels need when run with nthreads threads. */
size_t attention_scratch_floats(const attn_shape *s, int nthreads);
void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                       const attn_shape *s, float *scratch);
/* dq, dk, dv += (any may be NULL); needs out and lse from the forward. */
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                        const float *lse, const float *q, const float *k, const float *v,
                        const attn_shape *s, float *scratch);

/* ---- loss ---------------------------------------------------------------
 * Cross-entropy over rows of logits[N,V] with integer targets[N]; target -100
 * is ignored. Returns the SUM of the per-row losses (as double) and sets
 * *n_valid. If dlogits is non-NULL it receives (softmax - onehot) * grad_scale
 * for valid rows and 0 for ignored rows (written, not accumulated; dlogits may
 * alias logits). Row-parallel; numerically stable (max-subtracted). */
double cross_entropy_forward_backward(float *dlogits, const float *logits, const int *targets,
                                      int N, int V, float grad_scale, int *n_valid);

/* ---- image ops ----------------------------------------------------------- */

/* Patch extraction for a stride-p, p x p convolution with no bias (conv1):
 * img is HWC fp32 of size Himg x Wimg x 3; the window is win x win pixels at
 * (y0, x0); cols[G*G, 3*p*p] with G = win/p, column index c*p*p + ky*p + kx,
 * so conv1 is linear_forward(out[G*G,W], cols, conv1.weight[W,3*p*p], NULL, ...). */
void patch_im2col(float *cols, const float *img, int Himg, int Wimg, int y0, int x0, int win, int p);

/* 1-D bicubic resampling matrix M[out_n, in_n] with PyTorch's semantics for
 * F.interpolate(mode="bicubic", align_corners=False): cubic a = -0.75,
 * src = (dst + 0.5) * in_n / out_n - 0.5 (not clamped), taps clamped to the edge. */
void bicubic_matrix(float *M, int out_n, int in_n);
/* out[Ho, Wo, C] = resize(in[Hi, Wi, C]) (channels last; separable, exact
 * PyTorch semantics). tmp holds Ho*Wi*C floats. */
void bicubic_resize_forward(float *out, const float *in, int Hi, int Wi, int Ho, int Wo, int C,
                            float *tmp);
/* din[Hi, Wi, C] += resize^T(dout[Ho, Wo, C]); tmp holds Ho*Wi*C floats. */
void bicubic_resize_backward(float *din, const float *dout, int Hi, int Wi, int Ho, int Wo, int C,
                             float *tmp);

/* The fixed 2-D sine-cosine table of the resampler: out[G*G, dim] for a G x G
 * grid (MAE/Qwen-VL: first half encodes the column, second half the row; each
 * half is [sin | cos] with omega_i = 1/10000^(i/(dim/4))). */
void sincos_2d_table(float *out, int G, int dim);

/* ---- optimizer ------------------------------------------------------------ */

/* One AdamW step (torch.optim.AdamW semantics) with the gradient g * g_scale, the
 * fp32 product torch's clip_grad_norm_ leaves in the gradient (g_scale: the clipping
 * coefficient, 1 when not clipping; g itself is not modified): p *= 1 - lr*wd; m, v
 * updated; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). t: the 1-based step. */
void adamw_step(float *p, const float *g, float *m, float *v, long n, float lr, float beta1,
                float beta2, float eps, float weight_decay, long t, float g_scale);

/* Sum of squares of g[n], accumulated in double. */
double sum_squares(const float *g, long n);
/* x[n] *= s (the reference for the CUDA check of cuda_scale_inplace; the model does not use it) */
void scale_inplace(float *x, long n, float s);

/* HF get_cosine_schedule_with_warmup multiplier for 0-based optimizer step
 * `step`: step/warmup during warmup, then 0.5*(1+cos(pi*2*num_cycles*progress)),
 * never below 0. */
double lr_cosine_with_warmup(long step, long warmup, long total, double num_cycles);

/* ---- LoRA adapter (Monkey: y += scale * lora_b(lora_a(x)), no alpha/r) ---- */

/* y[N,O] += scale[0] * (x[N,K] @ A[r,K]^T) @ B[O,r]^T; saves t[N,r] = x @ A^T */
void lora_forward(float *y, float *t, const float *x, const float *A, const float *B,
                  const float *scale, int N, int K, int O, int r);
/* dx[N,K] +=, dA[r,K] +=, dB[O,r] +=, dscale[0] += (any may be NULL);
 * scratch holds N*r floats. */
void lora_backward(float *dx, float *dA, float *dB, float *dscale, const float *dy, const float *x,
                   const float *t, const float *A, const float *B, const float *scale, int N, int K,
                   int O, int r, float *scratch);

/* ---- rows helpers: element-wise and row-indexed moves the model needs ----
 * (kernels/cpu/rows.c). Index arrays live where the tensors live. */

/* y[n] += x[n] */
void add_into(float *y, const float *x, long n);
/* out[n] = a[n] + b[n]   (out may alias a or b) */
void add_vec(float *out, const float *a, const float *b, long n);
/* x[r, :] += t[r % P, :] for r < N   (x[N,C], t[P,C]: one table added to every view) */
void add_rows_bcast(float *x, const float *t, int N, int P, int C);
/* dst[dst_rows ? dst_rows[i] : i, :] = src[src_rows ? src_rows[i] : i, :] for i < n
 * (a gather when dst_rows is NULL, a scatter when src_rows is NULL; the dst rows of
 * one call are distinct) */
void rows_copy(float *dst, const int *dst_rows, const float *src, const int *src_rows, int n,
               int C);
/* For each segment j < n_seg: dst[dst_rows[j], :] += sum of src[src_rows ? src_rows[i] : i, :]
 * over i in [seg[j], seg[j+1]), added in i order (deterministic; dst_rows distinct).
 * Embedding gradients (a segment = the positions of one token id), sums over views,
 * scatter-adds (segments of length 1). */
void rows_segment_add(float *dst, const int *dst_rows, const float *src, const int *src_rows,
                      const int *seg, int n_seg, int C);
/* out[3*i + c] = (px[3*i + c] / 255 - mean[c]) / std[c] for i < n_pixels (RGB uint8;
 * mean and std are host arrays) */
void image_normalize(float *out, const unsigned char *px, long n_pixels, const float mean[3],
                     const float std[3]);

#endif
