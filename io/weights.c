/* io/weights.c: moves a model's parameters between the registry and a HF
 * model directory: DIR/model.safetensors, or the shards listed in
 * DIR/model.safetensors.index.json ("weight_map": name -> shard file).
 *
 * Loading opens and validates every file first, matches every tensor to the
 * registry by name, and reports all problems at once (missing names, unexpected
 * names, wrong shapes, names found twice, index entries that disagree with the
 * shards) before any parameter is overwritten. LoRA tensors (names containing
 * "lora") absent from the checkpoint are initialised as upstream does. Saving
 * writes config.json (a byte copy) and one fp32 model.safetensors in registry
 * order. This file does not decide which parameters exist (the registry does). */
#define _POSIX_C_SOURCE 200809L
#include "io/weights.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/vlm.h"
#include "io/config.h"
#include "io/safetensors.h"

#define W_LIST_MAX 20 /* names printed per kind of problem */

static int file_exists(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static void shape_str(int ndim, const long *shape, char *buf, size_t n) {
  size_t k = (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, "%s%ld", i ? ", " : "", shape[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
}

/* The shard files named by an index, in order of first appearance, and the
 * parsed index (kept for the cross-check). */
typedef struct {
  cJSON *root;
  const cJSON *map;
  char **files;
  int n_files;
} shard_index;

static void index_free(shard_index *x) {
  for (int i = 0; i < x->n_files; i++) free(x->files[i]);
  free(x->files);
  cJSON_Delete(x->root);
  memset(x, 0, sizeof *x);
}

static int index_load(shard_index *x, const char *path) {
  memset(x, 0, sizeof *x);
  char *text = NULL;
  VLM_CHECK(config_read_file(path, &text, NULL));
  x->root = cJSON_Parse(text);
  free(text);
  if (!x->root || !cJSON_IsObject(x->root)) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: not a valid JSON object", path);
    goto fail;
  }
  x->map = cJSON_GetObjectItemCaseSensitive(x->root, "weight_map");
  if (!cJSON_IsObject(x->map)) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: \"weight_map\" missing or not an object",
                 path);
    goto fail;
  }
  int n = cJSON_GetArraySize(x->map);
  x->files = calloc((size_t)(n > 0 ? n : 1), sizeof *x->files);
  if (!x->files) goto oom;
  for (const cJSON *e = x->map->child; e; e = e->next) {
    if (!cJSON_IsString(e) || !e->valuestring[0] || strchr(e->valuestring, '/')) {
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "%s: \"weight_map\" entry \"%.100s\": expected the file name of a shard in "
                   "the same directory",
                   path, e->string);
      goto fail;
    }
    for (const cJSON *d = x->map->child; d != e; d = d->next)
      if (strcmp(d->string, e->string) == 0) {
        vlm_error_at(__FILE__, __LINE__, __func__, "%s: \"weight_map\" lists \"%.100s\" twice",
                     path, e->string);
        goto fail;
      }
    int seen = 0;
    for (int i = 0; i < x->n_files && !seen; i++) seen = strcmp(x->files[i], e->valuestring) == 0;
    if (!seen) {
      if (!(x->files[x->n_files] = strdup(e->valuestring))) goto oom;
      x->n_files++;
    }
  }
  if (x->n_files == 0) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: \"weight_map\" is empty", path);
    goto fail;
  }
  return 0;
oom:
  vlm_error_at(__FILE__, __LINE__, __func__, "%s: out of memory", path);
fail:
  index_free(x);
  return -1;
}

/* A list of problem lines, printed (first W_LIST_MAX) before the error. */
typedef struct {
  const char *kind;
  long count;
  char first[400];
} problem_list;

static void problem(problem_list *l, const char *dir, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void problem(problem_list *l, const char *dir, const char *fmt, ...) {
  char line[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (l->count == 0) snprintf(l->first, sizeof l->first, "%.399s", line);
  if (l->count < W_LIST_MAX && vlm_rank() == 0)
    fprintf(stderr, "vlmtrain: %s: %s: %s\n", dir, l->kind, line);
  else if (l->count == W_LIST_MAX && vlm_rank() == 0)
    fprintf(stderr, "vlmtrain: %s: %s: ... (the rest are counted in the error below)\n", dir, l->kind);
  l->count++;
}

static float *full_range(void *ctx, int idx, long *lo, long *hi) {
  registry *r = ctx;
  *lo = 0;
  *hi = r->p[idx].numel;
  return registry_param(r, idx);
}

int weights_load_hf_dir(registry *r, const char *dir, unsigned long seed, weights_load_stats *st) {
  if (!r->params) VLM_FAIL("%s: the registry has no parameter buffer (call registry_alloc)", dir);
  return weights_load_hf_dir_ranges(r, dir, seed, st, full_range, r);
}

int weights_load_hf_dir_ranges(registry *r, const char *dir, unsigned long seed,
                               weights_load_stats *st, weights_range_fn range, void *ctx) {
  weights_load_stats dummy;
  if (!st) st = &dummy;
  memset(st, 0, sizeof *st);

  char single[1200], index_path[1200];
  snprintf(single, sizeof single, "%s/model.safetensors", dir);
  snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", dir);
  shard_index idx = {0};
  int use_index = 0;
  if (file_exists(single)) {
    /* as HF: a single file wins over an index */
  } else if (file_exists(index_path)) {
    VLM_CHECK(index_load(&idx, index_path));
    use_index = 1;
  } else {
    VLM_FAIL("%s: neither model.safetensors nor model.safetensors.index.json found", dir);
  }

  int nf = use_index ? idx.n_files : 1;
  st_file *files = calloc((size_t)nf, sizeof *files);
  int *loc_file = malloc((size_t)(r->n > 0 ? r->n : 1) * sizeof *loc_file);
  int *loc_idx = malloc((size_t)(r->n > 0 ? r->n : 1) * sizeof *loc_idx);
  int n_open = 0, rc = -1;
  if (!files || !loc_file || !loc_idx) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: out of memory", dir);
    goto done;
  }
  for (int i = 0; i < r->n; i++) loc_file[i] = -1, loc_idx[i] = -1;
  for (int f = 0; f < nf; f++) {
    char path[1400];
    if (use_index) snprintf(path, sizeof path, "%s/%s", dir, idx.files[f]);
    else snprintf(path, sizeof path, "%s", single);
    VLM_CHECK_GOTO(st_open(&files[f], path), done);
    n_open++;
  }

  problem_list missing = {.kind = "missing"}, unexpected = {.kind = "unexpected"},
               shape = {.kind = "wrong shape"}, twice = {.kind = "found twice"},
               index_bad = {.kind = "index mismatch"};
  for (int f = 0; f < nf; f++) {
    const st_file *sf = &files[f];
    for (int t = 0; t < sf->n; t++) {
      const st_tensor *tt = &sf->t[t];
      if (use_index) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(idx.map, tt->name);
        if (!m)
          problem(&index_bad, dir, "\"%s\" is in %s but not in the index's weight_map", tt->name,
                  sf->path);
        else if (strcmp(m->valuestring, idx.files[f]) != 0)
          problem(&index_bad, dir, "\"%s\" is in %s but the index maps it to %s", tt->name,
                  sf->path, m->valuestring);
      }
      int ri = registry_find(r, tt->name);
      if (ri < 0) {
        char s[160];
        shape_str(tt->ndim, tt->shape, s, sizeof s);
        problem(&unexpected, dir, "%s %s (in %s)", tt->name, s, sf->path);
        continue;
      }
      if (loc_file[ri] >= 0) {
        problem(&twice, dir, "%s: in %s and in %s", tt->name, files[loc_file[ri]].path, sf->path);
        continue;
      }
      loc_file[ri] = f;
      loc_idx[ri] = t;
      const param_info *p = &r->p[ri];
      int same = p->ndim == tt->ndim;
      for (int d = 0; same && d < p->ndim; d++) same = p->shape[d] == tt->shape[d];
      if (!same) {
        char se[160], sg[160];
        shape_str(p->ndim, p->shape, se, sizeof se);
        shape_str(tt->ndim, tt->shape, sg, sizeof sg);
        problem(&shape, dir, "tensor \"%s\" in %s: the model config expects shape %s, the file has %s",
                tt->name, sf->path, se, sg);
      }
    }
  }
  if (use_index) /* every index entry must be where the index says */
    for (const cJSON *e = idx.map->child; e; e = e->next) {
      int f = 0;
      while (f < nf && strcmp(idx.files[f], e->valuestring) != 0) f++;
      if (f < nf && st_find(&files[f], e->string) < 0)
        problem(&index_bad, dir, "the index maps \"%s\" to %s, which does not hold it", e->string,
                files[f].path);
    }
  long n_lora_missing = 0;
  for (int i = 0; i < r->n; i++) {
    if (loc_file[i] >= 0) continue;
    if (strstr(r->p[i].name, "lora")) {
      n_lora_missing++;
      continue;
    }
    char s[160];
    shape_str(r->p[i].ndim, r->p[i].shape, s, sizeof s);
    problem(&missing, dir, "%s %s", r->p[i].name, s);
  }

  long n_problems = missing.count + unexpected.count + shape.count + twice.count + index_bad.count;
  if (n_problems == 1) {
    const problem_list *only = missing.count ? &missing
                               : unexpected.count ? &unexpected
                               : shape.count      ? &shape
                               : twice.count      ? &twice
                                                  : &index_bad;
    if (only == &shape)
      vlm_error_at(__FILE__, __LINE__, __func__, "%s: %s", dir, only->first);
    else
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "%s: the checkpoint does not match the model config: 1 %s tensor: %s", dir,
                   only->kind, only->first);
    goto done;
  }
  if (n_problems > 1) {
    /* one line: each kind of problem with its count and first case (the
     * first W_LIST_MAX of each were printed above) */
    const problem_list *all[] = {&missing, &unexpected, &shape, &twice, &index_bad};
    char parts[900];
    size_t k = 0;
    for (int i = 0; i < 5; i++) {
      if (all[i]->count == 0 || k >= sizeof parts) continue;
      k += (size_t)snprintf(parts + k, sizeof parts - k, "%s%ld %s (first: %.130s)",
                            k ? "; " : "", all[i]->count, all[i]->kind, all[i]->first);
    }
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "%s: the checkpoint does not match the model config: %s (up to %d of each "
                 "listed above)",
                 dir, parts, W_LIST_MAX);
    goto done;
  }

  for (int i = 0; i < r->n; i++) {
    long lo, hi;
    float *dst = range(ctx, i, &lo, &hi);
    if (loc_file[i] < 0) { /* absent LoRA tensor: initialise the whole tensor, keep the range */
      float *tmp = malloc((size_t)(r->p[i].numel > 0 ? r->p[i].numel : 1) * sizeof(float));
      if (!tmp) {
        vlm_error_at(__FILE__, __LINE__, __func__, "out of memory");
        goto done;
      }
      registry_init_lora_values(r, i, seed, tmp);
      if (hi > lo) memcpy(dst, tmp + lo, (size_t)(hi - lo) * sizeof(float));
      free(tmp);
      st->n_lora_init++;
      continue;
    }
    VLM_CHECK_GOTO(st_read_range_f32(&files[loc_file[i]], loc_idx[i], lo, hi, dst), done);
    st->n_loaded++;
  }
  st->n_files = nf;
  if (st->n_lora_init > 0)
    vlm_log("%s: %ld LoRA tensors absent from the checkpoint, initialised (seed %lu)\n", dir,
            st->n_lora_init, seed);
  rc = 0;
done:
  for (int f = 0; f < n_open; f++) st_close(&files[f]);
  free(files);
  free(loc_file);
  free(loc_idx);
  index_free(&idx);
  return rc;
}

/* mkdir -p */
static int make_dirs(const char *dir) {
  char buf[1200];
  if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) VLM_FAIL("%.100s...: path too long", dir);
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || *p == '\0') {
      char c = *p;
      *p = '\0';
      if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        VLM_FAIL("%s: cannot create directory %s: %s", dir, buf, strerror(errno));
      *p = c;
      if (c == '\0') break;
    }
  }
  struct stat sb;
  if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) VLM_FAIL("%s: exists and is not a directory", dir);
  return 0;
}

int weights_save_hf_dir(const registry *r, const char *dir, const char *config_path) {
  if (!r->params) VLM_FAIL("%s: the registry has no parameter buffer", dir);
  VLM_CHECK(make_dirs(dir));
  char path[1300];
  st_write_item *items = malloc((size_t)(r->n > 0 ? r->n : 1) * sizeof *items);
  if (!items) VLM_FAIL("%s: out of memory", dir);
  for (int i = 0; i < r->n; i++) {
    const param_info *p = &r->p[i];
    items[i].name = p->name;
    items[i].data = registry_param(r, i);
    items[i].ndim = p->ndim;
    for (int d = 0; d < 4; d++) items[i].shape[d] = d < p->ndim ? p->shape[d] : 0;
  }
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  int rc = st_write(path, items, r->n, ST_F32);
  free(items);
  VLM_CHECK(rc);

  char *text = NULL;
  long len = 0;
  VLM_CHECK(config_read_file(config_path, &text, &len));
  snprintf(path, sizeof path, "%s/config.json", dir);
  rc = config_write_file(path, text, len);
  free(text);
  VLM_CHECK(rc);

  snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
  if (file_exists(path))
    vlm_warn("%s: holds an older model.safetensors.index.json; model.safetensors takes precedence "
             "when loading\n",
             dir);
  return 0;
}
