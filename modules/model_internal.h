/* modules/model_internal.h: what the parts of the model (vit.c, resampler.c,
 * llm.c, model.c) share and nothing else includes: FLOP-counting wrappers
 * around the backend's kernels and the per-part forward/backward entry points.
 * Every kernel goes through m->ops (kernels/backend.h); tensor memory is never
 * touched by the host here. */
#ifndef VLM_MODULES_MODEL_INTERNAL_H
#define VLM_MODULES_MODEL_INTERNAL_H

#include "kernels/backend.h"
#include "modules/model.h"

/* Linear layer with FLOP accounting; count = 0 during recomputation. */
static inline void lin_fwd(model *m, int count, float *out, const float *in, wp W, const float *b,
                           int N, int K, int O) {
  m->ops->linear_forward(out, in, W.w, b, N, K, O);
  if (count) m->flops += 2.0 * N * K * O;
  zero_progress(m->z); /* drive a prefetch in flight (no MPI progress thread) */
}

static inline void lin_bwd(model *m, float *din, wp W, float *db, const float *dout,
                           const float *in, int N, int K, int O) {
  if (!din && !W.g && !db) return;
  m->ops->linear_backward(din, W.g, db, dout, in, W.w, N, K, O);
  m->flops += 2.0 * N * K * O * ((din != NULL) + (W.g != NULL));
  zero_progress(m->z);
}

/* A weight's output rows from element `offset` on, with its gradient (NULL when
 * frozen): the q, k and v parts of a stacked [Wq; Wk; Wv] are rows_of(W, 0),
 * rows_of(W, C*C) and rows_of(W, 2*C*C). */
static inline wp rows_of(wp w, long offset) {
  wp r = {w.w + offset, w.g ? w.g + offset : NULL, w.idx};
  return r;
}

/* Views that ViT block L takes backward: every view, or, below the lowest block
 * with a trainable trunk weight, the windowed ones alone (the first n_img *
 * n_windows views; the global views carry no LoRA, so their gradients reach no
 * parameter there). */
static inline int vit_backward_views(const model *m, int L, int n_views) {
  return L < m->vit_trunk_lowest ? m->n_img * m->cfg->visual.n_windows : n_views;
}

static inline double attn_flops(const attn_shape *s) {
  /* causal: the Tq queries are the last of Tk positions, about Tk - Tq/2 keys each */
  return 4.0 * s->Tq * (s->causal ? s->Tk - 0.5 * s->Tq : s->Tk) * s->D * s->H;
}

/* for (int i = 0; i < n; i++) { body }: shared out over the OpenMP threads
 * (dynamic schedule) when par holds, else run on the calling thread with no
 * parallel region around it. Why not `#pragma omp parallel for if (par)`: a
 * false if-clause still opens a (serialised) region, and a parallel region
 * inside it is a nested team, for which libgomp starts new threads every time
 * (its pool of reusable threads serves only the outermost level) while the
 * pool's own workers spin beside them on the same cores. The bodies call
 * kernels that open their own regions (OpenBLAS, attention), so on the serial
 * path those must start at the outermost level. */
#define PAR_FOR(par, i, n, ...)                        \
  do {                                                 \
    if (par) {                                         \
      _Pragma("omp parallel for schedule(dynamic)")    \
      for (int i = 0; i < (n); i++) { __VA_ARGS__ }    \
    } else {                                           \
      for (int i = 0; i < (n); i++) { __VA_ARGS__ }    \
    }                                                  \
  } while (0)

/* Run one attention call per view on the OpenMP threads (each call single-
 * threaded) only when the backend allows it and the views share out evenly;
 * otherwise the views go one after the other and each call spreads its heads and
 * query blocks over the threads (5 views on 2 threads would leave one thread idle
 * a sixth of the time). */
static inline int views_in_parallel(const model *m, int n_views) {
  return m->ops->host_parallel && (n_views % m->nthreads == 0 || n_views >= 4 * m->nthreads);
}

static inline void zero(model *m, float *x, long n) { m->ops->zero(x, n); }

/* Scratch of the calling OpenMP thread for one attention call: thread t's
 * single-threaded call inside a PAR_FOR gets its own slot; a call on the whole
 * team (from thread 0, outside any region) gets the buffer from its start, which
 * model.c sizes for that too. */
static inline float *attn_scratch_for_thread(model *m, int thread) {
  return m->attn_scratch + (size_t)thread * m->attn_scratch_per_thread;
}

/* Micro-batch (batch.c): checks it, fills seq_start, slot_row and the index
 * arrays, uploads them; *n_images_out = images of the batch. */
int model_prepare_batch(model *m, const mb_batch *b, int *n_images_out);

/* ViT (vit.c): rows are views x patches; the first n_img * n_windows views are the
 * windows (view v uses LoRA set v % n_windows), then one global view per image (no
 * LoRA). vit_block_backward's n_views may be n_img * n_windows: windows only. */
void vit_load_pixels(model *m, const uint8_t *pixels, int n_images); /* upload + normalise */
void vit_stem_forward(model *m, int n_images);
void vit_stem_backward(model *m, const float *d_h0, int n_images);
void vit_block_forward(model *m, int L, vit_acts *A, float *y, const float *x, int n_views, int count);
void vit_block_backward(model *m, int L, vit_acts *A, float *dx, const float *dy, const float *x,
                        int n_views);

/* Resampler + ln_post + proj (resampler.c): vit_in[layers] -> feat. */
void resampler_forward(model *m, int n_views);
/* d_feat -> parameter grads and, when the ViT needs it, d_vit (written). */
void resampler_backward(model *m, int n_views);

/* LLM (llm.c) over the packed tokens of a micro-batch. rows == NULL: y and dy
 * at all T rows; else only at the M rows listed, compacted (see llm.c). */
void llm_block_forward(model *m, int L, llm_acts *A, float *y, const float *x, int T, int n_seq,
                       const int *rows, int M, int count);
void llm_block_backward(model *m, int L, llm_acts *A, float *dx, const float *dy, const float *x,
                        int T, int n_seq, const int *rows, int M);

#endif
