/* modules/model.c: set-up of the Monkey model (parameter pointers resolved by
 * name, every activation buffer sized once in the backend's memory) and one
 * micro-batch's forward and backward: ViT views -> resampler -> features
 * spliced into the token embeddings -> LLM -> shifted cross-entropy on the
 * target positions only -> backward in reverse, with optional per-block
 * recomputation. The host reads only the batch (tokens, labels), from which
 * modules/batch.c builds the index arrays the kernels need (mb_index); tensors
 * are touched by the backend's kernels only. */
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/vlm.h"
#include "modules/model_internal.h"

/* ---- set-up ------------------------------------------------------------ */

static int resolve(model *m, wp *out, int optional, const char *fmt, ...) {
  char name[REG_NAME_LEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  out->w = NULL;
  out->g = NULL;
  out->idx = registry_find(m->reg, name);
  if (out->idx < 0) {
    if (optional) return 0;
    VLM_FAIL("model: parameter \"%s\" is not in the registry", name);
  }
  m->slots[m->n_slots] = out;
  m->slot_mod[m->n_slots] = m->reg->p[out->idx].module;
  m->n_slots++;
  return 0;
}

/* Is this parameter trainable? (its gradient pointer is bound only during backward) */
static int tr(const model *m, const wp *w) { return w->idx >= 0 && m->reg->p[w->idx].trainable; }

static int module_id(const model *m, const char *fmt, int arg) {
  char name[64];
  snprintf(name, sizeof name, fmt, arg);
  for (int k = 0; k < m->reg->n_modules; k++)
    if (strcmp(m->reg->modules[k].name, name) == 0) return k;
  return -1;
}

/* Points module k's parameters (and gradients, inside its backward) at the
 * gathered data. */
static void bind(model *m, int k) {
  for (int i = 0; i < m->n_slots; i++)
    if (m->slot_mod[i] == k) {
      m->slots[i]->w = zero_full(m->z, m->slots[i]->idx);
      m->slots[i]->g = zero_full_grad(m->z, m->slots[i]->idx);
    }
}

static void acquire(model *m, int k, int next, int grads) {
  zero_fetch(m->z, k);
  if (grads) zero_grad_begin(m->z, k);
  bind(m, k);
  zero_prefetch(m->z, next);
}

static void release(model *m, int k, int grads) {
  if (grads) zero_grad_end(m->z, k);
  zero_release(m->z, k);
  for (int i = 0; i < m->n_slots; i++)
    if (m->slot_mod[i] == k) m->slots[i]->g = NULL;
}

static int resolve_all(model *m) {
  const visual_config *v = &m->cfg->visual;
  const char *vit = "transformer.visual";
  VLM_CHECK(resolve(m, &m->conv1, 0, "%s.conv1.weight", vit));
  VLM_CHECK(resolve(m, &m->pos, 0, "%s.positional_embedding", vit));
  VLM_CHECK(resolve(m, &m->ln_pre_w, 0, "%s.ln_pre.weight", vit));
  VLM_CHECK(resolve(m, &m->ln_pre_b, 0, "%s.ln_pre.bias", vit));
  m->vit_lowest = v->layers;
  m->vit_trunk_lowest = v->layers;
  if (tr(m, &m->conv1) || tr(m, &m->pos) || tr(m, &m->ln_pre_w) || tr(m, &m->ln_pre_b))
    m->vit_lowest = m->vit_trunk_lowest = -1;
  for (int L = 0; L < v->layers; L++) {
    vit_block_w *b = &m->vb[L];
    char p[96];
    snprintf(p, sizeof p, "%s.transformer.resblocks.%d", vit, L);
    VLM_CHECK(resolve(m, &b->ln1_w, 0, "%s.ln_1.weight", p));
    VLM_CHECK(resolve(m, &b->ln1_b, 0, "%s.ln_1.bias", p));
    VLM_CHECK(resolve(m, &b->in_w, 0, "%s.attn.in_proj.weight", p));
    VLM_CHECK(resolve(m, &b->in_b, 0, "%s.attn.in_proj.bias", p));
    VLM_CHECK(resolve(m, &b->out_w, 0, "%s.attn.out_proj.weight", p));
    VLM_CHECK(resolve(m, &b->out_b, 0, "%s.attn.out_proj.bias", p));
    VLM_CHECK(resolve(m, &b->ln2_w, 0, "%s.ln_2.weight", p));
    VLM_CHECK(resolve(m, &b->ln2_b, 0, "%s.ln_2.bias", p));
    VLM_CHECK(resolve(m, &b->fc_w, 0, "%s.mlp.c_fc.weight", p));
    VLM_CHECK(resolve(m, &b->fc_b, 0, "%s.mlp.c_fc.bias", p));
    VLM_CHECK(resolve(m, &b->proj_w, 0, "%s.mlp.c_proj.weight", p));
    VLM_CHECK(resolve(m, &b->proj_b, 0, "%s.mlp.c_proj.bias", p));
    for (int k = 0; k < v->lora_repeat_num; k++) {
      VLM_CHECK(resolve(m, &b->lora_in_a[k], 0, "%s.attn.in_proj_lora.%d.lora_a.weight", p, k));
      VLM_CHECK(resolve(m, &b->lora_in_b[k], 0, "%s.attn.in_proj_lora.%d.lora_b.weight", p, k));
      VLM_CHECK(resolve(m, &b->lora_in_s[k], 0, "%s.attn.in_proj_lora.%d.lora_scale", p, k));
      VLM_CHECK(resolve(m, &b->lora_out_a[k], 0, "%s.attn.out_proj_lora.%d.lora_a.weight", p, k));
      VLM_CHECK(resolve(m, &b->lora_out_b[k], 0, "%s.attn.out_proj_lora.%d.lora_b.weight", p, k));
      VLM_CHECK(resolve(m, &b->lora_out_s[k], 0, "%s.attn.out_proj_lora.%d.lora_scale", p, k));
      VLM_CHECK(resolve(m, &b->lora_mlp_a[k], 0, "%s.mlp_lora.%d.lora_a.weight", p, k));
      VLM_CHECK(resolve(m, &b->lora_mlp_b[k], 0, "%s.mlp_lora.%d.lora_b.weight", p, k));
      VLM_CHECK(resolve(m, &b->lora_mlp_s[k], 0, "%s.mlp_lora.%d.lora_scale", p, k));
    }
    const module_info *mod = &m->reg->modules[m->mod_vit0 + L];
    for (int i = mod->first; i < mod->first + mod->count; i++)
      if (m->reg->p[i].trainable) b->needs_grad = 1;
    if (b->needs_grad && m->vit_lowest > L) m->vit_lowest = L;
    const wp *trunk[] = {&b->ln1_w, &b->ln1_b, &b->in_w,  &b->in_b,  &b->out_w,  &b->out_b,
                         &b->ln2_w, &b->ln2_b, &b->fc_w, &b->fc_b, &b->proj_w, &b->proj_b};
    for (size_t i = 0; i < sizeof trunk / sizeof trunk[0]; i++)
      if (tr(m, trunk[i]) && m->vit_trunk_lowest > L) m->vit_trunk_lowest = L;
  }
  const char *ap = "transformer.visual.attn_pool";
  VLM_CHECK(resolve(m, &m->rq, 0, "%s.query", ap));
  VLM_CHECK(resolve(m, &m->rpos, 0, "%s.pos_embed", ap));
  VLM_CHECK(resolve(m, &m->kv_proj, 1, "%s.kv_proj.weight", ap));
  VLM_CHECK(resolve(m, &m->r_in_w, 0, "%s.attn.in_proj_weight", ap));
  VLM_CHECK(resolve(m, &m->r_in_b, 0, "%s.attn.in_proj_bias", ap));
  VLM_CHECK(resolve(m, &m->r_out_w, 0, "%s.attn.out_proj.weight", ap));
  VLM_CHECK(resolve(m, &m->r_out_b, 0, "%s.attn.out_proj.bias", ap));
  VLM_CHECK(resolve(m, &m->ln_q_w, 0, "%s.ln_q.weight", ap));
  VLM_CHECK(resolve(m, &m->ln_q_b, 0, "%s.ln_q.bias", ap));
  VLM_CHECK(resolve(m, &m->ln_kv_w, 0, "%s.ln_kv.weight", ap));
  VLM_CHECK(resolve(m, &m->ln_kv_b, 0, "%s.ln_kv.bias", ap));
  VLM_CHECK(resolve(m, &m->ln_post_w, 0, "%s.ln_post.weight", vit));
  VLM_CHECK(resolve(m, &m->ln_post_b, 0, "%s.ln_post.bias", vit));
  VLM_CHECK(resolve(m, &m->proj, 0, "%s.proj", vit));
  m->vit_needs_grad = m->vit_lowest < v->layers;
  const wp *vis[] = {&m->rq, &m->rpos, &m->kv_proj, &m->r_in_w, &m->r_in_b, &m->r_out_w,
                     &m->r_out_b, &m->ln_q_w, &m->ln_q_b, &m->ln_kv_w, &m->ln_kv_b,
                     &m->ln_post_w, &m->ln_post_b, &m->proj};
  for (size_t i = 0; i < sizeof vis / sizeof vis[0]; i++)
    if (tr(m, vis[i])) m->vit_needs_grad = 1;

  VLM_CHECK(resolve(m, &m->wte, 0, "transformer.wte.weight"));
  for (int L = 0; L < m->cfg->num_hidden_layers; L++) {
    llm_block_w *b = &m->lb[L];
    VLM_CHECK(resolve(m, &b->ln1, 0, "transformer.h.%d.ln_1.weight", L));
    VLM_CHECK(resolve(m, &b->c_attn_w, 0, "transformer.h.%d.attn.c_attn.weight", L));
    VLM_CHECK(resolve(m, &b->c_attn_b, 0, "transformer.h.%d.attn.c_attn.bias", L));
    VLM_CHECK(resolve(m, &b->c_proj, 0, "transformer.h.%d.attn.c_proj.weight", L));
    VLM_CHECK(resolve(m, &b->ln2, 0, "transformer.h.%d.ln_2.weight", L));
    VLM_CHECK(resolve(m, &b->w1, 0, "transformer.h.%d.mlp.w1.weight", L));
    VLM_CHECK(resolve(m, &b->w2, 0, "transformer.h.%d.mlp.w2.weight", L));
    VLM_CHECK(resolve(m, &b->mlp_proj, 0, "transformer.h.%d.mlp.c_proj.weight", L));
  }
  VLM_CHECK(resolve(m, &m->ln_f, 0, "transformer.ln_f.weight"));
  VLM_CHECK(resolve(m, &m->lm_head, 0, "lm_head.weight"));
  return 0;
}

/* All buffers come from one bump allocator over a single allocation, so the
 * set-up either fully succeeds or fails once, and freeing is one call. */
typedef struct {
  char *base;
  size_t used, cap;
} arena;

static void *take(arena *a, size_t bytes) {
  size_t r = (bytes + 63) / 64 * 64;
  if (r == 0) r = 64;
  void *p = a->base ? a->base + a->used : NULL;
  a->used += r;
  return p;
}
#define TAKEF(a, n) ((float *)take((a), (size_t)(n) * sizeof(float)))
#define TAKEI(a, n) ((int *)take((a), (size_t)(n) * sizeof(int)))

static size_t lmax(size_t a, size_t b) { return a > b ? a : b; }

/* The index arrays of a micro-batch, one contiguous block (same layout in the
 * backend arena and in the host mirror). */
static void carve_index(const model *m, mb_index *x, arena *a) {
  const visual_config *v = &m->cfg->visual;
  const size_t T = m->max_tokens, NP = v->n_patches, nq = v->n_queries;
  const size_t NV = (size_t)m->max_images * (v->n_windows + 1);
  x->pos_ids = TAKEI(a, T);
  x->tokens = TAKEI(a, T);
  x->sel_rows = TAKEI(a, T);
  x->sel_tgt = TAKEI(a, T);
  x->slot_pos = TAKEI(a, T);
  x->slot_src = TAKEI(a, T);
  x->emb_dst = TAKEI(a, T);
  x->emb_seg = TAKEI(a, T + 1);
  x->emb_src = TAKEI(a, T);
  x->iota = TAKEI(a, lmax(lmax(T, NP), nq) + 1);
  x->vsum_rows = TAKEI(a, NV * NP);
  x->vsum_seg = TAKEI(a, NP + 1);
  x->qsum_rows = TAKEI(a, NV * nq);
  x->qsum_seg = TAKEI(a, nq + 1);
}

/* Host-only metadata: the index mirror first, then what only the host reads. */
static void carve_host(model *m, arena *a) {
  carve_index(m, &m->hidx, a);
  m->seq_start = TAKEI(a, m->max_samples + 1);
  m->seq_tail = TAKEI(a, m->max_samples);
  m->slot_row = TAKEI(a, m->max_tokens);
  m->emb_pairs = TAKEI(a, 2 * (size_t)m->max_tokens);
}

static void carve(model *m, arena *a) {
  const monkey_config *c = m->cfg;
  const visual_config *v = &c->visual;
  const size_t S = v->image_size, w = v->window_size, p = v->patch_size, W = v->width;
  const size_t E = v->output_dim, F = v->mlp_width, nq = v->n_queries, NP = v->n_patches;
  const size_t nv = v->n_windows + 1, NI = m->max_images, G = v->grid, qg = v->query_grid;
  const size_t N = NI * nv * NP, NQ = NI * nv * nq, hv = v->heads, hr = v->resampler_heads;
  const size_t T = m->max_tokens, H = c->hidden_size, FF = c->ffn, V = c->vocab_size;
  const size_t nh = c->num_attention_heads, nthr = m->nthreads;
  const int nva = m->recompute_vit ? 1 : v->layers, nla = m->recompute_llm ? 1 : c->num_hidden_layers;

  carve_index(m, &m->idx, a); /* first: the block starts at the arena's base */
  m->idx_bytes = a->used;
  m->px = take(a, NI * S * S * 3);
  m->img = TAKEF(a, NI * S * S * 3);
  m->glob = TAKEF(a, NI * w * w * 3);
  m->resize_tmp = TAKEF(a, lmax(lmax(w * S * 3, G * 16 * W), G * qg * E));
  m->cols = TAKEF(a, N * 3 * p * p);
  m->pe = TAKEF(a, NP * W);
  m->x0 = TAKEF(a, N * W);
  m->pre_mean = TAKEF(a, N);
  m->pre_rstd = TAKEF(a, N);
  for (int L = 0; L <= v->layers; L++) m->vit_in[L] = TAKEF(a, N * W);
  for (int L = 0; L < nva; L++) {
    vit_acts *A = &m->va[L];
    A->a = TAKEF(a, N * W);
    A->mean1 = TAKEF(a, N);
    A->rstd1 = TAKEF(a, N);
    A->qkv = TAKEF(a, N * 3 * W);
    A->t_in = TAKEF(a, N * v->lora_rank);
    A->ctx = TAKEF(a, N * W);
    A->lse = TAKEF(a, N * hv);
    A->t_out = TAKEF(a, N * v->lora_rank);
    A->x1 = TAKEF(a, N * W);
    A->c = TAKEF(a, N * W);
    A->mean2 = TAKEF(a, N);
    A->rstd2 = TAKEF(a, N);
    A->f = TAKEF(a, N * F);
    A->g = TAKEF(a, N * F);
    A->t_mlp = TAKEF(a, N * v->lora_mlp_rank);
  }
  m->kv = TAKEF(a, N * E);
  m->kv_mean = TAKEF(a, N);
  m->kv_rstd = TAKEF(a, N);
  m->kvn = TAKEF(a, N * E);
  m->pe_k = TAKEF(a, NP * E);
  m->keys = TAKEF(a, N * E);
  m->qn = TAKEF(a, nq * E);
  m->q_mean = TAKEF(a, nq);
  m->q_rstd = TAKEF(a, nq);
  m->q_in = TAKEF(a, nq * E);
  m->Q = TAKEF(a, nq * E);
  m->K = TAKEF(a, N * E);
  m->V = TAKEF(a, N * E);
  m->r_ctx = TAKEF(a, NQ * E);
  m->r_lse = TAKEF(a, NQ * hr);
  m->r_o = TAKEF(a, NQ * E);
  m->post_mean = TAKEF(a, NQ);
  m->post_rstd = TAKEF(a, NQ);
  m->zpost = TAKEF(a, NQ * E);
  m->feat = TAKEF(a, NQ * E);

  for (int L = 0; L <= c->num_hidden_layers; L++) m->llm_in[L] = TAKEF(a, T * H);
  for (int L = 0; L < nla; L++) {
    llm_acts *A = &m->la[L];
    A->a = TAKEF(a, T * H);
    A->rstd1 = TAKEF(a, T);
    A->qkv = TAKEF(a, T * 3 * H);
    A->ctx = TAKEF(a, T * H);
    A->lse = TAKEF(a, T * nh);
    A->x1 = TAKEF(a, T * H);
    A->c = TAKEF(a, T * H);
    A->rstd2 = TAKEF(a, T);
    A->u1 = TAKEF(a, T * FF);
    A->u2 = TAKEF(a, T * FF);
    A->s = TAKEF(a, T * FF);
  }
  m->f_rstd = TAKEF(a, T);
  m->hsel = TAKEF(a, T * H);
  m->dhsel = TAKEF(a, T * H);
  m->logit_rows = (int)(T < 128 ? T : 128);
  m->logits = TAKEF(a, (size_t)m->logit_rows * V);

  const size_t res = lmax(T * H, N * W);
  m->d_res = TAKEF(a, res);
  m->d_next = TAKEF(a, res);
  m->d_res2 = TAKEF(a, res);
  m->d_small = TAKEF(a, res);
  m->d_qkv = TAKEF(a, lmax(3 * res, NP * W));
  m->d_big = TAKEF(a, lmax(3 * T * FF, 2 * N * F));
  m->lora_rmax = v->lora_rank > v->lora_mlp_rank ? v->lora_rank : v->lora_mlp_rank;
  m->lora_scratch = TAKEF(a, nthr * NP * m->lora_rmax);
  attn_shape sv = {.Tq = (int)NP, .Tk = (int)NP, .H = (int)hv, .D = v->head_dim};
  attn_shape sr = {.Tq = (int)nq, .Tk = (int)NP, .H = (int)hr, .D = (int)(E / hr)};
  attn_shape sl = {.Tq = (int)T, .Tk = (int)T, .H = (int)nh, .D = c->head_dim, .causal = 1};
  /* An attention call on the whole team (views or sequences one after the other)
   * uses scratch(s, nthr) from the start of attn_scratch; calls made one per thread
   * (inside a PAR_FOR) use scratch(s, 1) each, thread t's at t * per_thread. */
  size_t (*scratch)(const attn_shape *, int) = m->ops->attention_scratch_floats;
  const size_t one = lmax(lmax(scratch(&sv, 1), scratch(&sr, 1)), scratch(&sl, 1));
  const size_t team =
      lmax(lmax(scratch(&sv, (int)nthr), scratch(&sr, (int)nthr)), scratch(&sl, (int)nthr));
  m->attn_scratch_per_thread = one;
  m->attn_scratch = TAKEF(a, lmax(nthr * one, team));
  m->d_feat = TAKEF(a, NQ * E);
  m->d_z = TAKEF(a, NQ * E);
  m->d_o = TAKEF(a, NQ * E);
  m->d_rctx = TAKEF(a, NQ * E);
  m->dQ = TAKEF(a, NQ * E);
  m->dK = TAKEF(a, N * E);
  m->dV = TAKEF(a, N * E);
  m->d_qin = TAKEF(a, nq * E);
  m->d_keys = TAKEF(a, N * E);
  m->d_kvn = TAKEF(a, N * E);
  m->d_kv = TAKEF(a, N * E);
  m->d_pe_k = TAKEF(a, NP * E);
  m->d_vit = TAKEF(a, N * W);
}

int model_create(model *m, const vlm_backend *ops, const monkey_config *c, zero_state *z,
                 int max_samples, int max_tokens, int max_images, int recompute_vit,
                 int recompute_llm) {
  memset(m, 0, sizeof *m);
  m->ops = ops ? ops : vlm_backend_cpu();
  if (z->ops && z->ops != m->ops)
    VLM_FAIL("model: the parameters live on the %s backend but the model was asked to run on %s",
             z->ops->name, m->ops->name);
  m->cfg = c;
  m->z = z;
  m->reg = z->reg;
  m->max_samples = max_samples < 1 ? 1 : max_samples;
  m->max_tokens = max_tokens < 2 ? 2 : max_tokens;
  m->max_images = max_images < 1 ? 1 : max_images;
  m->recompute_vit = recompute_vit;
  m->recompute_llm = recompute_llm;
  /* threads that issue kernel calls at once (each needs its own scratch) */
  m->nthreads = m->ops->host_parallel ? omp_get_max_threads() : 1;
  if (c->visual.lora_repeat_num > 16) VLM_FAIL("model: lora_repeat_num %d > 16 is not supported", c->visual.lora_repeat_num);
  if (c->visual.output_dim != c->hidden_size)
    VLM_FAIL("model config: visual.output_dim (%d) must equal hidden_size (%d): the image "
             "features replace token embeddings", c->visual.output_dim, c->hidden_size);
  m->vb = calloc((size_t)c->visual.layers, sizeof *m->vb);
  m->lb = calloc((size_t)c->num_hidden_layers, sizeof *m->lb);
  m->vit_in = calloc((size_t)c->visual.layers + 1, sizeof *m->vit_in);
  m->llm_in = calloc((size_t)c->num_hidden_layers + 1, sizeof *m->llm_in);
  m->va = calloc((size_t)c->visual.layers, sizeof *m->va);
  m->la = calloc((size_t)c->num_hidden_layers, sizeof *m->la);
  m->slots = calloc((size_t)m->reg->n, sizeof *m->slots);
  m->slot_mod = calloc((size_t)m->reg->n, sizeof *m->slot_mod);
  if (!m->vb || !m->lb || !m->vit_in || !m->llm_in || !m->va || !m->la || !m->slots || !m->slot_mod) {
    model_free(m);
    VLM_FAIL("model: out of memory");
  }
  m->mod_stem = module_id(m, "vit.stem", 0);
  m->mod_vit0 = module_id(m, "vit.block.%d", 0);
  m->mod_res = module_id(m, "resampler", 0);
  m->mod_embed = module_id(m, "llm.embed", 0);
  m->mod_llm0 = module_id(m, "llm.block.%d", 0);
  m->mod_head = module_id(m, "llm.head", 0);
  if (m->mod_stem < 0 || m->mod_vit0 < 0 || m->mod_res < 0 || m->mod_embed < 0 ||
      m->mod_llm0 < 0 || m->mod_head < 0)
    VLM_FAIL("model: the registry's modules are not the Monkey layout");
  VLM_CHECK(resolve_all(m));
  arena a = {0}, h = {0};
  carve(m, &a); /* sizing passes */
  carve_host(m, &h);
  a.cap = a.used;
  a.used = 0;
  h.cap = h.used;
  h.used = 0;
  a.base = m->ops->alloc(a.cap, "activations");
  if (!a.base) {
    model_free(m);
    VLM_FAIL("model: cannot allocate %.2f GiB of activation buffers on the %s backend "
             "(micro-batch of %d samples, %d tokens, %d images)", a.cap / 1073741824.0,
             ops ? ops->name : "cpu", max_samples, max_tokens, max_images);
  }
  m->arena = a.base;
  m->ops->zero((float *)a.base, (long)(a.cap / sizeof(float))); /* cap: a multiple of 64 */
  h.base = vlm_alloc(h.cap, "micro-batch index arrays");
  if (!h.base) {
    model_free(m);
    return -1;
  }
  m->host_arena = h.base;
  carve(m, &a);
  carve_host(m, &h);
  for (size_t i = 0; i < lmax(lmax(m->max_tokens, c->visual.n_patches), c->visual.n_queries) + 1; i++)
    m->hidx.iota[i] = (int)i;
  m->arena_bytes = a.cap;
  return 0;
}

void model_free(model *m) {
  if (m->arena) m->ops->free(m->arena);
  vlm_free(m->host_arena);
  free(m->vb);
  free(m->lb);
  free(m->vit_in);
  free(m->llm_in);
  free(m->va);
  free(m->la);
  free(m->slots);
  free(m->slot_mod);
  memset(m, 0, sizeof *m);
}

/* ---- one micro-batch ---------------------------------------------------- */

/* The order of modules is the same on every rank whatever its data (ranks with
 * no image or no target still gather and reduce with the others); only the
 * compute is skipped. Each acquire prefetches the module that comes next. */
int model_forward_backward(model *m, const mb_batch *b, float loss_scale, double *loss_sum,
                           long *n_targets) {
  const monkey_config *c = m->cfg;
  const visual_config *v = &c->visual;
  const int H = c->hidden_size, V = c->vocab_size, W = v->width;
  const int nv = v->n_windows + 1, NP = v->n_patches, VL = v->layers, LL = c->num_hidden_layers;
  const float eps = (float)c->layer_norm_epsilon;
  int n_img = 0;
  VLM_CHECK(model_prepare_batch(m, b, &n_img));
  const int T = m->seq_start[b->n_samples], n_seq = b->n_samples, n_views = n_img * nv;
  const int need_dx0 = tr(m, &m->wte) || m->vit_needs_grad;
  const int vit_bwd_stop = m->vit_lowest < 0 ? 0 : m->vit_lowest; /* lowest block with a backward */
  const vlm_backend *ops = m->ops;
  m->flops = 0;

  /* ---- forward: images ---- */
  acquire(m, m->mod_stem, m->mod_vit0, 0);
  if (n_img > 0) {
    vit_load_pixels(m, b->pixels, n_img);
    vit_stem_forward(m, n_img);
  }
  release(m, m->mod_stem, 0);
  for (int L = 0; L < VL; L++) {
    acquire(m, m->mod_vit0 + L, L + 1 < VL ? m->mod_vit0 + L + 1 : m->mod_res, 0);
    if (n_img > 0)
      vit_block_forward(m, L, &m->va[m->recompute_vit ? 0 : L], m->vit_in[L + 1], m->vit_in[L],
                        n_views, 1);
    release(m, m->mod_vit0 + L, 0);
  }
  acquire(m, m->mod_res, m->mod_embed, 0);
  if (n_img > 0) resampler_forward(m, n_views);
  release(m, m->mod_res, 0);
  /* ---- forward: embeddings with the image features spliced in ---- */
  acquire(m, m->mod_embed, m->mod_llm0, 0);
  float *x = m->llm_in[0];
  ops->rows_copy(x, NULL, m->wte.w, m->idx.tokens, T, H); /* every position, then the slots */
  if (m->n_slot > 0) ops->rows_copy(x, m->idx.slot_pos, m->feat, m->idx.slot_src, m->n_slot, H);
  release(m, m->mod_embed, 0);
  /* The last block computes its output only at the rows that have a target
   * (compacted: llm_in[LL] holds Mv rows), the only rows the head reads. */
  const int Mv = m->n_sel;
  for (int L = 0; L < LL; L++) {
    acquire(m, m->mod_llm0 + L, L + 1 < LL ? m->mod_llm0 + L + 1 : m->mod_head, 0);
    llm_block_forward(m, L, &m->la[m->recompute_llm ? 0 : L], m->llm_in[L + 1], m->llm_in[L], T,
                      n_seq, L == LL - 1 ? m->idx.sel_rows : NULL, Mv, 1);
    release(m, m->mod_llm0 + L, 0);
  }
  /* ---- head: loss on the positions that have a target, and its backward ---- */
  acquire(m, m->mod_head, m->mod_llm0 + LL - 1, 1);
  const float *xL = m->llm_in[LL]; /* [Mv, H] */
  if (Mv > 0) ops->rmsnorm_forward(m->hsel, m->f_rstd, xL, m->ln_f.w, Mv, H, eps);
  zero(m, m->dhsel, (long)Mv * H);
  double lsum = 0.0;
  for (int i0 = 0; i0 < Mv; i0 += m->logit_rows) {
    int n = Mv - i0 < m->logit_rows ? Mv - i0 : m->logit_rows, nvalid = 0;
    lin_fwd(m, 1, m->logits, m->hsel + (size_t)i0 * H, m->lm_head, NULL, n, H, V);
    lsum += ops->cross_entropy_forward_backward(m->logits, m->logits, m->idx.sel_tgt + i0, n, V,
                                                loss_scale, &nvalid);
    lin_bwd(m, m->dhsel + (size_t)i0 * H, m->lm_head, NULL, m->logits, m->hsel + (size_t)i0 * H, n,
            H, V);
  }
  *loss_sum = lsum;
  *n_targets = Mv;
  float *dy = m->d_res, *dx = m->d_next; /* dy: [Mv, H] for the last block, then [T, H] */
  zero(m, dy, (long)Mv * H);
  if (Mv > 0) ops->rmsnorm_backward(dy, m->ln_f.g, m->dhsel, xL, m->ln_f.w, m->f_rstd, Mv, H);
  release(m, m->mod_head, 1);

  /* ---- backward: LLM ---- */
  for (int L = LL - 1; L >= 0; L--) {
    int next = L > 0 ? m->mod_llm0 + L - 1 : (need_dx0 ? m->mod_embed : -1);
    acquire(m, m->mod_llm0 + L, next, 1);
    llm_acts *A = &m->la[m->recompute_llm ? 0 : L];
    const int *rows = L == LL - 1 ? m->idx.sel_rows : NULL;
    if (m->recompute_llm)
      llm_block_forward(m, L, A, m->llm_in[L + 1], m->llm_in[L], T, n_seq, rows, Mv, 0);
    int want_dx = L > 0 || need_dx0;
    if (want_dx) zero(m, dx, (long)T * H);
    llm_block_backward(m, L, A, want_dx ? dx : NULL, dy, m->llm_in[L], T, n_seq, rows, Mv);
    release(m, m->mod_llm0 + L, 1);
    float *tmp = dy;
    dy = dx;
    dx = tmp;
  }
  if (!need_dx0) return 0;
  /* dy holds d(embeddings): to wte rows, or to the image features */
  acquire(m, m->mod_embed, m->vit_needs_grad ? m->mod_res : -1, 1);
  if (n_img > 0) zero(m, m->d_feat, (long)n_views * v->n_queries * H);
  if (m->n_slot > 0) /* one position per feature row */
    ops->rows_segment_add(m->d_feat, m->idx.slot_src, dy, m->idx.slot_pos, m->idx.iota, m->n_slot, H);
  if (m->wte.g && m->n_emb > 0) /* each token id: its positions, in order */
    ops->rows_segment_add(m->wte.g, m->idx.emb_dst, dy, m->idx.emb_src, m->idx.emb_seg, m->n_emb, H);
  release(m, m->mod_embed, 1);
  if (!m->vit_needs_grad) return 0;

  /* ---- backward: resampler and ViT ---- */
  acquire(m, m->mod_res, m->vit_lowest < VL ? m->mod_vit0 + VL - 1 : -1, 1);
  if (n_img > 0) resampler_backward(m, n_views);
  release(m, m->mod_res, 1);
  if (m->vit_lowest >= VL) return 0;
  const long NW = (long)n_views * NP * W;
  dy = m->d_res;
  dx = m->d_next;
  if (n_img > 0) ops->copy(dy, m->d_vit, (size_t)NW * sizeof(float));
  for (int L = VL - 1; L >= vit_bwd_stop; L--) {
    int next = L > vit_bwd_stop ? m->mod_vit0 + L - 1 : (m->vit_lowest < 0 ? m->mod_stem : -1);
    acquire(m, m->mod_vit0 + L, next, 1);
    if (n_img > 0) {
      vit_acts *A = &m->va[m->recompute_vit ? 0 : L];
      if (m->recompute_vit) vit_block_forward(m, L, A, m->vit_in[L + 1], m->vit_in[L], n_views, 0);
      int want_dx = L > m->vit_lowest;
      int n_bwd = vit_backward_views(m, L, n_views);
      if (want_dx) zero(m, dx, NW);
      vit_block_backward(m, L, A, want_dx ? dx : NULL, dy, m->vit_in[L], n_bwd);
    }
    release(m, m->mod_vit0 + L, 1);
    float *tmp = dy;
    dy = dx;
    dx = tmp;
  }
  if (m->vit_lowest < 0) {
    acquire(m, m->mod_stem, -1, 1);
    if (n_img > 0) vit_stem_backward(m, dy, n_img);
    release(m, m->mod_stem, 1);
  }
  return 0;
}
