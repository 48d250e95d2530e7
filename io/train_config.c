/* io/train_config.c: reads and validates the training configuration (JSON).
 *
 * The file is a DeepSpeed config (ds_config.json) plus vlmtrain's own keys.
 * Every key vlmtrain knows is in the table KEYS below, with its type, range and
 * whether it is DeepSpeed's (those accept "auto", meaning "use the default", as
 * HF Trainer ds_configs write). Parsing is two passes over the JSON: the first
 * walks every key and collects all unknown key paths into one error (DeepSpeed
 * keys that vlmtrain does not use are warnings); the second converts the known
 * keys, stopping at the first wrong type or out-of-range value. The meaning and
 * default of each key is documented in docs/config.md. Cross-checks that need
 * the model or the number of ranks (batch sizes, rules that match nothing) are
 * done where that is known, not here. */
#define _POSIX_C_SOURCE 200809L
#include "io/train_config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/vlm.h"
#include "io/config.h"

typedef enum {
  K_OBJ,       /* an object whose keys are in the table */
  K_INT,       /* int field */
  K_LONG,      /* long field */
  K_DOUBLE,    /* double field */
  K_BOOL,      /* int field, 0/1 */
  K_MUST_TRUE, /* DeepSpeed switch vlmtrain supports only as true */
  K_MUST_FALSE,/* DeepSpeed switch vlmtrain supports only as false */
  K_SPECIAL    /* converted by code below (strings, lists) */
} key_kind;

typedef struct {
  const char *path;
  key_kind kind;
  int ds;     /* DeepSpeed's key: "auto" means the default */
  size_t off; /* field in train_config (K_INT, K_LONG, K_DOUBLE, K_BOOL) */
  double lo, hi;
} key_spec;

#define F(field) offsetof(train_config, field)
#define NOF 0
#define BIG 9007199254740992.0 /* 2^53: integers beyond are not exact in JSON doubles */

static const key_spec KEYS[] = {
    /* DeepSpeed keys vlmtrain uses */
    {"train_micro_batch_size_per_gpu", K_INT, 1, F(micro_batch), 1, 1 << 20},
    {"gradient_accumulation_steps", K_INT, 1, F(grad_accum), 1, 1 << 20},
    {"train_batch_size", K_LONG, 1, F(train_batch_size), 1, BIG},
    {"gradient_clipping", K_DOUBLE, 1, F(grad_clip), 0, HUGE_VAL},
    {"steps_per_print", K_INT, 1, F(steps_per_print), 1, 1 << 30},
    {"optimizer", K_OBJ, 1, NOF, 0, 0},
    {"optimizer.type", K_SPECIAL, 1, NOF, 0, 0},
    {"optimizer.params", K_OBJ, 1, NOF, 0, 0},
    {"optimizer.params.lr", K_DOUBLE, 1, F(lr), 0, HUGE_VAL},
    {"optimizer.params.betas", K_SPECIAL, 1, NOF, 0, 0},
    {"optimizer.params.eps", K_DOUBLE, 1, F(eps), 1e-300, HUGE_VAL},
    {"optimizer.params.weight_decay", K_DOUBLE, 1, F(weight_decay), 0, HUGE_VAL},
    {"optimizer.params.adam_w_mode", K_MUST_TRUE, 1, NOF, 0, 0},
    {"optimizer.params.bias_correction", K_MUST_TRUE, 1, NOF, 0, 0},
    {"optimizer.params.amsgrad", K_MUST_FALSE, 1, NOF, 0, 0},
    {"scheduler", K_OBJ, 1, NOF, 0, 0},
    {"scheduler.type", K_SPECIAL, 1, NOF, 0, 0},
    {"scheduler.params", K_OBJ, 1, NOF, 0, 0},
    {"scheduler.params.warmup_num_steps", K_LONG, 1, F(warmup_steps), 0, BIG},
    {"scheduler.params.warmup_ratio", K_DOUBLE, 0, F(warmup_ratio), 0, 1},
    {"scheduler.params.total_num_steps", K_LONG, 1, F(total_steps), 1, BIG},
    {"scheduler.params.num_cycles", K_DOUBLE, 0, F(num_cycles), 1e-300, HUGE_VAL},
    {"zero_optimization", K_OBJ, 1, NOF, 0, 0},
    {"zero_optimization.stage", K_INT, 1, F(zero_stage), 0, 3},
    {"zero_optimization.shard_size", K_LONG, 0, F(shard_size), 0, 1 << 30},
    {"zero_optimization.stage3_param_persistence_threshold", K_LONG, 1,
     F(persistence_threshold), 0, BIG},
    {"zero_optimization.stage3_max_live_parameters", K_LONG, 1, F(max_live_parameters), 1, BIG},
    {"zero_optimization.replicate_frozen", K_BOOL, 0, F(replicate_frozen), 0, 1},
    {"bf16", K_OBJ, 1, NOF, 0, 0},
    {"bf16.enabled", K_BOOL, 1, F(bf16), 0, 1},
    {"communication_data_type", K_SPECIAL, 1, NOF, 0, 0},
    /* vlmtrain keys */
    {"train_steps", K_LONG, 0, F(train_steps), 1, BIG},
    {"seed", K_LONG, 0, F(seed), 0, BIG},
    {"trainable", K_SPECIAL, 0, NOF, 0, 0},
    {"param_groups", K_SPECIAL, 0, NOF, 0, 0},
    {"recompute", K_OBJ, 0, NOF, 0, 0},
    {"recompute.vit", K_BOOL, 0, F(recompute_vit), 0, 1},
    {"recompute.llm", K_BOOL, 0, F(recompute_llm), 0, 1},
    {"data", K_OBJ, 0, NOF, 0, 0},
    {"data.shuffle", K_BOOL, 0, F(shuffle), 0, 1},
    {"data.seed", K_LONG, 0, F(data_seed), 0, BIG},
    {"data.read_mode", K_SPECIAL, 0, NOF, 0, 0},
    {"checkpoint", K_OBJ, 1, NOF, 0, 0},
    {"checkpoint.every_steps", K_LONG, 0, F(ckpt_every), 0, BIG},
    {"checkpoint.keep", K_INT, 0, F(ckpt_keep), 0, 1 << 20},
    {"checkpoint.dir", K_SPECIAL, 0, NOF, 0, 0},
    {"watchdog", K_OBJ, 0, NOF, 0, 0},
    {"watchdog.timeout_s", K_DOUBLE, 0, F(watchdog_timeout), 0, HUGE_VAL},
};

/* DeepSpeed keys vlmtrain accepts and ignores (with a warning naming them). */
static const char *const DS_UNUSED[] = {
    "fp16", "amp", "wall_clock_breakdown", "memory_breakdown", "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer", "prescale_gradients",
    "seq_parallel_communication_data_type", "gradient_predivide_factor", "sparse_gradients",
    "dump_state", "flops_profiler", "activation_checkpointing", "tensorboard", "wandb",
    "csv_monitor", "comet", "comms_logger", "monitor_config", "checkpoint.tag_validation",
    "checkpoint.load_universal", "checkpoint.use_node_local_storage", "checkpoint.parallel_write",
    "data_types", "aio",
    "elasticity", "autotuning", "compression_training", "data_efficiency",
    "curriculum_learning", "sparse_attention", "pipeline", "timers", "disable_allgather",
    "load_universal_checkpoint", "use_node_local_storage", "graph_harvesting",
    "zero_optimization.contiguous_gradients", "zero_optimization.overlap_comm",
    "zero_optimization.reduce_scatter", "zero_optimization.reduce_bucket_size",
    "zero_optimization.allgather_bucket_size", "zero_optimization.allgather_partitions",
    "zero_optimization.stage3_prefetch_bucket_size", "zero_optimization.stage3_max_reuse_distance",
    "zero_optimization.stage3_gather_16bit_weights_on_model_save",
    "zero_optimization.stage3_gather_fp16_weights_on_model_save",
    "zero_optimization.sub_group_size", "zero_optimization.offload_optimizer",
    "zero_optimization.offload_param", "zero_optimization.cpu_offload",
    "zero_optimization.cpu_offload_params", "zero_optimization.cpu_offload_use_pin_memory",
    "zero_optimization.load_from_fp32_weights", "zero_optimization.elastic_checkpoint",
    "zero_optimization.round_robin_gradients", "zero_optimization.ignore_unused_parameters",
    "zero_optimization.legacy_stage1", "zero_optimization.zero_hpz_partition_size",
    "zero_optimization.zero_quantized_weights", "zero_optimization.zero_quantized_gradients",
    "zero_optimization.mics_shard_size", "zero_optimization.mics_hierarchical_params_gather",
    "zero_optimization.memory_efficient_linear", "zero_optimization.use_multi_rank_bucket_allreduce",
    "zero_optimization.stage3_module_granularity_threshold",
    "bf16.immediate_grad_update", "bf16.check_grad_overflow", "optimizer.params.torch_adam",
    "optimizer.params.fused", "scheduler.params.warmup_min_lr", "scheduler.params.warmup_max_lr",
    "scheduler.params.warmup_type", "scheduler.params.last_batch_iteration"};

/* Keys of one element of "param_groups". */
static const char *const GROUP_KEYS[] = {"name", "patterns", "lr", "lr_scale", "weight_decay"};

#define NKEYS (sizeof KEYS / sizeof KEYS[0])
#define NUNUSED (sizeof DS_UNUSED / sizeof DS_UNUSED[0])
#define NGROUPKEYS (sizeof GROUP_KEYS / sizeof GROUP_KEYS[0])

void train_config_defaults(train_config *t) {
  memset(t, 0, sizeof *t);
  t->micro_batch = 1;
  t->grad_accum = 1;
  t->train_batch_size = 0;
  t->grad_clip = 1.0;
  t->steps_per_print = 1;
  snprintf(t->opt_type, sizeof t->opt_type, "AdamW");
  t->lr = 1e-5;
  t->beta1 = 0.9;
  t->beta2 = 0.95;
  t->eps = 1e-8;
  t->weight_decay = 0.1;
  snprintf(t->sched_type, sizeof t->sched_type, "cosine");
  t->warmup_steps = 0;
  t->warmup_ratio = 0.0;
  t->train_steps = 100;
  t->total_steps = t->train_steps;
  t->num_cycles = 0.5;
  t->zero_stage = 3;
  t->shard_size = 0;
  t->persistence_threshold = 100000;
  t->max_live_parameters = 1000000000;
  t->replicate_frozen = 0;
  t->bf16 = 0;
  t->seed = 42;
  snprintf(t->preset, sizeof t->preset, "monkey");
  t->n_rules = 0;
  t->n_groups = 0;
  t->recompute_vit = 1;
  t->recompute_llm = 0;
  t->shuffle = 1;
  t->data_seed = 1234;
  t->ckpt_every = 0;
  t->ckpt_keep = 3;
  t->ckpt_dir[0] = '\0';
  t->watchdog_timeout = 600;
  t->json_text = NULL;
}

void train_config_free(train_config *t) {
  free(t->json_text);
  t->json_text = NULL;
}

/* ---- helpers ----------------------------------------------------------- */

static const char *describe(const cJSON *v, char *buf, size_t n) {
  if (!v) snprintf(buf, n, "nothing");
  else if (cJSON_IsString(v)) snprintf(buf, n, "string \"%.40s\"", v->valuestring);
  else if (cJSON_IsNumber(v)) snprintf(buf, n, "number %.17g", v->valuedouble);
  else if (cJSON_IsBool(v)) snprintf(buf, n, "%s", cJSON_IsTrue(v) ? "true" : "false");
  else if (cJSON_IsNull(v)) snprintf(buf, n, "null");
  else if (cJSON_IsObject(v)) snprintf(buf, n, "an object");
  else if (cJSON_IsArray(v)) snprintf(buf, n, "an array");
  else snprintf(buf, n, "an invalid value");
  return buf;
}

static int is_auto(const cJSON *v) { return cJSON_IsString(v) && strcmp(v->valuestring, "auto") == 0; }

static const key_spec *find_spec(const char *path) {
  for (size_t i = 0; i < NKEYS; i++)
    if (strcmp(KEYS[i].path, path) == 0) return &KEYS[i];
  return NULL;
}

static int is_ds_unused(const char *path) {
  for (size_t i = 0; i < NUNUSED; i++)
    if (strcmp(DS_UNUSED[i], path) == 0) return 1;
  return 0;
}

/* Edit distance (for "did you mean"); strings are short key paths. */
static int edit_distance(const char *a, const char *b) {
  size_t na = strlen(a), nb = strlen(b);
  if (na > 120 || nb > 120) return 1000;
  int row[128];
  for (size_t j = 0; j <= nb; j++) row[j] = (int)j;
  for (size_t i = 1; i <= na; i++) {
    int diag = row[0];
    row[0] = (int)i;
    for (size_t j = 1; j <= nb; j++) {
      int up = row[j];
      int best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[nb];
}

/* The known key path closest to `path` (distance <= 2), or NULL. */
static const char *suggest(const char *path) {
  const char *best = NULL;
  int bestd = 3;
  for (size_t i = 0; i < NKEYS; i++) {
    int d = edit_distance(path, KEYS[i].path);
    if (d < bestd) bestd = d, best = KEYS[i].path;
  }
  return best;
}

/* Collected unknown keys: message text and count. */
typedef struct {
  char text[900];
  size_t len;
  int count, shown;
} unknown_list;

static void add_unknown(unknown_list *u, const char *path, const char *hint) {
  u->count++;
  char item[400];
  if (hint)
    snprintf(item, sizeof item, "%s\"%s\" (did you mean \"%s\"?)", u->count > 1 ? ", " : "", path,
             hint);
  else
    snprintf(item, sizeof item, "%s\"%s\"", u->count > 1 ? ", " : "", path);
  size_t n = strlen(item);
  if (u->len + n + 40 < sizeof u->text) {
    memcpy(u->text + u->len, item, n + 1);
    u->len += n;
    u->shown++;
  }
}

/* Pass 1: walks the object at `prefix` ("" or "a.b."), records unknown keys,
 * warns about unused DeepSpeed keys, rejects duplicate keys. */
static int walk_keys(const cJSON *obj, const char *prefix, const char *what, unknown_list *u) {
  for (const cJSON *a = obj->child; a; a = a->next) {
    for (const cJSON *b = a->next; b; b = b->next)
      if (strcmp(a->string, b->string) == 0)
        VLM_FAIL("%s: duplicate key \"%s%s\"", what, prefix, a->string);
    char path[512];
    if (snprintf(path, sizeof path, "%s%s", prefix, a->string) >= (int)sizeof path) {
      add_unknown(u, "(a key path longer than 511 characters)", NULL);
      continue;
    }
    const key_spec *s = find_spec(path);
    if (!s && is_ds_unused(path)) {
      if (!is_auto(a))
        vlm_warn("%s: DeepSpeed key \"%s\" is not used by vlmtrain (ignored)\n", what, path);
      continue;
    }
    if (!s) {
      add_unknown(u, path, suggest(path));
      continue;
    }
    if (s->kind == K_OBJ) {
      if (cJSON_IsObject(a)) { /* a wrong type is reported by pass 2 */
        char sub[520];
        snprintf(sub, sizeof sub, "%s.", path);
        VLM_CHECK(walk_keys(a, sub, what, u));
      }
    } else if (strcmp(path, "param_groups") == 0 && cJSON_IsArray(a)) {
      int i = 0;
      for (const cJSON *g = a->child; g; g = g->next, i++) {
        if (!cJSON_IsObject(g)) continue;
        for (const cJSON *k = g->child; k; k = k->next) {
          for (const cJSON *k2 = k->next; k2; k2 = k2->next)
            if (strcmp(k->string, k2->string) == 0)
              VLM_FAIL("%s: duplicate key \"param_groups[%d].%s\"", what, i, k->string);
          int known = 0;
          for (size_t j = 0; j < NGROUPKEYS; j++)
            if (strcmp(k->string, GROUP_KEYS[j]) == 0) known = 1;
          if (known) continue;
          char gp[700], hp[700];
          snprintf(gp, sizeof gp, "param_groups[%d].%.500s", i, k->string);
          const char *hint = NULL;
          int bestd = 3;
          for (size_t j = 0; j < NGROUPKEYS; j++) {
            int d = edit_distance(k->string, GROUP_KEYS[j]);
            if (d < bestd) bestd = d, hint = GROUP_KEYS[j];
          }
          if (hint) snprintf(hp, sizeof hp, "param_groups[%d].%s", i, hint);
          add_unknown(u, gp, hint ? hp : NULL);
        }
      }
    }
  }
  return 0;
}

/* The item at a dotted key path, or NULL when absent. */
static const cJSON *get_path(const cJSON *root, const char *path) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s", path);
  const cJSON *cur = root;
  char *save = NULL;
  for (char *tok = strtok_r(buf, ".", &save); tok; tok = strtok_r(NULL, ".", &save)) {
    if (!cJSON_IsObject(cur)) return NULL;
    cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
    if (!cur) return NULL;
  }
  return cur;
}

static int type_error(const char *what, const char *path, const char *expected, const cJSON *v,
                      int ds) {
  char d[96];
  VLM_FAIL("%s: key \"%s\": expected %s, found %s%s", what, path, expected,
           describe(v, d, sizeof d),
           (!ds && is_auto(v)) ? " (\"auto\" is accepted only for DeepSpeed keys)" : "");
}

static int get_number(const cJSON *v, const char *what, const char *path, int integer, int ds,
                      double lo, double hi, double *out) {
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) ||
      (integer && v->valuedouble != floor(v->valuedouble)))
    return type_error(what, path, integer ? "an integer" : "a number", v, ds);
  double x = v->valuedouble;
  if (x < lo || x > hi) {
    if (hi == HUGE_VAL && lo > 0 && lo < 1e-200)
      VLM_FAIL("%s: key \"%s\" must be > 0, found %.17g", what, path, x);
    if (hi == HUGE_VAL || hi >= BIG)
      VLM_FAIL("%s: key \"%s\" must be >= %.17g, found %.17g", what, path, lo, x);
    VLM_FAIL("%s: key \"%s\" must be in [%.17g, %.17g], found %.17g", what, path, lo, hi, x);
  }
  *out = x;
  return 0;
}

/* Copies a JSON string into dst[cap]; fails when it does not fit or is empty. */
static int get_string(const cJSON *v, const char *what, const char *path, char *dst, size_t cap) {
  if (!cJSON_IsString(v)) return type_error(what, path, "a string", v, 0);
  size_t n = strlen(v->valuestring);
  if (n == 0) VLM_FAIL("%s: key \"%s\": empty string", what, path);
  if (n >= cap)
    VLM_FAIL("%s: key \"%s\": \"%.40s...\" is %zu characters, at most %zu allowed", what, path,
             v->valuestring, n, cap - 1);
  memcpy(dst, v->valuestring, n + 1);
  return 0;
}

static int parse_trainable(train_config *t, const cJSON *v, const char *what) {
  if (cJSON_IsString(v)) {
    const char *s = v->valuestring;
    if (strcmp(s, "monkey") != 0 && strcmp(s, "lora-only") != 0 && strcmp(s, "full") != 0)
      VLM_FAIL("%s: key \"trainable\": unknown preset \"%.60s\" (presets: \"monkey\", "
               "\"lora-only\", \"full\"; or give a list of glob rules)",
               what, s);
    snprintf(t->preset, sizeof t->preset, "%s", s);
    return 0;
  }
  if (!cJSON_IsArray(v))
    return type_error(what, "trainable", "a preset string or a list of glob rules", v, 0);
  int n = cJSON_GetArraySize(v);
  if (n == 0)
    VLM_FAIL("%s: key \"trainable\": empty list; give at least one rule (e.g. \"*\")", what);
  if (n > TC_MAX_RULES)
    VLM_FAIL("%s: key \"trainable\": %d rules, at most %d allowed", what, n, TC_MAX_RULES);
  int i = 0;
  for (const cJSON *r = v->child; r; r = r->next, i++) {
    char path[64];
    snprintf(path, sizeof path, "trainable[%d]", i);
    VLM_CHECK(get_string(r, what, path, t->rules[i], TC_PATTERN_LEN));
    if (strcmp(t->rules[i], "!") == 0)
      VLM_FAIL("%s: key \"%s\": \"!\" needs a pattern after it", what, path);
  }
  t->n_rules = n;
  t->preset[0] = '\0'; /* rules replace the preset */
  return 0;
}

static int parse_groups(train_config *t, const cJSON *v, const char *what) {
  if (!cJSON_IsArray(v)) return type_error(what, "param_groups", "a list of objects", v, 0);
  int n = cJSON_GetArraySize(v);
  if (n > TC_MAX_GROUPS)
    VLM_FAIL("%s: key \"param_groups\": %d groups, at most %d allowed", what, n, TC_MAX_GROUPS);
  int i = 0;
  for (const cJSON *g = v->child; g; g = g->next, i++) {
    param_group_cfg *pg = &t->groups[i];
    char path[96];
    snprintf(path, sizeof path, "param_groups[%d]", i);
    if (!cJSON_IsObject(g)) return type_error(what, path, "an object", g, 0);
    memset(pg, 0, sizeof *pg);
    pg->lr = -1;
    pg->lr_scale = 1;
    pg->weight_decay = -1;
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(g, "name");
    snprintf(path, sizeof path, "param_groups[%d].name", i);
    if (x) VLM_CHECK(get_string(x, what, path, pg->name, sizeof pg->name));
    else snprintf(pg->name, sizeof pg->name, "group%d", i);
    for (int j = 0; j < i; j++)
      if (strcmp(t->groups[j].name, pg->name) == 0)
        VLM_FAIL("%s: key \"%s\": group name \"%s\" is used twice", what, path, pg->name);

    snprintf(path, sizeof path, "param_groups[%d].patterns", i);
    x = cJSON_GetObjectItemCaseSensitive(g, "patterns");
    if (!x) VLM_FAIL("%s: required key \"%s\" is missing", what, path);
    if (!cJSON_IsArray(x)) return type_error(what, path, "a list of glob patterns", x, 0);
    int np = cJSON_GetArraySize(x);
    if (np == 0) VLM_FAIL("%s: key \"%s\": empty list", what, path);
    if (np > TC_MAX_GROUP_PATTERNS)
      VLM_FAIL("%s: key \"%s\": %d patterns, at most %d allowed", what, path, np,
               TC_MAX_GROUP_PATTERNS);
    int j = 0;
    for (const cJSON *p = x->child; p; p = p->next, j++) {
      char pp[128];
      snprintf(pp, sizeof pp, "param_groups[%d].patterns[%d]", i, j);
      VLM_CHECK(get_string(p, what, pp, pg->patterns[j], TC_PATTERN_LEN));
      if (pg->patterns[j][0] == '!')
        VLM_FAIL("%s: key \"%s\": \"%s\": group patterns select, they cannot negate (\"!\")", what,
                 pp, pg->patterns[j]);
    }
    pg->n_patterns = np;

    const cJSON *lr = cJSON_GetObjectItemCaseSensitive(g, "lr");
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(g, "lr_scale");
    if (lr && sc)
      VLM_FAIL("%s: param_groups[%d] (\"%s\") gives both \"lr\" and \"lr_scale\": give one", what,
               i, pg->name);
    if (lr) {
      snprintf(path, sizeof path, "param_groups[%d].lr", i);
      VLM_CHECK(get_number(lr, what, path, 0, 0, 0, HUGE_VAL, &pg->lr));
    }
    if (sc) {
      snprintf(path, sizeof path, "param_groups[%d].lr_scale", i);
      VLM_CHECK(get_number(sc, what, path, 0, 0, 0, HUGE_VAL, &pg->lr_scale));
    }
    x = cJSON_GetObjectItemCaseSensitive(g, "weight_decay");
    if (x) {
      snprintf(path, sizeof path, "param_groups[%d].weight_decay", i);
      VLM_CHECK(get_number(x, what, path, 0, 0, 0, HUGE_VAL, &pg->weight_decay));
    }
  }
  t->n_groups = n;
  return 0;
}

/* Pass 2: the values of every known key present. */
static int read_values(train_config *t, const cJSON *root, const char *what) {
  for (size_t i = 0; i < NKEYS; i++) {
    const key_spec *s = &KEYS[i];
    const cJSON *v = get_path(root, s->path);
    if (!v) continue;
    if (s->kind == K_OBJ) {
      if (!cJSON_IsObject(v)) return type_error(what, s->path, "an object", v, 0);
      continue;
    }
    if (s->ds && is_auto(v)) continue; /* DeepSpeed "auto": the default */
    char *field = (char *)t + s->off;
    double x;
    switch (s->kind) {
      case K_INT:
        VLM_CHECK(get_number(v, what, s->path, 1, s->ds, s->lo, s->hi, &x));
        *(int *)field = (int)x;
        break;
      case K_LONG:
        VLM_CHECK(get_number(v, what, s->path, 1, s->ds, s->lo, s->hi, &x));
        *(long *)field = (long)x;
        break;
      case K_DOUBLE:
        VLM_CHECK(get_number(v, what, s->path, 0, s->ds, s->lo, s->hi, &x));
        *(double *)field = x;
        break;
      case K_BOOL:
        if (!cJSON_IsBool(v)) return type_error(what, s->path, "true or false", v, s->ds);
        *(int *)field = cJSON_IsTrue(v) ? 1 : 0;
        break;
      case K_MUST_TRUE:
      case K_MUST_FALSE:
        if (!cJSON_IsBool(v)) return type_error(what, s->path, "true or false", v, s->ds);
        if (cJSON_IsTrue(v) != (s->kind == K_MUST_TRUE))
          VLM_FAIL("%s: key \"%s\": %s is not supported (vlmtrain implements AdamW with bias "
                   "correction)",
                   what, s->path, cJSON_IsTrue(v) ? "true" : "false");
        break;
      default:
        break;
    }
  }

  const cJSON *v = get_path(root, "optimizer.type");
  if (v && !is_auto(v)) {
    char type[64];
    VLM_CHECK(get_string(v, what, "optimizer.type", type, sizeof type));
    /* DeepSpeed's "Adam" is AdamW unless adam_w_mode is false (rejected above). */
    if (strcasecmp(type, "AdamW") != 0 && strcasecmp(type, "Adam") != 0)
      VLM_FAIL("%s: key \"optimizer.type\": \"%s\" is not supported (vlmtrain implements AdamW)",
               what, type);
    snprintf(t->opt_type, sizeof t->opt_type, "AdamW");
  }
  v = get_path(root, "optimizer.params.betas");
  if (v && !is_auto(v)) {
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2)
      return type_error(what, "optimizer.params.betas", "a list of two numbers", v, 1);
    double b[2] = {0, 0};
    VLM_CHECK(get_number(cJSON_GetArrayItem(v, 0), what, "optimizer.params.betas[0]", 0, 1, 0,
                         0.9999999999999999, &b[0]));
    VLM_CHECK(get_number(cJSON_GetArrayItem(v, 1), what, "optimizer.params.betas[1]", 0, 1, 0,
                         0.9999999999999999, &b[1]));
    t->beta1 = b[0];
    t->beta2 = b[1];
  }
  v = get_path(root, "scheduler.type");
  if (v && !is_auto(v)) {
    char type[64];
    VLM_CHECK(get_string(v, what, "scheduler.type", type, sizeof type));
    if (strcmp(type, "cosine") == 0 || strcmp(type, "constant") == 0) {
      snprintf(t->sched_type, sizeof t->sched_type, "%s",
               strcmp(type, "cosine") == 0 ? "cosine" : "constant");
    } else if (strcmp(type, "WarmupLR") == 0) {
      vlm_warn("%s: \"scheduler.type\" \"WarmupLR\" runs as \"constant\": linear warmup over "
               "warmup_num_steps, then the constant lr (DeepSpeed's log-shaped warmup and "
               "warmup_min_lr are not reproduced)\n",
               what);
      snprintf(t->sched_type, sizeof t->sched_type, "constant");
    } else {
      VLM_FAIL("%s: key \"scheduler.type\": \"%s\" is not supported (\"cosine\", \"constant\", "
               "or DeepSpeed's \"WarmupLR\")",
               what, type);
    }
  }
  const cJSON *ws = get_path(root, "scheduler.params.warmup_num_steps");
  const cJSON *wr = get_path(root, "scheduler.params.warmup_ratio");
  if (ws && !is_auto(ws) && wr)
    VLM_FAIL("%s: \"scheduler.params\" gives both \"warmup_num_steps\" and \"warmup_ratio\": give "
             "one",
             what);
  v = get_path(root, "communication_data_type");
  if (v && !is_auto(v)) {
    char type[32];
    VLM_CHECK(get_string(v, what, "communication_data_type", type, sizeof type));
    if (strcmp(type, "fp32") != 0 && strcmp(type, "bf16") != 0)
      VLM_FAIL("%s: key \"communication_data_type\": \"%s\" is not \"fp32\" or \"bf16\"", what,
               type);
    t->comm_bf16 = strcmp(type, "bf16") == 0;
  }
  v = get_path(root, "data.read_mode");
  if (v) {
    char mode[32];
    VLM_CHECK(get_string(v, what, "data.read_mode", mode, sizeof mode));
    if (strcmp(mode, "independent") != 0 && strcmp(mode, "collective") != 0)
      VLM_FAIL("%s: key \"data.read_mode\": \"%s\" is not \"independent\" or \"collective\"", what, mode);
    t->read_collective = strcmp(mode, "collective") == 0;
  }
  v = get_path(root, "checkpoint.dir");
  if (v) VLM_CHECK(get_string(v, what, "checkpoint.dir", t->ckpt_dir, sizeof t->ckpt_dir));
  v = get_path(root, "trainable");
  if (v) VLM_CHECK(parse_trainable(t, v, what));
  v = get_path(root, "param_groups");
  if (v) VLM_CHECK(parse_groups(t, v, what));
  /* total_num_steps defaults to train_steps */
  v = get_path(root, "scheduler.params.total_num_steps");
  if (!v || is_auto(v)) t->total_steps = t->train_steps;
  return 0;
}

int train_config_parse(train_config *t, const char *json_text, const char *what) {
  train_config_defaults(t);
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(json_text, strlen(json_text), &end, 0);
  if (!root) {
    int line = 1, col = 1;
    if (end)
      for (const char *p = json_text; p < end && *p; p++) {
        if (*p == '\n') line++, col = 1;
        else col++;
      }
    VLM_FAIL("%s: invalid JSON near line %d, column %d", what, line, col);
  }
  int rc = -1;
  for (const char *p = end; p && *p; p++)
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      vlm_error_at(__FILE__, __LINE__, __func__, "%s: unexpected text after the JSON value", what);
      goto done;
    }
  if (!cJSON_IsObject(root)) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: the top level must be a JSON object", what);
    goto done;
  }
  unknown_list u;
  memset(&u, 0, sizeof u);
  VLM_CHECK_GOTO(walk_keys(root, "", what, &u), done);
  if (u.count == 1) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: unknown key %s; valid keys are listed in docs/config.md",
                 what, u.text);
    goto done;
  }
  if (u.count > 1) {
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "%s: %d unknown keys: %s%s; valid keys are listed in docs/config.md", what, u.count, u.text,
                 u.shown < u.count ? ", ..." : "");
    goto done;
  }
  VLM_CHECK_GOTO(read_values(t, root, what), done);
  t->json_text = strdup(json_text);
  if (!t->json_text) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: out of memory", what);
    goto done;
  }
  rc = 0;
done:
  cJSON_Delete(root);
  if (rc != 0) {
    train_config_free(t);
    return -1;
  }
  return 0;
}

int train_config_load(train_config *t, const char *path) {
  char *text = NULL;
  train_config_defaults(t);
  VLM_CHECK(config_read_file(path, &text, NULL));
  int rc = train_config_parse(t, text, path);
  free(text);
  VLM_CHECK(rc);
  return 0;
}
