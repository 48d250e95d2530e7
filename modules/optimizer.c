/* modules/optimizer.c: see modules/optimizer.h. */
#include "modules/optimizer.h"

#include <math.h>
#include <string.h>

#include "common/vlm.h"
#include "kernels/kernels.h"

int adamw_init(adamw_state *s, const registry *r, const train_config *t) {
  memset(s, 0, sizeof *s);
  s->n = r->n_trainable;
  s->beta1 = t->beta1;
  s->beta2 = t->beta2;
  s->eps = t->eps;
  if (s->n == 0) return 0;
  s->m = vlm_alloc((size_t)s->n * sizeof(float), "AdamW first moments");
  s->v = vlm_alloc((size_t)s->n * sizeof(float), "AdamW second moments");
  if (!s->m || !s->v) {
    adamw_free(s);
    VLM_FAIL("cannot allocate AdamW state for %ld parameters", r->n_trainable);
  }
  return 0;
}

void adamw_free(adamw_state *s) {
  vlm_free(s->m);
  vlm_free(s->v);
  memset(s, 0, sizeof *s);
}

double schedule_factor(const train_config *t, long step) {
  long total = t->total_steps > 0 ? t->total_steps : t->train_steps;
  long warmup = t->warmup_steps;
  if (warmup < 0 || (warmup == 0 && t->warmup_ratio > 0)) warmup = (long)ceil(t->warmup_ratio * total);
  if (strcmp(t->sched_type, "constant") == 0) /* HF get_constant_schedule_with_warmup */
    return step < warmup ? (double)step / (double)warmup : 1.0;
  return lr_cosine_with_warmup(step, warmup, total, t->num_cycles);
}

double grad_global_norm(const registry *r) {
  return r->n_trainable ? sqrt(sum_squares(r->grads, r->n_trainable)) : 0.0;
}

void grad_clip(registry *r, double norm, double max_norm) {
  if (max_norm <= 0 || r->n_trainable == 0) return;
  double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) scale_inplace(r->grads, r->n_trainable, (float)coef);
}

void adamw_apply(adamw_state *s, registry *r, double factor) {
  s->step++;
  for (int i = 0; i < r->n; i++) {
    const param_info *p = &r->p[i];
    if (!p->trainable) continue;
    const param_group *g = &r->groups[p->group];
    adamw_step(registry_param(r, i), registry_grad(r, i), s->m + p->grad_offset,
               s->v + p->grad_offset, p->numel, (float)(g->lr * factor), (float)s->beta1,
               (float)s->beta2, (float)s->eps, (float)g->weight_decay, s->step);
  }
}
