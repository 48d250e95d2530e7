/* modules/registry.c: builds the parameter table of a Monkey model from its
 * config (upstream names and shapes, module by module), selects trainable
 * parameters and parameter groups by glob rules, owns the flat parameter and
 * gradient buffers, and initialises parameters for `vlmtrain init`. */
#define _GNU_SOURCE
#include "modules/registry.h"

#include <fnmatch.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "common/vlm.h"
#include "kernels/kernels.h"

/* ---- building the table ------------------------------------------------ */

typedef struct {
  registry *r;
  int cap_p, cap_m;
  int failed;
} builder;

static void begin_module(builder *b, const char *fmt, ...) {
  registry *r = b->r;
  if (r->n_modules == b->cap_m) {
    b->cap_m = b->cap_m ? 2 * b->cap_m : 64;
    module_info *m = realloc(r->modules, (size_t)b->cap_m * sizeof *m);
    if (!m) { b->failed = 1; return; }
    r->modules = m;
  }
  module_info *m = &r->modules[r->n_modules++];
  memset(m, 0, sizeof *m);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m->name, sizeof m->name, fmt, ap);
  va_end(ap);
  m->begin = m->end = r->n_params;
  m->first = r->n;
}

/* add(b, kind, ndim, d0, d1, d2, d3, fmt, ...) */
static void add(builder *b, param_kind kind, int ndim, long d0, long d1, long d2, long d3,
                const char *fmt, ...) {
  registry *r = b->r;
  if (b->failed) return;
  if (r->n == b->cap_p) {
    b->cap_p = b->cap_p ? 2 * b->cap_p : 256;
    param_info *p = realloc(r->p, (size_t)b->cap_p * sizeof *p);
    if (!p) { b->failed = 1; return; }
    r->p = p;
  }
  param_info *p = &r->p[r->n];
  memset(p, 0, sizeof *p);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(p->name, sizeof p->name, fmt, ap);
  va_end(ap);
  long d[4] = {d0, d1, d2, d3};
  p->ndim = ndim;
  p->numel = 1;
  for (int i = 0; i < ndim; i++) {
    p->shape[i] = d[i];
    p->numel *= d[i];
  }
  p->kind = kind;
  p->offset = r->n_params;
  p->grad_offset = -1;
  p->group = -1;
  p->module = r->n_modules - 1;
  r->n_params += p->numel;
  module_info *m = &r->modules[r->n_modules - 1];
  m->end = r->n_params;
  m->count++;
  r->n++;
}

static void add_lora(builder *b, const char *base, int k, long in, long out, long rank) {
  add(b, PARAM_WEIGHT, 2, rank, in, 0, 0, "%s.%d.lora_a.weight", base, k);
  add(b, PARAM_WEIGHT, 2, out, rank, 0, 0, "%s.%d.lora_b.weight", base, k);
  add(b, PARAM_OTHER, 1, 1, 0, 0, 0, "%s.%d.lora_scale", base, k);
}

int registry_build(registry *r, const monkey_config *c) {
  memset(r, 0, sizeof *r);
  builder b = {.r = r};
  const visual_config *v = &c->visual;
  const long W = v->width, E = v->output_dim, P = v->patch_size, F = v->mlp_width;
  const char *vit = "transformer.visual";

  begin_module(&b, "vit.stem");
  add(&b, PARAM_WEIGHT, 4, W, 3, P, P, "%s.conv1.weight", vit);
  add(&b, PARAM_OTHER, 2, 256, W, 0, 0, "%s.positional_embedding", vit);
  add(&b, PARAM_LN_WEIGHT, 1, W, 0, 0, 0, "%s.ln_pre.weight", vit);
  add(&b, PARAM_BIAS, 1, W, 0, 0, 0, "%s.ln_pre.bias", vit);
  for (int L = 0; L < v->layers; L++) {
    char blk[96];
    snprintf(blk, sizeof blk, "%s.transformer.resblocks.%d", vit, L);
    begin_module(&b, "vit.block.%d", L);
    add(&b, PARAM_LN_WEIGHT, 1, W, 0, 0, 0, "%s.ln_1.weight", blk);
    add(&b, PARAM_BIAS, 1, W, 0, 0, 0, "%s.ln_1.bias", blk);
    add(&b, PARAM_WEIGHT, 2, 3 * W, W, 0, 0, "%s.attn.in_proj.weight", blk);
    add(&b, PARAM_BIAS, 1, 3 * W, 0, 0, 0, "%s.attn.in_proj.bias", blk);
    add(&b, PARAM_WEIGHT, 2, W, W, 0, 0, "%s.attn.out_proj.weight", blk);
    add(&b, PARAM_BIAS, 1, W, 0, 0, 0, "%s.attn.out_proj.bias", blk);
    add(&b, PARAM_LN_WEIGHT, 1, W, 0, 0, 0, "%s.ln_2.weight", blk);
    add(&b, PARAM_BIAS, 1, W, 0, 0, 0, "%s.ln_2.bias", blk);
    add(&b, PARAM_WEIGHT, 2, F, W, 0, 0, "%s.mlp.c_fc.weight", blk);
    add(&b, PARAM_BIAS, 1, F, 0, 0, 0, "%s.mlp.c_fc.bias", blk);
    add(&b, PARAM_WEIGHT, 2, W, F, 0, 0, "%s.mlp.c_proj.weight", blk);
    add(&b, PARAM_BIAS, 1, W, 0, 0, 0, "%s.mlp.c_proj.bias", blk);
    char base[128];
    for (int k = 0; k < v->lora_repeat_num; k++) {
      snprintf(base, sizeof base, "%s.attn.in_proj_lora", blk);
      add_lora(&b, base, k, W, 3 * W, v->lora_rank);
    }
    for (int k = 0; k < v->lora_repeat_num; k++) {
      snprintf(base, sizeof base, "%s.attn.out_proj_lora", blk);
      add_lora(&b, base, k, W, W, v->lora_rank);
    }
    for (int k = 0; k < v->lora_repeat_num; k++) {
      snprintf(base, sizeof base, "%s.mlp_lora", blk);
      add_lora(&b, base, k, W, W, v->lora_mlp_rank);
    }
  }
  const char *ap = "transformer.visual.attn_pool";
  begin_module(&b, "resampler");
  add(&b, PARAM_WEIGHT, 2, v->n_queries, E, 0, 0, "%s.query", ap);
  add(&b, PARAM_OTHER, 2, v->n_queries, E, 0, 0, "%s.pos_embed", ap);
  if (W != E) add(&b, PARAM_WEIGHT, 2, E, W, 0, 0, "%s.kv_proj.weight", ap);
  add(&b, PARAM_WEIGHT, 2, 3 * E, E, 0, 0, "%s.attn.in_proj_weight", ap);
  add(&b, PARAM_BIAS, 1, 3 * E, 0, 0, 0, "%s.attn.in_proj_bias", ap);
  add(&b, PARAM_WEIGHT, 2, E, E, 0, 0, "%s.attn.out_proj.weight", ap);
  add(&b, PARAM_BIAS, 1, E, 0, 0, 0, "%s.attn.out_proj.bias", ap);
  add(&b, PARAM_LN_WEIGHT, 1, E, 0, 0, 0, "%s.ln_q.weight", ap);
  add(&b, PARAM_BIAS, 1, E, 0, 0, 0, "%s.ln_q.bias", ap);
  add(&b, PARAM_LN_WEIGHT, 1, E, 0, 0, 0, "%s.ln_kv.weight", ap);
  add(&b, PARAM_BIAS, 1, E, 0, 0, 0, "%s.ln_kv.bias", ap);
  /* ln_post and proj run right after the resampler: same module (one gather) */
  add(&b, PARAM_LN_WEIGHT, 1, E, 0, 0, 0, "%s.ln_post.weight", vit);
  add(&b, PARAM_BIAS, 1, E, 0, 0, 0, "%s.ln_post.bias", vit);
  add(&b, PARAM_WEIGHT, 2, E, E, 0, 0, "%s.proj", vit);

  const long H = c->hidden_size, FF = c->ffn, V = c->vocab_size;
  begin_module(&b, "llm.embed");
  add(&b, PARAM_WEIGHT, 2, V, H, 0, 0, "transformer.wte.weight");
  for (int L = 0; L < c->num_hidden_layers; L++) {
    begin_module(&b, "llm.block.%d", L);
    add(&b, PARAM_RMS_WEIGHT, 1, H, 0, 0, 0, "transformer.h.%d.ln_1.weight", L);
    add(&b, PARAM_WEIGHT, 2, 3 * H, H, 0, 0, "transformer.h.%d.attn.c_attn.weight", L);
    add(&b, PARAM_BIAS, 1, 3 * H, 0, 0, 0, "transformer.h.%d.attn.c_attn.bias", L);
    add(&b, PARAM_WEIGHT, 2, H, H, 0, 0, "transformer.h.%d.attn.c_proj.weight", L);
    add(&b, PARAM_RMS_WEIGHT, 1, H, 0, 0, 0, "transformer.h.%d.ln_2.weight", L);
    add(&b, PARAM_WEIGHT, 2, FF, H, 0, 0, "transformer.h.%d.mlp.w1.weight", L);
    add(&b, PARAM_WEIGHT, 2, FF, H, 0, 0, "transformer.h.%d.mlp.w2.weight", L);
    add(&b, PARAM_WEIGHT, 2, H, FF, 0, 0, "transformer.h.%d.mlp.c_proj.weight", L);
  }
  begin_module(&b, "llm.head");
  add(&b, PARAM_RMS_WEIGHT, 1, H, 0, 0, 0, "transformer.ln_f.weight");
  add(&b, PARAM_WEIGHT, 2, V, H, 0, 0, "lm_head.weight");
  if (b.failed) {
    registry_free(r);
    VLM_FAIL("out of memory building the parameter registry");
  }
  return 0;
}

void registry_free(registry *r) {
  free(r->p);
  free(r->modules);
  vlm_free(r->params);
  vlm_free(r->grads);
  memset(r, 0, sizeof *r);
}

int registry_find(const registry *r, const char *name) {
  for (int i = 0; i < r->n; i++)
    if (strcmp(r->p[i].name, name) == 0) return i;
  return -1;
}

float *registry_param(const registry *r, int idx) { return r->params + r->p[idx].offset; }

float *registry_grad(const registry *r, int idx) {
  if (!r->grads || r->p[idx].grad_offset < 0) return NULL;
  return r->grads + r->p[idx].grad_offset;
}

/* ---- trainable selection and groups ------------------------------------ */

static const char *const PRESET_MONKEY[] = {"*lora*", "transformer.visual.attn_pool.*",
                                            "transformer.wte.*", "transformer.h.*",
                                            "transformer.ln_f.*", "lm_head.*"};
static const char *const PRESET_LORA_ONLY[] = {"*lora*", "transformer.visual.attn_pool.*"};
static const char *const PRESET_FULL[] = {"*"};

static int matches(const char *pattern, const char *name) { return fnmatch(pattern, name, 0) == 0; }

static int apply_rules(registry *r, const char *const *rules, int n_rules, const char *origin) {
  for (int i = 0; i < r->n; i++) r->p[i].trainable = 0;
  for (int k = 0; k < n_rules; k++) {
    const char *rule = rules[k];
    int freeze = rule[0] == '!';
    const char *pat = freeze ? rule + 1 : rule;
    long hits = 0;
    for (int i = 0; i < r->n; i++)
      if (matches(pat, r->p[i].name)) {
        r->p[i].trainable = !freeze;
        hits++;
      }
    if (hits == 0)
      VLM_FAIL("%s: trainable rule \"%s\" matches no parameter name (names look like "
               "\"transformer.h.0.attn.c_attn.weight\"; `vlmtrain params CONFIG.json` lists them)",
               origin, rule);
  }
  return 0;
}

int registry_select(registry *r, const train_config *t) {
  /* 1. trainable set */
  if (t->n_rules > 0) {
    const char *rules[TC_MAX_RULES];
    for (int k = 0; k < t->n_rules; k++) rules[k] = t->rules[k];
    VLM_CHECK(apply_rules(r, rules, t->n_rules, "training config \"trainable\""));
  } else {
    const char *p = t->preset[0] ? t->preset : "monkey";
    if (strcmp(p, "monkey") == 0)
      VLM_CHECK(apply_rules(r, PRESET_MONKEY, 6, "preset \"monkey\""));
    else if (strcmp(p, "lora-only") == 0)
      VLM_CHECK(apply_rules(r, PRESET_LORA_ONLY, 2, "preset \"lora-only\""));
    else if (strcmp(p, "full") == 0)
      VLM_CHECK(apply_rules(r, PRESET_FULL, 1, "preset \"full\""));
    else
      VLM_FAIL("training config: \"trainable\" preset \"%s\" is unknown (expected \"monkey\", "
               "\"lora-only\", \"full\" or a list of glob rules)", p);
  }
  /* 2. groups: user groups in order, then an implicit "default" group */
  param_group_cfg defaults[2];
  const param_group_cfg *cfg = t->groups;
  int n_cfg = t->n_groups, user = n_cfg > 0;
  if (!user) {
    memset(defaults, 0, sizeof defaults);
    snprintf(defaults[0].name, sizeof defaults[0].name, "no_decay");
    defaults[0].n_patterns = 2;
    snprintf(defaults[0].patterns[0], TC_PATTERN_LEN, "*bias");
    snprintf(defaults[0].patterns[1], TC_PATTERN_LEN, "transformer.visual.*ln_*");
    defaults[0].lr = -1;
    defaults[0].lr_scale = 1;
    defaults[0].weight_decay = 0.0;
    snprintf(defaults[1].name, sizeof defaults[1].name, "decay");
    defaults[1].n_patterns = 1;
    snprintf(defaults[1].patterns[0], TC_PATTERN_LEN, "*");
    defaults[1].lr = -1;
    defaults[1].lr_scale = 1;
    defaults[1].weight_decay = -1;
    cfg = defaults;
    n_cfg = 2;
  }
  if (n_cfg >= TC_MAX_GROUPS) VLM_FAIL("training config: at most %d parameter groups", TC_MAX_GROUPS - 1);
  r->n_groups = 0;
  for (int g = 0; g < n_cfg; g++) {
    param_group *pg = &r->groups[r->n_groups++];
    memset(pg, 0, sizeof *pg);
    snprintf(pg->name, sizeof pg->name, "%.63s", cfg[g].name[0] ? cfg[g].name : "group");
    pg->lr = cfg[g].lr >= 0 ? cfg[g].lr : cfg[g].lr_scale * t->lr;
    pg->weight_decay = cfg[g].weight_decay >= 0 ? cfg[g].weight_decay : t->weight_decay;
  }
  int implicit = -1;
  long grad_off = 0;
  r->n_trainable = 0;
  for (int i = 0; i < r->n; i++) {
    param_info *p = &r->p[i];
    p->group = -1;
    p->grad_offset = -1;
    if (!p->trainable) continue;
    for (int g = 0; g < n_cfg && p->group < 0; g++)
      for (int k = 0; k < cfg[g].n_patterns; k++)
        if (matches(cfg[g].patterns[k], p->name)) {
          p->group = g;
          break;
        }
    if (p->group < 0) {
      if (implicit < 0) {
        if (r->n_groups >= TC_MAX_GROUPS) VLM_FAIL("training config: too many parameter groups");
        implicit = r->n_groups++;
        param_group *pg = &r->groups[implicit];
        memset(pg, 0, sizeof *pg);
        snprintf(pg->name, sizeof pg->name, "default");
        pg->lr = t->lr;
        pg->weight_decay = t->weight_decay;
      }
      p->group = implicit;
    }
    r->groups[p->group].count += p->numel;
    r->groups[p->group].n_params++;
    p->grad_offset = grad_off;
    grad_off += p->numel;
  }
  r->n_trainable = grad_off;
  if (user) /* a user pattern that matches no trainable parameter is an error */
    for (int g = 0; g < n_cfg; g++)
      for (int k = 0; k < cfg[g].n_patterns; k++) {
        int hit = 0;
        for (int i = 0; i < r->n && !hit; i++)
          hit = r->p[i].trainable && matches(cfg[g].patterns[k], r->p[i].name);
        if (!hit)
          VLM_FAIL("training config: pattern \"%s\" of parameter group \"%s\" matches no "
                   "trainable parameter", cfg[g].patterns[k], cfg[g].name);
      }
  return 0;
}

int registry_alloc(registry *r) {
  vlm_free(r->params);
  vlm_free(r->grads);
  r->grads = NULL;
  r->params = vlm_alloc((size_t)r->n_params * sizeof(float), "parameters");
  if (!r->params) VLM_FAIL("cannot allocate %.2f GiB of parameters", r->n_params * 4.0 / (1 << 30));
  if (r->n_trainable > 0) {
    r->grads = vlm_alloc((size_t)r->n_trainable * sizeof(float), "gradients");
    if (!r->grads) VLM_FAIL("cannot allocate %.2f GiB of gradients", r->n_trainable * 4.0 / (1 << 30));
  }
  return 0;
}

/* ---- summary ----------------------------------------------------------- */

static const char *part_of(const char *name) {
  if (strstr(name, "lora")) return "vit lora";
  if (strncmp(name, "transformer.visual.attn_pool.", 29) == 0) return "resampler";
  if (strncmp(name, "transformer.visual.ln_post.", 27) == 0 ||
      strcmp(name, "transformer.visual.proj") == 0)
    return "vit post";
  if (strncmp(name, "transformer.visual.", 19) == 0) return "vit trunk";
  return "llm";
}

void registry_print_summary(const registry *r, const monkey_config *c) {
  static const char *parts[] = {"vit trunk", "vit lora", "resampler", "vit post", "llm"};
  long total[5] = {0}, train[5] = {0};
  for (int i = 0; i < r->n; i++)
    for (int k = 0; k < 5; k++)
      if (strcmp(part_of(r->p[i].name), parts[k]) == 0) {
        total[k] += r->p[i].numel;
        if (r->p[i].trainable) train[k] += r->p[i].numel;
      }
  vlm_log("model: %d ViT blocks (width %d, %d windows + global view, %d LoRA sets), "
          "resampler %d queries x %d, LLM %d blocks (hidden %d, vocab %d)\n",
          c->visual.layers, c->visual.width, c->visual.n_windows, c->visual.lora_repeat_num,
          c->visual.n_queries, c->visual.output_dim, c->num_hidden_layers, c->hidden_size,
          c->vocab_size);
  vlm_log("%-10s %16s %16s\n", "part", "parameters", "trainable");
  for (int k = 0; k < 5; k++) vlm_log("%-10s %16ld %16ld\n", parts[k], total[k], train[k]);
  vlm_log("%-10s %16ld %16ld\n", "total", r->n_params, r->n_trainable);
  vlm_log("trainable params: %ld || all params: %ld || trainable%%: %.4f  (%d tensors, %d modules)\n",
          r->n_trainable, r->n_params, r->n_params ? 100.0 * r->n_trainable / r->n_params : 0.0,
          r->n, r->n_modules);
  for (int g = 0; g < r->n_groups; g++)
    vlm_log("group %-12s %14ld params in %5d tensors  lr %-10.3g weight_decay %g\n",
            r->groups[g].name, r->groups[g].count, r->groups[g].n_params, r->groups[g].lr,
            r->groups[g].weight_decay);
}

/* ---- initialisation ---------------------------------------------------- */

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

void registry_init_lora_param(registry *r, int idx, unsigned long seed) {
  registry_init_lora_values(r, idx, seed, registry_param(r, idx));
}

void registry_init_lora_values(const registry *r, int idx, unsigned long seed, float *x) {
  const param_info *p = &r->p[idx];
  vlm_rng g;
  rng_seed(&g, (uint64_t)seed * 0x9E3779B97F4A7C15ULL + (uint64_t)idx + 1);
  if (ends_with(p->name, "lora_a.weight")) {
    /* kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / ((1 + 5) * fan_in)) = 1/sqrt(fan_in) */
    double bound = 1.0 / sqrt((double)p->shape[1]);
    for (long i = 0; i < p->numel; i++) x[i] = (float)((2.0 * rng_uniform(&g) - 1.0) * bound);
  } else if (ends_with(p->name, "lora_scale")) {
    for (long i = 0; i < p->numel; i++) x[i] = 1.0f;
  } else {
    for (long i = 0; i < p->numel; i++) x[i] = 0.0f;
  }
}

void registry_init_random(registry *r, const monkey_config *c, unsigned long seed) {
  for (int i = 0; i < r->n; i++) {
    param_info *p = &r->p[i];
    float *x = registry_param(r, i);
    vlm_rng g;
    rng_seed(&g, (uint64_t)seed * 0x9E3779B97F4A7C15ULL + (uint64_t)i + 1);
    if (strstr(p->name, "lora")) {
      registry_init_lora_param(r, i, seed);
    } else if (ends_with(p->name, "attn_pool.pos_embed")) {
      sincos_2d_table(x, c->visual.query_grid, c->visual.output_dim);
    } else if (p->kind == PARAM_LN_WEIGHT || p->kind == PARAM_RMS_WEIGHT) {
      for (long k = 0; k < p->numel; k++) x[k] = 1.0f;
    } else if (p->kind == PARAM_BIAS) {
      for (long k = 0; k < p->numel; k++) x[k] = 0.0f;
    } else {
      double std = 0.02;
      if (ends_with(p->name, "positional_embedding")) std = 1.0 / sqrt((double)c->visual.width);
      if (ends_with(p->name, "visual.proj")) std = 1.0 / sqrt((double)c->visual.output_dim);
      for (long k = 0; k < p->numel; k++) {
        double z = rng_normal(&g);
        if (ends_with(p->name, "attn_pool.query")) /* truncated normal at 2 std */
          while (z < -2.0 || z > 2.0) z = rng_normal(&g);
        x[k] = (float)(std * z);
      }
    }
  }
}
