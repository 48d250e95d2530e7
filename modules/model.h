/* modules/model.h: the Monkey model's forward and backward over one
 * micro-batch, composed from the kernels: per-window LoRA ViT, resampler,
 * Qwen LLM with the image features spliced between <img> and </img>, and the
 * shifted cross-entropy. Parameters and gradients live in the registry's flat
 * buffers; every activation buffer is allocated once in model_create for the
 * largest micro-batch, so a training step allocates nothing.
 *
 * A micro-batch is packed: the samples' tokens are concatenated (each sample
 * keeps its own positions and causal window), and all views of all images go
 * through the ViT together (each view with its own LoRA set).
 *
 * Every kernel runs through the model's backend (kernels/backend.h): activations
 * and the int index arrays the kernels read live in backend memory, and the host
 * never dereferences them; the host builds the index arrays of a micro-batch in
 * a mirror (hidx) and uploads them once. */
#ifndef VLM_MODULES_MODEL_H
#define VLM_MODULES_MODEL_H

#include <stdint.h>

#include "io/config.h"
#include "kernels/backend.h"
#include "modules/registry.h"
#include "modules/zero.h"

/* One micro-batch. tokens/labels: all samples concatenated (sum of len).
 * pixels: the images of all samples in order, each S x S x 3 RGB uint8. */
typedef struct {
  int n_samples;
  const int *len;   /* [n_samples] */
  const int *n_img; /* [n_samples] */
  const int32_t *tokens;
  const int32_t *labels;
  const uint8_t *pixels;
} mb_batch;

/* A parameter as the model sees it: its registry index, and the full-size
 * data and gradient pointers bound while its module is gathered (gradient
 * NULL when frozen or outside the module's backward). */
typedef struct {
  const float *w;
  float *g;
  int idx; /* -1: absent (kv_proj when width == output_dim) */
} wp;

typedef struct {
  wp ln1_w, ln1_b, in_w, in_b, out_w, out_b, ln2_w, ln2_b, fc_w, fc_b, proj_w, proj_b;
  wp lora_in_a[16], lora_in_b[16], lora_in_s[16];
  wp lora_out_a[16], lora_out_b[16], lora_out_s[16];
  wp lora_mlp_a[16], lora_mlp_b[16], lora_mlp_s[16];
  int needs_grad; /* any parameter of the block is trainable */
} vit_block_w;

typedef struct {
  wp ln1, c_attn_w, c_attn_b, c_proj, ln2, w1, w2, mlp_proj;
} llm_block_w;

/* Saved activations of one ViT block over N = views * patches rows. */
typedef struct {
  float *a, *mean1, *rstd1, *qkv, *t_in, *ctx, *lse, *t_out, *x1, *c, *mean2, *rstd2, *f, *g, *t_mlp;
} vit_acts;

typedef struct {
  float *a, *rstd1, *qkv, *ctx, *lse, *x1, *c, *rstd2, *u1, *u2, *s;
} llm_acts;

/* The int arrays the kernels read for one micro-batch, built on the host from
 * the batch's tokens and labels. The model holds two copies with one layout: idx
 * in backend memory (what kernels read) and hidx on the host (where they are
 * built); one upload of idx_bytes copies the whole block. */
typedef struct {
  int *pos_ids;  /* [T] position of each token inside its sample (RoPE) */
  int *tokens;   /* [T] token ids */
  int *sel_rows; /* [T] rows with a target (the row predicting label t+1) */
  int *sel_tgt;  /* [T] their targets */
  int *slot_pos; /* [T] positions that take an image feature row... */
  int *slot_src; /* [T] ...and the feature row each takes */
  int *emb_dst, *emb_seg, *emb_src; /* wte gradient: distinct token ids, segment offsets
                                     * [n+1], text positions grouped by id (in t order) */
  int *iota;     /* [max(T, patches, queries) + 1]: 0, 1, 2, ... */
  int *vsum_rows, *vsum_seg; /* sum over the views of [patches] rows: rows by patch, then view */
  int *qsum_rows, *qsum_seg; /* sum of views 1.. of [queries] rows onto view 0 */
} mb_index;

typedef struct {
  const monkey_config *cfg;
  const vlm_backend *ops; /* every kernel call and every move of tensor data */
  registry *reg;
  zero_state *z;     /* where parameters live; gathered module by module */
  wp **slots;        /* every wp of the model, and the module each belongs to */
  int *slot_mod, n_slots;
  int mod_stem, mod_vit0, mod_res, mod_embed, mod_llm0, mod_head;
  int max_samples, max_tokens, max_images;
  int recompute_vit, recompute_llm;
  int nthreads;

  /* resolved parameter pointers */
  wp conv1, pos, ln_pre_w, ln_pre_b;
  vit_block_w *vb;
  wp rq, rpos, kv_proj, r_in_w, r_in_b, r_out_w, r_out_b, ln_q_w, ln_q_b, ln_kv_w, ln_kv_b;
  wp ln_post_w, ln_post_b, proj;
  wp wte;
  llm_block_w *lb;
  wp ln_f, lm_head;
  int vit_needs_grad;   /* anything in the visual path (ViT or resampler) is trainable */
  int vit_lowest;       /* lowest ViT block needing backward; -1: the stem too; layers: none */
  int vit_trunk_lowest; /* lowest ViT block whose non-LoRA weights are trainable; -1: the stem;
                           layers: none. Below it the global views need no backward. */
  int n_img;            /* images of the current micro-batch */

  /* ---- visual activations (N_vit = max_images * views * patches) ---- */
  float *img;        /* [max_images, S, S, 3] normalised */
  float *glob;       /* [max_images, w, w, 3] global views */
  float *resize_tmp; /* bicubic scratch */
  float *cols;       /* [N_vit, 3*p*p] */
  float *pe;         /* [patches, W] interpolated positional embedding */
  float *x0;         /* [N_vit, W] conv + pos (ln_pre input) */
  float *pre_mean, *pre_rstd;
  float **vit_in;    /* [layers + 1] block inputs (vit_in[layers] = ViT output) */
  vit_acts *va;      /* [layers] or [1] with recompute */
  /* resampler */
  float *kv, *kv_mean, *kv_rstd, *kvn, *pe_k, *keys, *qn, *q_mean, *q_rstd, *q_in, *Q, *K, *V;
  float *r_ctx, *r_lse, *r_o, *post_mean, *post_rstd, *zpost, *feat;
  uint8_t *px;       /* [max_images, S, S, 3] the batch's pixels, uploaded */
  /* ---- index arrays of the micro-batch (backend copy, host mirror) ---- */
  mb_index idx, hidx;
  size_t idx_bytes;
  int n_sel, n_slot, n_emb; /* rows with a target, image slots, distinct text token ids */
  /* ---- host-only metadata ---- */
  int *seq_start;    /* [max_samples + 1] */
  int *seq_tail;     /* [max_samples] a sample's first row with a target (from its start), or its length */
  int *slot_row;     /* [T] row of the image features spliced at this position, or -1 */
  int *emb_pairs;    /* [2T] sort scratch for emb_* */
  /* ---- LLM activations (T = max_tokens) ---- */
  float **llm_in;    /* [layers + 1] */
  llm_acts *la;      /* [layers] or [1] */
  float *f_rstd;     /* [T] ln_f at the rows with a target */
  int logit_rows;    /* rows of logits computed at once */
  float *hsel, *dhsel, *logits; /* [T,H], [T,H], [chunk, V] */
  /* ---- backward scratch ---- */
  /* residual-stream gradients (d_res: of a block's output, d_next: of its input,
   * d_res2: inside a block), and block-internal gradients; each sized for the
   * larger of the ViT and the LLM */
  float *d_res, *d_next, *d_res2, *d_small, *d_qkv, *d_big;
  float *lora_scratch; /* nthreads * patches * lora_rmax */
  int lora_rmax;
  float *attn_scratch;
  size_t attn_scratch_per_thread;
  float *d_feat, *d_z, *d_o, *d_rctx, *dQ, *dK, *dV, *d_qin, *d_keys, *d_kvn, *d_kv, *d_pe_k, *d_vit;
  /* ---- accounting ---- */
  size_t arena_bytes; /* every activation and scratch buffer, allocated once */
  void *arena, *host_arena; /* backend memory; host metadata */
  double flops;      /* useful FLOPs of the last forward_backward (recomputation excluded) */
} model;

/* Sizes every buffer for micro-batches of at most max_samples samples,
 * max_tokens tokens in all and max_images images in all, in the memory of the
 * backend ops (NULL: the CPU), which runs every kernel of the model. */
int model_create(model *m, const vlm_backend *ops, const monkey_config *c, zero_state *z,
                 int max_samples, int max_tokens, int max_images, int recompute_vit,
                 int recompute_llm);
void model_free(model *m);

/* Number of targets (labels that some logit predicts: label t+1 != -100) of a
 * micro-batch, known before the forward so that ranks can agree on the
 * normaliser. */
long mb_count_targets(const mb_batch *b);

/* Forward and backward of one micro-batch: the gradient of
 * loss_scale * (sum of the token losses) is ACCUMULATED into this rank's
 * gradient shards (zero_state.grads). For the mean loss of a global batch the
 * caller passes loss_scale = 1 / (targets of the whole global micro-batch *
 * gradient_accumulation_steps). Returns the sum of the token losses and the
 * number of targets of this micro-batch. Every rank of a shard group must call
 * it the same number of times (it gathers collectively), even with no target. */
int model_forward_backward(model *m, const mb_batch *b, float loss_scale, double *loss_sum,
                           long *n_targets);

#endif
