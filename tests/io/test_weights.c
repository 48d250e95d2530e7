/* tests/io/test_weights.c: io/weights.c with the tiny model (registry built
 * from the config given as argv[1]): save + load round-trips every parameter
 * bit-exactly and copies config.json; a sharded directory (index + 2 shards)
 * and a BF16 checkpoint load; a checkpoint without LoRA tensors loads with the
 * adapters initialised (lora_a seeded, lora_b 0, lora_scale 1) and counted;
 * missing, unexpected, wrong-shape, duplicated and mis-indexed tensors are
 * all reported in one error. Files land in io/w/ under the working directory. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/vlm.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "modules/registry.h"

static int n_pass, n_fail;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
  if (ok) n_pass++;
  else n_fail++;
  printf("%s ", ok ? "ok  " : "FAIL");
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  fflush(stdout);
}

static monkey_config g_cfg;
static const char *g_cfg_path;

static int fresh(registry *r) {
  if (registry_build(r, &g_cfg) != 0 || registry_alloc(r) != 0) return -1;
  return 0;
}

/* Items for st_write: parameters [from, to) of r, skipping those `skip` says. */
static int items_of(const registry *r, int from, int to, int (*skip)(const char *),
                    st_write_item *it) {
  int n = 0;
  for (int i = from; i < to; i++) {
    if (skip && skip(r->p[i].name)) continue;
    it[n].name = r->p[i].name;
    it[n].data = registry_param(r, i);
    it[n].ndim = r->p[i].ndim;
    for (int d = 0; d < 4; d++) it[n].shape[d] = r->p[i].shape[d];
    n++;
  }
  return n;
}

static int is_lora(const char *n) { return strstr(n, "lora") != NULL; }

static int write_index(const char *dir, const registry *r, int split, const char *a, const char *b,
                       const char *wrong_name) {
  char path[512];
  snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  fprintf(f, "{\"metadata\": {\"total_size\": %ld}, \"weight_map\": {", r->n_params * 4);
  for (int i = 0; i < r->n; i++) {
    const char *file = i < split ? a : b;
    if (wrong_name && strcmp(r->p[i].name, wrong_name) == 0) file = i < split ? b : a;
    fprintf(f, "%s\"%s\": \"%s\"", i ? ", " : "", r->p[i].name, file);
  }
  fprintf(f, "}}\n");
  return fclose(f);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_weights CONFIG.json\n");
    return 2;
  }
  g_cfg_path = argv[1];
  if (monkey_config_load(&g_cfg, g_cfg_path) != 0) return 2;
  mkdir("io", 0755);
  registry r, q;
  if (fresh(&r) != 0) return 2;
  registry_init_random(&r, &g_cfg, 1234);
  st_write_item *it = malloc((size_t)(r.n + 4) * sizeof *it);
  weights_load_stats st;

  /* 1. save + load */
  int rc = weights_save_hf_dir(&r, "io/w/full/nested", g_cfg_path);
  int ok = rc == 0 && fresh(&q) == 0 &&
           weights_load_hf_dir(&q, "io/w/full/nested", 9, &st) == 0 &&
           memcmp(q.params, r.params, (size_t)r.n_params * 4) == 0;
  check(ok && st.n_loaded == r.n && st.n_lora_init == 0 && st.n_files == 1,
        "save + load round-trips all %d tensors (%ld values) bit-exactly, creating the directory", r.n,
        r.n_params);
  registry_free(&q);
  char *a = NULL, *b = NULL;
  long la = 0, lb = 0;
  ok = config_read_file(g_cfg_path, &a, &la) == 0 &&
       config_read_file("io/w/full/nested/config.json", &b, &lb) == 0 && la == lb && memcmp(a, b, (size_t)la) == 0;
  free(a);
  free(b);
  check(ok, "config.json is a byte copy of the model config");

  /* 2. shards with an index */
  mkdir("io/w", 0755);
  mkdir("io/w/sharded", 0755);
  int split = r.n / 2;
  int n1 = items_of(&r, 0, split, NULL, it);
  rc = st_write("io/w/sharded/model-00001-of-00002.safetensors", it, n1, ST_F32);
  int n2 = items_of(&r, split, r.n, NULL, it);
  rc |= st_write("io/w/sharded/model-00002-of-00002.safetensors", it, n2, ST_BF16);
  rc |= write_index("io/w/sharded", &r, split, "model-00001-of-00002.safetensors",
                    "model-00002-of-00002.safetensors", NULL);
  ok = rc == 0 && fresh(&q) == 0 && weights_load_hf_dir(&q, "io/w/sharded", 9, &st) == 0;
  int exact = ok, close_enough = ok;
  for (int i = 0; ok && i < r.n; i++) {
    const float *x = registry_param(&r, i), *y = registry_param(&q, i);
    for (long k = 0; k < r.p[i].numel; k++) {
      if (i < split) exact &= x[k] == y[k];
      else close_enough &= fabsf(x[k] - y[k]) <= fabsf(x[k]) * 0x1p-8f;
    }
  }
  check(ok && exact && close_enough && st.n_files == 2 && st.n_loaded == r.n,
        "index + 2 shards (F32 and BF16) load: %d files", st.n_files);
  registry_free(&q);

  /* 3. no LoRA tensors in the checkpoint */
  mkdir("io/w/nolora", 0755);
  int n = items_of(&r, 0, r.n, is_lora, it);
  rc = st_write("io/w/nolora/model.safetensors", it, n, ST_F32);
  long n_lora = 0;
  for (int i = 0; i < r.n; i++) n_lora += is_lora(r.p[i].name);
  ok = rc == 0 && fresh(&q) == 0 && weights_load_hf_dir(&q, "io/w/nolora", 77, &st) == 0;
  int lora_ok = ok;
  registry ref;
  if (ok && fresh(&ref) == 0) {
    for (int i = 0; i < r.n; i++) {
      const param_info *p = &r.p[i];
      const float *y = registry_param(&q, i);
      if (!is_lora(p->name)) {
        lora_ok &= memcmp(y, registry_param(&r, i), (size_t)p->numel * 4) == 0;
        continue;
      }
      registry_init_lora_param(&ref, i, 77);
      lora_ok &= memcmp(y, registry_param(&ref, i), (size_t)p->numel * 4) == 0;
      size_t L = strlen(p->name);
      if (L > 10 && strcmp(p->name + L - 10, "lora_scale") == 0) lora_ok &= y[0] == 1.0f;
      if (strstr(p->name, "lora_b")) lora_ok &= y[0] == 0.0f && y[p->numel - 1] == 0.0f;
      if (strstr(p->name, "lora_a")) lora_ok &= y[0] != 0.0f;
    }
    registry_free(&ref);
  }
  check(lora_ok && st.n_lora_init == n_lora && st.n_loaded == r.n - n_lora,
        "checkpoint without LoRA: %ld adapters initialised (seeded), the rest loaded", st.n_lora_init);
  registry_free(&q);

  /* 4. everything wrong at once: 3 missing, 2 unexpected, 1 wrong shape */
  mkdir("io/w/bad", 0755);
  n = items_of(&r, 3, r.n, NULL, it); /* drop the first 3 (non-LoRA stem) tensors */
  static float extra[6];
  it[n++] = (st_write_item){.name = "transformer.visual.not_a_param", .data = extra, .ndim = 1, .shape = {6}};
  it[n++] = (st_write_item){.name = "lm_head.bias", .data = extra, .ndim = 1, .shape = {6}};
  int wi = registry_find(&r, "transformer.ln_f.weight");
  for (int i = 0; i < n; i++)
    if (strcmp(it[i].name, "transformer.ln_f.weight") == 0) it[i].shape[0] = r.p[wi].shape[0] - 1;
  rc = st_write("io/w/bad/model.safetensors", it, n, ST_F32);
  vlm_set_quiet_errors(1);
  fresh(&q);
  printf("       (the problem list below is expected)\n");
  fflush(stdout);
  rc = weights_load_hf_dir(&q, "io/w/bad", 1, &st);
  const char *msg = vlm_last_error();
  check(rc != 0 && strstr(msg, "3 missing") && strstr(msg, "2 unexpected") &&
            strstr(msg, "1 wrong shape") && strstr(msg, r.p[0].name) &&
            strstr(msg, "transformer.visual.not_a_param"),
        "missing, unexpected and wrong-shape tensors reported together");
  printf("       -> %s\n", msg);
  registry_free(&q);

  /* 5. one wrong shape alone: names tensor, file, expected and found */
  n = items_of(&r, 0, r.n, NULL, it);
  for (int i = 0; i < n; i++)
    if (strcmp(it[i].name, "transformer.ln_f.weight") == 0) it[i].shape[0] += 2;
  mkdir("io/w/shape", 0755);
  static float big[4096];
  for (int i = 0; i < n; i++)
    if (strcmp(it[i].name, "transformer.ln_f.weight") == 0) it[i].data = big;
  st_write("io/w/shape/model.safetensors", it, n, ST_F32);
  fresh(&q);
  rc = weights_load_hf_dir(&q, "io/w/shape", 1, &st);
  char want_e[64], want_f[64];
  snprintf(want_e, sizeof want_e, "expects shape [%ld]", r.p[wi].shape[0]);
  snprintf(want_f, sizeof want_f, "the file has [%ld]", r.p[wi].shape[0] + 2);
  msg = vlm_last_error();
  check(rc != 0 && strstr(msg, "transformer.ln_f.weight") && strstr(msg, "io/w/shape/model.safetensors") &&
            strstr(msg, want_e) && strstr(msg, want_f),
        "a wrong shape names the tensor, the file, expected and found shapes");
  printf("       -> %s\n", msg);
  registry_free(&q);

  /* 6. an index that maps a tensor to the wrong shard */
  mkdir("io/w/badindex", 0755);
  n1 = items_of(&r, 0, split, NULL, it);
  st_write("io/w/badindex/a.safetensors", it, n1, ST_F32);
  n2 = items_of(&r, split, r.n, NULL, it);
  st_write("io/w/badindex/b.safetensors", it, n2, ST_F32);
  write_index("io/w/badindex", &r, split, "a.safetensors", "b.safetensors", r.p[1].name);
  fresh(&q);
  rc = weights_load_hf_dir(&q, "io/w/badindex", 1, &st);
  msg = vlm_last_error();
  check(rc != 0 && strstr(msg, "index") && strstr(msg, r.p[1].name), "an index that disagrees with its shards");
  printf("       -> %s\n", msg);
  registry_free(&q);

  /* 7. the same tensor in two shards */
  mkdir("io/w/twice", 0755);
  n1 = items_of(&r, 0, split + 1, NULL, it);
  st_write("io/w/twice/a.safetensors", it, n1, ST_F32);
  n2 = items_of(&r, split, r.n, NULL, it);
  st_write("io/w/twice/b.safetensors", it, n2, ST_F32);
  write_index("io/w/twice", &r, split, "a.safetensors", "b.safetensors", NULL);
  fresh(&q);
  rc = weights_load_hf_dir(&q, "io/w/twice", 1, &st);
  msg = vlm_last_error();
  check(rc != 0 && strstr(msg, r.p[split].name), "a tensor present in two shards is reported");
  printf("       -> %s\n", msg);

  /* 8. nothing there; unallocated registry; a shard that is not a file name */
  mkdir("io/w/empty", 0755);
  rc = weights_load_hf_dir(&q, "io/w/empty", 1, &st);
  check(rc != 0 && strstr(vlm_last_error(), "neither model.safetensors nor"), "an empty directory");
  registry_free(&q);
  registry_build(&q, &g_cfg);
  rc = weights_load_hf_dir(&q, "io/w/full/nested", 1, &st);
  check(rc != 0 && strstr(vlm_last_error(), "registry_alloc"), "an unallocated registry");
  registry_free(&q);
  mkdir("io/w/escape", 0755);
  FILE *f = fopen("io/w/escape/model.safetensors.index.json", "w");
  fprintf(f, "{\"weight_map\": {\"lm_head.weight\": \"../full/nested/model.safetensors\"}}");
  fclose(f);
  fresh(&q);
  rc = weights_load_hf_dir(&q, "io/w/escape", 1, &st);
  check(rc != 0 && strstr(vlm_last_error(), "same directory"), "an index naming a file outside DIR");
  registry_free(&q);
  vlm_set_quiet_errors(0);

  free(it);
  registry_free(&r);
  printf("%d passed, %d failed\n", n_pass, n_fail);
  return n_fail ? 1 : 0;
}
