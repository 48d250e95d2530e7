/* modules/resampler.c: the visual resampler (attn_pool) and what follows it
 * (ln_post, x @ proj), forward and backward, over all views of a micro-batch.
 * Per view: keys = ln_kv(kv_proj(x)) + pos_embed interpolated to the patch
 * grid, values = ln_kv(kv_proj(x)), queries = ln_q(query) + pos_embed; one
 * nn.MultiheadAttention ([Wq; Wk; Wv] stacked in in_proj_weight). The queries
 * are the same for every view, so Q is computed once. */
#include <math.h>
#include <omp.h>

#include "modules/model_internal.h"

static attn_shape resampler_shape(const model *m) {
  const visual_config *v = &m->cfg->visual;
  const int E = v->output_dim, hr = v->resampler_heads, dr = E / hr;
  attn_shape s = {.Tq = v->n_queries, .Tk = v->n_patches, .H = hr, .D = dr, .ldq = E, .ldk = E,
                  .ldv = E, .hsq = dr, .hsk = dr, .hsv = dr, .causal = 0,
                  .scale = 1.0f / sqrtf((float)dr)};
  return s;
}

void resampler_forward(model *m, int n_views) {
  const visual_config *v = &m->cfg->visual;
  const int W = v->width, E = v->output_dim, NP = v->n_patches, nq = v->n_queries;
  const int G = v->grid, qg = v->query_grid, hr = v->resampler_heads;
  const int N = n_views * NP, NQ = n_views * nq;
  const float *h = m->vit_in[v->layers];
  const long EE = (long)E * E;
  const vlm_backend *ops = m->ops;

  const float *kv = h;
  if (m->kv_proj.w) {
    lin_fwd(m, 1, m->kv, h, m->kv_proj, NULL, N, W, E);
    kv = m->kv;
  }
  ops->layernorm_forward(m->kvn, m->kv_mean, m->kv_rstd, kv, m->ln_kv_w.w, m->ln_kv_b.w, N, E, 1e-6f);
  if (qg == G)
    ops->copy(m->pe_k, m->rpos.w, (size_t)NP * E * sizeof(float));
  else
    ops->bicubic_resize_forward(m->pe_k, m->rpos.w, qg, qg, G, G, E, m->resize_tmp);
  /* keys = kvn + pe_k (the same table for every view) */
  ops->copy(m->keys, m->kvn, (size_t)N * E * sizeof(float));
  ops->add_rows_bcast(m->keys, m->pe_k, N, NP, E);
  ops->layernorm_forward(m->qn, m->q_mean, m->q_rstd, m->rq.w, m->ln_q_w.w, m->ln_q_b.w, nq, E, 1e-6f);
  ops->add_vec(m->q_in, m->qn, m->rpos.w, (long)nq * E);
  lin_fwd(m, 1, m->Q, m->q_in, rows_of(m->r_in_w, 0), m->r_in_b.w, nq, E, E);
  lin_fwd(m, 1, m->K, m->keys, rows_of(m->r_in_w, EE), m->r_in_b.w + E, N, E, E);
  lin_fwd(m, 1, m->V, m->kvn, rows_of(m->r_in_w, 2 * EE), m->r_in_b.w + 2 * E, N, E, E);
  attn_shape s = resampler_shape(m);
  PAR_FOR(views_in_parallel(m, n_views), vi, n_views, {
    ops->attention_forward(m->r_ctx + (size_t)vi * nq * E, m->r_lse + (size_t)vi * hr * nq, m->Q,
                           m->K + (size_t)vi * NP * E, m->V + (size_t)vi * NP * E, &s,
                           attn_scratch_for_thread(m, omp_get_thread_num()));
  });
  m->flops += n_views * attn_flops(&s);
  lin_fwd(m, 1, m->r_o, m->r_ctx, m->r_out_w, m->r_out_b.w, NQ, E, E);
  ops->layernorm_forward(m->zpost, m->post_mean, m->post_rstd, m->r_o, m->ln_post_w.w, m->ln_post_b.w, NQ, E,
                    1e-6f);
  ops->matmul_forward(m->feat, m->zpost, m->proj.w, NQ, E, E);
  m->flops += 2.0 * NQ * E * E;
}

void resampler_backward(model *m, int n_views) {
  const visual_config *v = &m->cfg->visual;
  const int W = v->width, E = v->output_dim, NP = v->n_patches, nq = v->n_queries;
  const int G = v->grid, qg = v->query_grid, hr = v->resampler_heads;
  const int N = n_views * NP, NQ = n_views * nq;
  const float *h = m->vit_in[v->layers];
  const long EE = (long)E * E;
  const int need_vit = m->vit_lowest < v->layers;
  const vlm_backend *ops = m->ops;

  /* feat = z @ proj; z = ln_post(o); o = out_proj(ctx) */
  zero(m, m->d_z, (long)NQ * E);
  ops->matmul_backward(m->d_z, m->proj.g, m->d_feat, m->zpost, m->proj.w, NQ, E, E);
  m->flops += 2.0 * NQ * E * E * (1 + (m->proj.g != NULL));
  zero(m, m->d_o, (long)NQ * E);
  ops->layernorm_backward(m->d_o, m->ln_post_w.g, m->ln_post_b.g, m->d_z, m->r_o, m->ln_post_w.w,
                     m->post_mean, m->post_rstd, NQ, E);
  zero(m, m->d_rctx, (long)NQ * E);
  lin_bwd(m, m->d_rctx, m->r_out_w, m->r_out_b.g, m->d_o, m->r_ctx, NQ, E, E);
  /* attention, per view; each view gets its own dQ slice, summed afterwards */
  zero(m, m->dQ, (long)n_views * nq * E);
  zero(m, m->dK, (long)N * E);
  zero(m, m->dV, (long)N * E);
  attn_shape s = resampler_shape(m);
  PAR_FOR(views_in_parallel(m, n_views), vi, n_views, {
    ops->attention_backward(m->dQ + (size_t)vi * nq * E, m->dK + (size_t)vi * NP * E,
                            m->dV + (size_t)vi * NP * E, m->d_rctx + (size_t)vi * nq * E,
                            m->r_ctx + (size_t)vi * nq * E, m->r_lse + (size_t)vi * hr * nq, m->Q,
                            m->K + (size_t)vi * NP * E, m->V + (size_t)vi * NP * E, &s,
                            attn_scratch_for_thread(m, omp_get_thread_num()));
  });
  m->flops += 2.0 * n_views * attn_flops(&s);
  /* dQ of view 0 += dQ of views 1, 2, ... (in view order) */
  if (n_views > 1)
    ops->rows_segment_add(m->dQ, m->idx.iota, m->dQ + (size_t)nq * E, m->idx.qsum_rows,
                          m->idx.qsum_seg, nq, E);
  /* Q = q_in Wq^T + bq; K = keys Wk^T + bk; V = kvn Wv^T + bv */
  float *dbq = m->r_in_b.g, *dbk = dbq ? dbq + E : NULL, *dbv = dbq ? dbq + 2 * E : NULL;
  zero(m, m->d_qin, (long)nq * E);
  lin_bwd(m, m->d_qin, rows_of(m->r_in_w, 0), dbq, m->dQ, m->q_in, nq, E, E);
  zero(m, m->d_keys, (long)N * E);
  lin_bwd(m, m->d_keys, rows_of(m->r_in_w, EE), dbk, m->dK, m->keys, N, E, E);
  zero(m, m->d_kvn, (long)N * E);
  lin_bwd(m, m->d_kvn, rows_of(m->r_in_w, 2 * EE), dbv, m->dV, m->kvn, N, E, E);
  ops->add_into(m->d_kvn, m->d_keys, (long)N * E);
  /* positional table: added to the queries directly, to the keys interpolated */
  if (m->rpos.g) {
    ops->add_into(m->rpos.g, m->d_qin, (long)nq * E);
    zero(m, m->d_pe_k, (long)NP * E);
    ops->rows_segment_add(m->d_pe_k, m->idx.iota, m->d_keys, m->idx.vsum_rows, m->idx.vsum_seg, NP,
                          E);
    if (qg == G)
      ops->add_into(m->rpos.g, m->d_pe_k, (long)NP * E);
    else
      ops->bicubic_resize_backward(m->rpos.g, m->d_pe_k, qg, qg, G, G, E, m->resize_tmp);
  }
  /* queries: q_in = ln_q(query) + pos_embed */
  ops->layernorm_backward(m->rq.g, m->ln_q_w.g, m->ln_q_b.g, m->d_qin, m->rq.w, m->ln_q_w.w, m->q_mean,
                     m->q_rstd, nq, E);
  /* keys/values: kvn = ln_kv(kv), kv = kv_proj(h) or h */
  const int need_dkv = need_vit || m->kv_proj.g;
  if (!need_dkv) {
    ops->layernorm_backward(NULL, m->ln_kv_w.g, m->ln_kv_b.g, m->d_kvn, m->kv_proj.w ? m->kv : h,
                       m->ln_kv_w.w, m->kv_mean, m->kv_rstd, N, E);
    return;
  }
  float *d_kv = m->kv_proj.w ? m->d_kv : m->d_vit;
  zero(m, d_kv, (long)N * E);
  ops->layernorm_backward(d_kv, m->ln_kv_w.g, m->ln_kv_b.g, m->d_kvn, m->kv_proj.w ? m->kv : h,
                     m->ln_kv_w.w, m->kv_mean, m->kv_rstd, N, E);
  if (m->kv_proj.w) {
    /* d_vit is needed at the views the ViT's last block takes backward, while
     * kv_proj's weight gradient sums over every view. */
    const int n_vit = vit_backward_views(m, v->layers - 1, n_views) * NP;
    if (need_vit) zero(m, m->d_vit, (long)N * W);
    if (need_vit && n_vit < N) {
      lin_bwd(m, NULL, m->kv_proj, NULL, d_kv, h, N, W, E);
      wp frozen = m->kv_proj;
      frozen.g = NULL;
      lin_bwd(m, m->d_vit, frozen, NULL, d_kv, h, n_vit, W, E);
    } else {
      lin_bwd(m, need_vit ? m->d_vit : NULL, m->kv_proj, NULL, d_kv, h, N, W, E);
    }
  }
}
