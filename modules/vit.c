/* modules/vit.c: the ViT of Monkey, forward and backward: image normalisation,
 * windows and the global view, patch embedding, positional embedding, ln_pre
 * (the stem), and the residual blocks with per-window LoRA adapters on in_proj,
 * out_proj and (fed the un-normalised residual) the MLP. All views of all
 * images of a micro-batch are processed together: N = views * patches rows, the
 * views stored windows first (image 0's windows, image 1's, ...), then the global
 * views of every image, so that a backward over the windows alone is a prefix. */
#include <math.h>
#include <omp.h>

#include "modules/model_internal.h"

static const float CLIP_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float CLIP_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};

/* LoRA set of view vi, or -1 for a global view. */
static int view_lora(const model *m, int vi) {
  int nw = m->cfg->visual.n_windows;
  return vi < m->n_img * nw ? vi % nw : -1;
}

/* y[view rows] += LoRA(x[view rows]) for every windowed view (the first
 * n_img * n_windows), each with its window's set; t keeps the rank-r products. */
static void lora_views_forward(model *m, float *y, float *t, const float *x, int rank,
                               const wp *A, const wp *B, const wp *S, int K, int O) {
  const int NP = m->cfg->visual.n_patches, n_win = m->n_img * m->cfg->visual.n_windows;
  PAR_FOR(n_win > 1 && m->ops->host_parallel, vi, n_win, {
    int k = view_lora(m, vi);
    size_t o = (size_t)vi * NP;
    m->ops->lora_forward(y + o * O, t + o * rank, x + o * K, A[k].w, B[k].w, S[k].w, NP, K, O,
                         rank);
  });
}

void vit_stem_forward(model *m, int n_images) {
  const visual_config *v = &m->cfg->visual;
  const vlm_backend *ops = m->ops;
  const int S = v->image_size, w = v->window_size, p = v->patch_size, W = v->width;
  const int nv = v->n_windows + 1, NP = v->n_patches, G = v->grid, ps = v->windows_per_side;
  const int N = n_images * nv * NP, KP = 3 * p * p;
  (void)S;
  /* 1. windows of the normalised image, and the global view */
  for (int i = 0; i < n_images; i++) {
    const float *img = m->img + (size_t)i * S * S * 3;
    float *glob = m->glob + (size_t)i * w * w * 3;
    ops->bicubic_resize_forward(glob, img, S, S, w, w, 3, m->resize_tmp);
    for (int k = 0; k < nv; k++) {
      int vi = k < v->n_windows ? i * v->n_windows + k : n_images * v->n_windows + i;
      float *cols = m->cols + (size_t)vi * NP * KP;
      if (k < v->n_windows)
        ops->patch_im2col(cols, img, S, S, (k / ps) * w, (k % ps) * w, w, p);
      else
        ops->patch_im2col(cols, glob, w, w, 0, 0, w, p);
    }
  }
  /* 2. patch embedding (conv1 as a GEMM) + interpolated positional embedding */
  lin_fwd(m, 1, m->x0, m->cols, m->conv1, NULL, N, KP, W);
  if (G == 16)
    ops->copy(m->pe, m->pos.w, (size_t)NP * W * sizeof(float));
  else
    ops->bicubic_resize_forward(m->pe, m->pos.w, 16, 16, G, G, W, m->resize_tmp);
  ops->add_rows_bcast(m->x0, m->pe, N, NP, W); /* the same table for every view */
  /* 3. ln_pre */
  ops->layernorm_forward(m->vit_in[0], m->pre_mean, m->pre_rstd, m->x0, m->ln_pre_w.w, m->ln_pre_b.w, N,
                    W, 1e-6f);
}

void vit_stem_backward(model *m, const float *d_h0, int n_images) {
  const visual_config *v = &m->cfg->visual;
  const int p = v->patch_size, W = v->width, nv = v->n_windows + 1, NP = v->n_patches, G = v->grid;
  const int N = n_images * nv * NP, KP = 3 * p * p;
  int need_x0 = m->pos.g || m->conv1.g;
  float *d_x0 = m->d_small;
  if (need_x0) zero(m, d_x0, (long)N * W);
  m->ops->layernorm_backward(need_x0 ? d_x0 : NULL, m->ln_pre_w.g, m->ln_pre_b.g, d_h0, m->x0, m->ln_pre_w.w,
                     m->pre_mean, m->pre_rstd, N, W);
  if (m->pos.g) { /* the same table is added to every view: sum, then resize^T */
    float *d_pe = m->d_qkv;
    zero(m, d_pe, (long)NP * W);
    m->ops->rows_segment_add(d_pe, m->idx.iota, d_x0, m->idx.vsum_rows, m->idx.vsum_seg, NP, W);
    if (G == 16)
      m->ops->add_into(m->pos.g, d_pe, (long)NP * W);
    else
      m->ops->bicubic_resize_backward(m->pos.g, d_pe, 16, 16, G, G, W, m->resize_tmp);
  }
  lin_bwd(m, NULL, m->conv1, NULL, d_x0, m->cols, N, KP, W);
}

void vit_block_forward(model *m, int L, vit_acts *A, float *y, const float *x, int n_views,
                       int count) {
  const visual_config *v = &m->cfg->visual;
  const vit_block_w *b = &m->vb[L];
  const int W = v->width, F = v->mlp_width, NP = v->n_patches, N = n_views * NP;
  const int r = v->lora_rank, r2 = v->lora_mlp_rank, hv = v->heads, dv = v->head_dim;
  const vlm_backend *ops = m->ops;

  ops->layernorm_forward(A->a, A->mean1, A->rstd1, x, b->ln1_w.w, b->ln1_b.w, N, W, 1e-6f);
  lin_fwd(m, count, A->qkv, A->a, b->in_w, b->in_b.w, N, W, 3 * W);
  lora_views_forward(m, A->qkv, A->t_in, A->a, r, b->lora_in_a, b->lora_in_b, b->lora_in_s, W,
                     3 * W);
  attn_shape s = {.Tq = NP, .Tk = NP, .H = hv, .D = dv, .ldq = 3 * W, .ldk = 3 * W, .ldv = 3 * W,
                  .hsq = 3 * dv, .hsk = 3 * dv, .hsv = 3 * dv, .causal = 0,
                  .scale = 1.0f / sqrtf((float)dv)};
  PAR_FOR(views_in_parallel(m, n_views), vi, n_views, {
    const float *q = A->qkv + (size_t)vi * NP * 3 * W;
    ops->attention_forward(A->ctx + (size_t)vi * NP * W, A->lse + (size_t)vi * hv * NP, q, q + dv,
                      q + 2 * dv, &s, attn_scratch_for_thread(m, omp_get_thread_num()));
  });
  if (count) m->flops += n_views * attn_flops(&s);
  /* x1 = x + out_proj(ctx) + lora_out(ctx) */
  lin_fwd(m, count, A->x1, A->ctx, b->out_w, b->out_b.w, N, W, W);
  lora_views_forward(m, A->x1, A->t_out, A->ctx, r, b->lora_out_a, b->lora_out_b, b->lora_out_s,
                     W, W);
  ops->add_into(A->x1, x, (long)N * W);
  /* y = x1 + mlp(ln_2(x1)) + mlp_lora(x1) */
  ops->layernorm_forward(A->c, A->mean2, A->rstd2, A->x1, b->ln2_w.w, b->ln2_b.w, N, W, 1e-6f);
  lin_fwd(m, count, A->f, A->c, b->fc_w, b->fc_b.w, N, W, F);
  ops->gelu_forward(A->g, A->f, (long)N * F);
  lin_fwd(m, count, y, A->g, b->proj_w, b->proj_b.w, N, F, W);
  lora_views_forward(m, y, A->t_mlp, A->x1, r2, b->lora_mlp_a, b->lora_mlp_b, b->lora_mlp_s, W,
                     W);
  ops->add_into(y, A->x1, (long)N * W);
  if (count) /* LoRA FLOPs: two thin GEMMs per adapter per view */
    m->flops += 2.0 * n_views * v->n_windows / (v->n_windows + 1) * NP *
                ((double)r * (W + 3 * W) + (double)r * (W + W) + (double)r2 * (W + W));
}

/* LoRA backward for every windowed view (the first n_img * n_windows views),
 * parallel over LoRA sets (so that no two threads accumulate into the same
 * adapter's gradients). */
static void lora_views_backward(model *m, float *dx, int ldx, const float *dy, int ldy,
                                const float *x, const float *t, int rank, const wp *A, const wp *B,
                                const wp *S, int K, int O) {
  const visual_config *v = &m->cfg->visual;
  const int NP = v->n_patches, nw = v->n_windows, n_win_views = m->n_img * nw;
  PAR_FOR(v->n_windows > 1 && m->ops->host_parallel, k, v->n_windows, {
    float *scratch = m->lora_scratch + (size_t)omp_get_thread_num() * NP * m->lora_rmax;
    for (int vi = k; vi < n_win_views; vi += nw) {
      size_t o = (size_t)vi * NP;
      m->ops->lora_backward(dx ? dx + o * ldx : NULL, A[k].g, B[k].g, S[k].g, dy + o * ldy, x + o * K,
                    t + o * rank, A[k].w, B[k].w, S[k].w, NP, K, O, rank, scratch);
    }
  });
  long windowed = n_win_views;
  m->flops += 2.0 * windowed * NP * rank * (O + (A[0].g ? K : 0) + (B[0].g ? O : 0) + (dx ? K : 0));
}

void vit_block_backward(model *m, int L, vit_acts *A, float *dx, const float *dy, const float *x,
                        int n_views) {
  const visual_config *v = &m->cfg->visual;
  const vit_block_w *b = &m->vb[L];
  const int W = v->width, F = v->mlp_width, NP = v->n_patches, N = n_views * NP;
  const int r = v->lora_rank, r2 = v->lora_mlp_rank, hv = v->heads, dv = v->head_dim;
  float *d_x1 = m->d_res2, *d_c = m->d_small, *d_g = m->d_big, *d_f = m->d_big + (size_t)N * F;
  const vlm_backend *ops = m->ops;

  /* MLP branch: y = x1 + proj(gelu(fc(ln_2(x1)))) + mlp_lora(x1) */
  ops->copy(d_x1, dy, (size_t)N * W * sizeof(float));
  zero(m, d_g, (long)N * F);
  lin_bwd(m, d_g, b->proj_w, b->proj_b.g, dy, A->g, N, F, W);
  zero(m, d_f, (long)N * F);
  ops->gelu_backward(d_f, d_g, A->f, (long)N * F);
  zero(m, d_c, (long)N * W);
  lin_bwd(m, d_c, b->fc_w, b->fc_b.g, d_f, A->c, N, W, F);
  ops->layernorm_backward(d_x1, b->ln2_w.g, b->ln2_b.g, d_c, A->x1, b->ln2_w.w, A->mean2, A->rstd2, N, W);
  lora_views_backward(m, d_x1, W, dy, W, A->x1, A->t_mlp, r2, b->lora_mlp_a, b->lora_mlp_b,
                      b->lora_mlp_s, W, W);
  /* attention branch: x1 = x + out_proj(ctx) + lora_out(ctx) */
  int need_da = dx || b->ln1_w.g || b->ln1_b.g;
  if (dx) ops->add_into(dx, d_x1, (long)N * W);
  float *d_ctx = d_c;
  zero(m, d_ctx, (long)N * W);
  lin_bwd(m, d_ctx, b->out_w, b->out_b.g, d_x1, A->ctx, N, W, W);
  lora_views_backward(m, d_ctx, W, d_x1, W, A->ctx, A->t_out, r, b->lora_out_a, b->lora_out_b,
                      b->lora_out_s, W, W);
  float *d_qkv = m->d_qkv;
  zero(m, d_qkv, (long)N * 3 * W);
  attn_shape s = {.Tq = NP, .Tk = NP, .H = hv, .D = dv, .ldq = 3 * W, .ldk = 3 * W, .ldv = 3 * W,
                  .hsq = 3 * dv, .hsk = 3 * dv, .hsv = 3 * dv, .causal = 0,
                  .scale = 1.0f / sqrtf((float)dv)};
  PAR_FOR(views_in_parallel(m, n_views), vi, n_views, {
    size_t o3 = (size_t)vi * NP * 3 * W;
    const float *q = A->qkv + o3;
    float *dq = d_qkv + o3;
    ops->attention_backward(dq, dq + dv, dq + 2 * dv, d_ctx + (size_t)vi * NP * W,
                       A->ctx + (size_t)vi * NP * W, A->lse + (size_t)vi * hv * NP, q, q + dv,
                       q + 2 * dv, &s, attn_scratch_for_thread(m, omp_get_thread_num()));
  });
  m->flops += 2.0 * n_views * attn_flops(&s);
  /* qkv = in_proj(a) + lora_in(a), a = ln_1(x) */
  float *d_a = need_da ? m->d_small : NULL;
  if (d_a) zero(m, d_a, (long)N * W);
  lin_bwd(m, d_a, b->in_w, b->in_b.g, d_qkv, A->a, N, W, 3 * W);
  lora_views_backward(m, d_a, W, d_qkv, 3 * W, A->a, A->t_in, r, b->lora_in_a, b->lora_in_b,
                      b->lora_in_s, W, 3 * W);
  if (need_da)
    ops->layernorm_backward(dx, b->ln1_w.g, b->ln1_b.g, d_a, x, b->ln1_w.w, A->mean1, A->rstd1, N, W);
}

/* Uploads the batch's uint8 RGB images and normalises them into m->img (HWC
 * fp32, CLIP mean/std). */
void vit_load_pixels(model *m, const uint8_t *pixels, int n_images) {
  const int S = m->cfg->visual.image_size;
  const long n = (long)n_images * S * S;
  m->ops->upload(m->px, pixels, (size_t)n * 3);
  m->ops->image_normalize(m->img, m->px, n, CLIP_MEAN, CLIP_STD);
}
