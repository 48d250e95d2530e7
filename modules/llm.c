/* modules/llm.c: one Qwen LLM block, forward and backward, over the packed
 * tokens of a micro-batch (T rows; each sample is its own causal sequence with
 * positions from 0):
 *   x1 = x + c_proj(attention(rope(c_attn(rmsnorm_1(x)))))
 *   y  = x1 + mlp.c_proj(w1(h) * silu(w2(h))),  h = rmsnorm_2(x1)
 *
 * Output rows. With rows == NULL the block computes y at all T rows. With rows
 * (M ascending row indices, backend memory) it computes y only at those rows and
 * writes them compacted (y[i] = the output at row rows[i]): the keys and values
 * are still computed at every row, since every row's key and value reach the
 * selected rows through attention, but c_proj, the residual, rmsnorm_2 and the
 * MLP run on M rows. The model uses this for its last block, whose output
 * matters only at the rows that have a target: exact, and it drops most of the
 * last block's work when few rows have a target (the answer tokens of SFT data).
 * The queries matter only in each sequence's tail, from its first row with a
 * target on (m->seq_tail): with rows, the block computes q, and runs attention,
 * for those rows alone (causal attention with Tq < Tk, all keys present). Its
 * c_attn output is then laid out [k|v] (T x 2C) followed by q (T x C, only the
 * tail rows written) instead of [q|k|v] (T x 3C); split_qkv() says where.
 * The backward then takes dy compacted the same way and still writes dx at all
 * T rows. Scratch for the gathered rows: m->d_qkv, which no forward uses. */
#include <math.h>
#include <omp.h>

#include "modules/model_internal.h"

/* Where q, k and v of row 0 are in a c_attn output buffer (T x 3C floats) and
 * their row strides: [q|k|v] per row, or with tail [k|v] rows then q rows. */
typedef struct {
  float *q, *k, *v;
  int ldq, ldkv;
} qkv_split;

static qkv_split split_qkv(float *buf, int T, int H, int tail) {
  if (tail) return (qkv_split){buf + (size_t)2 * T * H, buf, buf + H, H, 2 * H};
  return (qkv_split){buf, buf + H, buf + 2 * H, 3 * H, 3 * H};
}

/* The attention of sequence sq: its queries from row *q0 on (0, or with tail its
 * first row with a target; Tq = 0 when it has none) against all its keys, which
 * start at row *t0 of the micro-batch. */
static attn_shape seq_shape(const model *m, int sq, int tail, int *t0, int *q0) {
  const int H = m->cfg->hidden_size, nh = m->cfg->num_attention_heads, D = m->cfg->head_dim;
  const int len = m->seq_start[sq + 1] - m->seq_start[sq];
  *t0 = m->seq_start[sq];
  *q0 = tail ? m->seq_tail[sq] : 0;
  attn_shape s = {.Tq = len - *q0, .Tk = len, .H = nh, .D = D, .ldq = tail ? H : 3 * H,
                  .ldk = tail ? 2 * H : 3 * H, .ldv = tail ? 2 * H : 3 * H, .hsq = D, .hsk = D,
                  .hsv = D, .causal = 1, .scale = 1.0f / sqrtf((float)D)};
  return s;
}

void llm_block_forward(model *m, int L, llm_acts *A, float *y, const float *x, int T, int n_seq,
                       const int *rows, int M, int count) {
  const monkey_config *c = m->cfg;
  const llm_block_w *b = &m->lb[L];
  const int H = c->hidden_size, FF = c->ffn, nh = c->num_attention_heads, D = c->head_dim;
  const float eps = (float)c->layer_norm_epsilon, base = (float)c->rotary_emb_base;
  const vlm_backend *ops = m->ops;

  ops->rmsnorm_forward(A->a, A->rstd1, x, b->ln1.w, T, H, eps);
  const int tail = rows != NULL;
  const qkv_split P = split_qkv(A->qkv, T, H, tail);
  if (!tail) {
    lin_fwd(m, count, A->qkv, A->a, b->c_attn_w, b->c_attn_b.w, T, H, 3 * H);
    /* q and k in one call: each row's k heads follow its q heads, so [q|k] is 2 nh heads
     * that share every position's angles (computed once for both). */
    ops->rope_forward(A->qkv, m->idx.pos_ids, T, 2 * nh, D, c->rotary_dim, 3 * H, base);
  } else { /* k|v at every row, q at the tails' rows */
    lin_fwd(m, count, P.k, A->a, rows_of(b->c_attn_w, (long)H * H), b->c_attn_b.w + H, T, H,
            2 * H);
    ops->rope_forward(P.k, m->idx.pos_ids, T, nh, D, c->rotary_dim, P.ldkv, base);
    for (int sq = 0; sq < n_seq; sq++) {
      int t0, q0;
      attn_shape s = seq_shape(m, sq, tail, &t0, &q0);
      if (s.Tq == 0) continue;
      const size_t r0 = (size_t)(t0 + q0);
      lin_fwd(m, count, P.q + r0 * H, A->a + r0 * H, rows_of(b->c_attn_w, 0), b->c_attn_b.w,
              s.Tq, H, H);
      ops->rope_forward(P.q + r0 * H, m->idx.pos_ids + r0, s.Tq, nh, D, c->rotary_dim, H, base);
    }
  }
  PAR_FOR(n_seq >= m->nthreads && ops->host_parallel, sq, n_seq, {
    int t0, q0;
    attn_shape s = seq_shape(m, sq, tail, &t0, &q0);
    const size_t r0 = (size_t)(t0 + q0);
    if (s.Tq > 0) /* lse of the sequence: [nh, Tq] from row t0's slot */
      ops->attention_forward(A->ctx + r0 * H, A->lse + (size_t)t0 * nh, P.q + r0 * P.ldq,
                             P.k + (size_t)t0 * P.ldkv, P.v + (size_t)t0 * P.ldkv, &s,
                             attn_scratch_for_thread(m, omp_get_thread_num()));
  });
  if (count)
    for (int sq = 0; sq < n_seq; sq++) {
      int t0, q0;
      attn_shape s = seq_shape(m, sq, tail, &t0, &q0);
      m->flops += attn_flops(&s);
    }
  /* from here on N rows: all T, or the M selected ones gathered */
  const float *ctx = A->ctx, *xr = x;
  int N = T;
  if (rows) {
    float *ctx_sel = m->d_qkv, *x_sel = m->d_qkv + (size_t)M * H; /* 2M*H <= 3T*H */
    if (M > 0) {
      ops->rows_copy(ctx_sel, NULL, A->ctx, rows, M, H);
      ops->rows_copy(x_sel, NULL, x, rows, M, H);
    }
    ctx = ctx_sel;
    xr = x_sel;
    N = M;
  }
  if (N == 0) return;
  lin_fwd(m, count, A->x1, ctx, b->c_proj, NULL, N, H, H);
  ops->add_into(A->x1, xr, (long)N * H);
  ops->rmsnorm_forward(A->c, A->rstd2, A->x1, b->ln2.w, N, H, eps);
  lin_fwd(m, count, A->u1, A->c, b->w1, NULL, N, H, FF);
  lin_fwd(m, count, A->u2, A->c, b->w2, NULL, N, H, FF);
  ops->swiglu_forward(A->s, A->u1, A->u2, (long)N * FF);
  lin_fwd(m, count, y, A->s, b->mlp_proj, NULL, N, FF, H);
  ops->add_into(y, A->x1, (long)N * H);
}

void llm_block_backward(model *m, int L, llm_acts *A, float *dx, const float *dy, const float *x,
                        int T, int n_seq, const int *rows, int M) {
  const monkey_config *c = m->cfg;
  const llm_block_w *b = &m->lb[L];
  const int H = c->hidden_size, FF = c->ffn, nh = c->num_attention_heads, D = c->head_dim;
  const float base = (float)c->rotary_emb_base;
  float *d_x1 = m->d_res2, *d_c = m->d_small;
  float *d_s = m->d_big, *d_u1 = d_s + (size_t)T * FF, *d_u2 = d_u1 + (size_t)T * FF;
  const vlm_backend *ops = m->ops;

  const int N = rows ? M : T; /* rows of dy, x1 and the MLP activations */
  if (N == 0) return;          /* no selected row: nothing reaches x or a weight */
  /* MLP branch */
  ops->copy(d_x1, dy, (size_t)N * H * sizeof(float));
  zero(m, d_s, (long)N * FF);
  lin_bwd(m, d_s, b->mlp_proj, NULL, dy, A->s, N, FF, H);
  zero(m, d_u1, (long)N * FF);
  zero(m, d_u2, (long)N * FF);
  ops->swiglu_backward(d_u1, d_u2, d_s, A->u1, A->u2, (long)N * FF);
  zero(m, d_c, (long)N * H);
  lin_bwd(m, d_c, b->w1, NULL, d_u1, A->c, N, H, FF);
  lin_bwd(m, d_c, b->w2, NULL, d_u2, A->c, N, H, FF);
  ops->rmsnorm_backward(d_x1, b->ln2.g, d_c, A->x1, b->ln2.w, A->rstd2, N, H);
  /* attention branch: d_ctx at all T rows (zero outside the selection) */
  float *d_ctx = d_c, *d_qkv = m->d_qkv;
  if (rows) {
    /* the caller zeroed dx: the residual's rows are its first contribution */
    if (dx) ops->rows_copy(dx, rows, d_x1, NULL, M, H);
    float *ctx_sel = d_qkv, *d_ctx_sel = d_qkv + (size_t)M * H;
    ops->rows_copy(ctx_sel, NULL, A->ctx, rows, M, H);
    zero(m, d_ctx_sel, (long)M * H);
    lin_bwd(m, d_ctx_sel, b->c_proj, NULL, d_x1, ctx_sel, M, H, H);
    zero(m, d_ctx, (long)T * H);
    ops->rows_copy(d_ctx, rows, d_ctx_sel, NULL, M, H);
  } else {
    if (dx) ops->add_into(dx, d_x1, (long)T * H);
    zero(m, d_ctx, (long)T * H);
    lin_bwd(m, d_ctx, b->c_proj, NULL, d_x1, A->ctx, T, H, H);
  }
  zero(m, d_qkv, (long)T * 3 * H);
  const int tail = rows != NULL;
  const qkv_split P = split_qkv(A->qkv, T, H, tail), dP = split_qkv(d_qkv, T, H, tail);
  PAR_FOR(n_seq >= m->nthreads && ops->host_parallel, sq, n_seq, {
    int t0, q0;
    attn_shape s = seq_shape(m, sq, tail, &t0, &q0);
    const size_t r0 = (size_t)(t0 + q0), k0 = (size_t)t0 * P.ldkv;
    if (s.Tq > 0)
      ops->attention_backward(dP.q + r0 * P.ldq, dP.k + k0, dP.v + k0, d_ctx + r0 * H,
                              A->ctx + r0 * H, A->lse + (size_t)t0 * nh, P.q + r0 * P.ldq,
                              P.k + k0, P.v + k0, &s,
                              attn_scratch_for_thread(m, omp_get_thread_num()));
  });
  for (int sq = 0; sq < n_seq; sq++) {
    int t0, q0;
    attn_shape s = seq_shape(m, sq, tail, &t0, &q0);
    m->flops += 2.0 * attn_flops(&s);
  }
  int need_da = dx || b->ln1.g;
  float *d_a = need_da ? m->d_small : NULL;
  if (d_a) zero(m, d_a, (long)T * H);
  if (!tail) {
    ops->rope_backward(d_qkv, m->idx.pos_ids, T, 2 * nh, D, c->rotary_dim, 3 * H, base); /* [q|k] */
    lin_bwd(m, d_a, b->c_attn_w, b->c_attn_b.g, d_qkv, A->a, T, H, 3 * H);
  } else {
    ops->rope_backward(dP.k, m->idx.pos_ids, T, nh, D, c->rotary_dim, dP.ldkv, base);
    float *db = b->c_attn_b.g;
    lin_bwd(m, d_a, rows_of(b->c_attn_w, (long)H * H), db ? db + H : NULL, dP.k, A->a, T, H,
            2 * H);
    for (int sq = 0; sq < n_seq; sq++) {
      int t0, q0;
      attn_shape s = seq_shape(m, sq, tail, &t0, &q0);
      if (s.Tq == 0) continue;
      const size_t r0 = (size_t)(t0 + q0);
      ops->rope_backward(dP.q + r0 * H, m->idx.pos_ids + r0, s.Tq, nh, D, c->rotary_dim, H, base);
      lin_bwd(m, d_a ? d_a + r0 * H : NULL, rows_of(b->c_attn_w, 0), db, dP.q + r0 * H,
              A->a + r0 * H, s.Tq, H, H);
    }
  }
  if (need_da) ops->rmsnorm_backward(dx, b->ln1.g, d_a, x, b->ln1.w, A->rstd1, T, H);
}
