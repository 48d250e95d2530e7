/* modules/optimizer.c: see modules/optimizer.h. */
#include "modules/optimizer.h"

#include <math.h>
#include <string.h>

#include "common/vlm.h"
#include "kernels/kernels.h" /* lr_cosine_with_warmup: host arithmetic */

static float *moment_alloc(const vlm_backend *ops, long n, const char *what) {
  float *p = ops->alloc((size_t)n * sizeof(float), what);
  if (p) ops->zero(p, n);
  return p;
}

int adamw_init(adamw_state *s, const zero_state *z, const train_config *t) {
  memset(s, 0, sizeof *s);
  s->ops = z->ops;
  s->n = z->n_local_grad;
  s->beta1 = t->beta1;
  s->beta2 = t->beta2;
  s->eps = t->eps;
  if (s->n == 0) return 0;
  s->m = moment_alloc(s->ops, s->n, "AdamW first moments");
  s->v = moment_alloc(s->ops, s->n, "AdamW second moments");
  if (s->m && s->v && s->ops->on_device) {
    s->hm = vlm_alloc((size_t)s->n * sizeof(float), "host copy of the AdamW first moments");
    s->hv = vlm_alloc((size_t)s->n * sizeof(float), "host copy of the AdamW second moments");
  } else {
    s->hm = s->m;
    s->hv = s->v;
  }
  if (!s->m || !s->v || !s->hm || !s->hv) {
    adamw_free(s);
    VLM_FAIL("cannot allocate AdamW state for %ld parameters", s->n);
  }
  return 0;
}

void adamw_free(adamw_state *s) {
  if (s->hm != s->m) vlm_free(s->hm);
  if (s->hv != s->v) vlm_free(s->hv);
  if (s->m) s->ops->free(s->m);
  if (s->v) s->ops->free(s->v);
  memset(s, 0, sizeof *s);
}

void adamw_to_host(const adamw_state *s) {
  if (s->n == 0 || s->hm == s->m) return;
  s->ops->download(s->hm, s->m, (size_t)s->n * sizeof(float));
  s->ops->download(s->hv, s->v, (size_t)s->n * sizeof(float));
}

void adamw_to_device(const adamw_state *s) {
  if (s->n == 0 || s->hm == s->m) return;
  s->ops->upload(s->m, s->hm, (size_t)s->n * sizeof(float));
  s->ops->upload(s->v, s->hv, (size_t)s->n * sizeof(float));
}

double schedule_factor(const train_config *t, long step) {
  long total = t->total_steps > 0 ? t->total_steps : t->train_steps;
  long warmup = t->warmup_steps;
  if (warmup < 0 || (warmup == 0 && t->warmup_ratio > 0)) warmup = (long)ceil(t->warmup_ratio * total);
  if (strcmp(t->sched_type, "constant") == 0) /* HF get_constant_schedule_with_warmup */
    return step < warmup ? (double)step / (double)warmup : 1.0;
  return lr_cosine_with_warmup(step, warmup, total, t->num_cycles);
}

double grad_global_norm(const zero_state *z) { return sqrt(zero_grad_norm_sq(z)); }

double grad_clip_coef(double norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  double coef = max_norm / (norm + 1e-6);
  return coef < 1.0 ? coef : 1.0;
}

void adamw_apply(adamw_state *s, zero_state *z, double factor, double g_scale) {
  const registry *r = z->reg;
  s->step++;
  for (int i = 0; i < r->n; i++) {
    const param_info *p = &r->p[i];
    if (!p->trainable) continue;
    long lo, hi;
    float *w = zero_shard(z, i, &lo, &hi);
    float *g = zero_local_grad_range(z, z->grads, i, &lo, &hi);
    float *m1 = zero_local_grad_range(z, s->m, i, &lo, &hi);
    float *m2 = zero_local_grad_range(z, s->v, i, &lo, &hi);
    if (hi <= lo) continue;
    const param_group *gr = &r->groups[p->group];
    z->ops->adamw_step(w, g, m1, m2, hi - lo, (float)(gr->lr * factor), (float)s->beta1, (float)s->beta2,
               (float)s->eps, (float)gr->weight_decay, s->step, (float)g_scale);
  }
}
