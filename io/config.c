/* io/config.c: reads, validates and writes the Monkey-format model config
 * (HF config.json). Every dimension of the model comes from here; derived
 * sizes (head dims, MLP widths, window grid, image slots, special token ids)
 * are computed once in monkey_config_parse. Unknown top-level keys are fine
 * (HF configs carry many); unknown keys inside "visual" are warnings. This file
 * does not know about parameters or tensors (modules/registry.c does). */
#define _POSIX_C_SOURCE 200809L
#include "io/config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/vlm.h"

/* Upper bound for every integer in the config: keeps derived products (slots,
 * widths) far from int overflow. */
#define CFG_INT_MAX (1 << 24)

int config_read_file(const char *path, char **text, long *len) {
  *text = NULL;
  if (len) *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) VLM_FAIL("%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    fclose(f);
    VLM_FAIL("%s: not a regular file", path);
  }
  long n = (long)sb.st_size;
  char *buf = malloc((size_t)n + 1);
  if (!buf) {
    fclose(f);
    VLM_FAIL("%s: out of memory reading %ld bytes", path, n);
  }
  size_t got = fread(buf, 1, (size_t)n, f);
  int err = ferror(f);
  fclose(f);
  if (err || got != (size_t)n) {
    free(buf);
    VLM_FAIL("%s: read %zu of %ld bytes", path, got, n);
  }
  buf[n] = '\0';
  if (memchr(buf, '\0', (size_t)n)) {
    free(buf);
    VLM_FAIL("%s: contains a NUL byte: not a text (JSON) file", path);
  }
  *text = buf;
  if (len) *len = n;
  return 0;
}

/* What a JSON value is, for error messages: `string "abc"`, `number 1.5`, ... */
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

/* Parses JSON text; on a syntax error names line and column. */
static int parse_json(const char *text, const char *what, cJSON **out) {
  const char *end = NULL;
  *out = cJSON_ParseWithLengthOpts(text, strlen(text), &end, 0);
  if (!*out) {
    int line = 1, col = 1;
    if (end)
      for (const char *p = text; p < end && *p; p++) {
        if (*p == '\n') line++, col = 1;
        else col++;
      }
    VLM_FAIL("%s: invalid JSON near line %d, column %d", what, line, col);
  }
  for (const char *p = end; p && *p; p++)
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      cJSON_Delete(*out);
      *out = NULL;
      VLM_FAIL("%s: unexpected text after the JSON value", what);
    }
  if (!cJSON_IsObject(*out)) {
    cJSON_Delete(*out);
    *out = NULL;
    VLM_FAIL("%s: the top level must be a JSON object", what);
  }
  return 0;
}

/* Fails when an object holds the same key twice (cJSON keeps both). */
static int check_duplicates(const cJSON *obj, const char *what, const char *prefix) {
  for (const cJSON *a = obj->child; a; a = a->next)
    for (const cJSON *b = a->next; b; b = b->next)
      if (a->string && b->string && strcmp(a->string, b->string) == 0)
        VLM_FAIL("%s: duplicate key \"%s%s\"", what, prefix, a->string);
  return 0;
}

/* An integer key in [lo, hi]. required == 0: absent keeps *out. */
static int get_int(const cJSON *obj, const char *key, const char *prefix, const char *what,
                   int required, long lo, long hi, int *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  char d[96];
  if (!v) {
    if (required) VLM_FAIL("%s: required key \"%s%s\" is missing", what, prefix, key);
    return 0;
  }
  if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
      fabs(v->valuedouble) > 1e15)
    VLM_FAIL("%s: key \"%s%s\": expected an integer, found %s", what, prefix, key,
             describe(v, d, sizeof d));
  double x = v->valuedouble;
  if (x < (double)lo || x > (double)hi)
    VLM_FAIL("%s: key \"%s%s\" must be in [%ld, %ld], found %.17g", what, prefix, key, lo, hi, x);
  *out = (int)x;
  return 0;
}

/* A number key, finite, > 0 when positive is set. */
static int get_double(const cJSON *obj, const char *key, const char *prefix, const char *what,
                      int positive, double *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  char d[96];
  if (!v) VLM_FAIL("%s: required key \"%s%s\" is missing", what, prefix, key);
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
    VLM_FAIL("%s: key \"%s%s\": expected a number, found %s", what, prefix, key,
             describe(v, d, sizeof d));
  if (positive && !(v->valuedouble > 0))
    VLM_FAIL("%s: key \"%s%s\" must be > 0, found %.17g", what, prefix, key, v->valuedouble);
  *out = v->valuedouble;
  return 0;
}

static const char *const VISUAL_KEYS[] = {
    "width",      "layers",         "heads",           "patch_size", "mlp_ratio",
    "output_dim", "image_size",     "image_start_id",  "lora_repeat_num",
    "n_queries",  "window_size",    "resampler_heads", "lora_rank",  "lora_mlp_rank"};

static int parse_visual(visual_config *v, const cJSON *vis, const char *what) {
  const char *p = "visual.";
  VLM_CHECK(check_duplicates(vis, what, p));
  for (const cJSON *it = vis->child; it; it = it->next) {
    int known = 0;
    for (size_t i = 0; i < sizeof VISUAL_KEYS / sizeof VISUAL_KEYS[0]; i++)
      if (strcmp(it->string, VISUAL_KEYS[i]) == 0) known = 1;
    if (!known) vlm_warn("%s: unknown key \"visual.%s\" ignored\n", what, it->string);
  }
  VLM_CHECK(get_int(vis, "width", p, what, 1, 1, CFG_INT_MAX, &v->width));
  VLM_CHECK(get_int(vis, "layers", p, what, 1, 1, 4096, &v->layers));
  VLM_CHECK(get_int(vis, "heads", p, what, 1, 1, 4096, &v->heads));
  VLM_CHECK(get_int(vis, "patch_size", p, what, 1, 1, 4096, &v->patch_size));
  VLM_CHECK(get_double(vis, "mlp_ratio", p, what, 1, &v->mlp_ratio));
  VLM_CHECK(get_int(vis, "output_dim", p, what, 1, 1, CFG_INT_MAX, &v->output_dim));
  VLM_CHECK(get_int(vis, "image_size", p, what, 1, 1, 1 << 16, &v->image_size));
  VLM_CHECK(get_int(vis, "image_start_id", p, what, 1, 1, CFG_INT_MAX, &v->image_start_id));
  VLM_CHECK(get_int(vis, "lora_repeat_num", p, what, 1, 1, 4096, &v->lora_repeat_num));
  /* optional keys, upstream's hard-coded values by default */
  v->n_queries = 256;
  v->window_size = 448;
  v->resampler_heads = v->output_dim / 128;
  v->lora_rank = 16;
  v->lora_mlp_rank = 32;
  VLM_CHECK(get_int(vis, "n_queries", p, what, 0, 1, 1 << 20, &v->n_queries));
  VLM_CHECK(get_int(vis, "window_size", p, what, 0, 1, 1 << 16, &v->window_size));
  VLM_CHECK(get_int(vis, "resampler_heads", p, what, 0, 1, 4096, &v->resampler_heads));
  VLM_CHECK(get_int(vis, "lora_rank", p, what, 0, 1, CFG_INT_MAX, &v->lora_rank));
  VLM_CHECK(get_int(vis, "lora_mlp_rank", p, what, 0, 1, CFG_INT_MAX, &v->lora_mlp_rank));
  if (v->resampler_heads < 1)
    VLM_FAIL("%s: \"visual.output_dim\" %d < 128 gives no default \"visual.resampler_heads\" "
             "(output_dim / 128): set \"visual.resampler_heads\"",
             what, v->output_dim);
  return 0;
}

/* Derived sizes and the consistency checks between keys. */
static int derive_visual(visual_config *v, const char *what) {
  if (v->width % v->heads != 0)
    VLM_FAIL("%s: \"visual.width\" %d is not divisible by \"visual.heads\" %d", what, v->width,
             v->heads);
  v->head_dim = v->width / v->heads;
  double mw = (double)v->width * v->mlp_ratio;
  if (!(mw >= 1.0) || mw > (double)CFG_INT_MAX)
    VLM_FAIL("%s: \"visual.mlp_ratio\" %g gives an MLP width int(%d * %g) out of range [1, %d]",
             what, v->mlp_ratio, v->width, v->mlp_ratio, CFG_INT_MAX);
  v->mlp_width = (int)mw;
  if (v->output_dim % v->resampler_heads != 0)
    VLM_FAIL("%s: \"visual.output_dim\" %d is not divisible by \"visual.resampler_heads\" %d", what,
             v->output_dim, v->resampler_heads);
  if (v->window_size % v->patch_size != 0)
    VLM_FAIL("%s: \"visual.window_size\" %d is not divisible by \"visual.patch_size\" %d", what,
             v->window_size, v->patch_size);
  if (v->image_size < v->window_size)
    VLM_FAIL("%s: \"visual.image_size\" %d is smaller than \"visual.window_size\" %d", what,
             v->image_size, v->window_size);
  v->windows_per_side = (v->image_size - v->window_size) / v->window_size + 1;
  v->n_windows = v->windows_per_side * v->windows_per_side;
  if (v->n_windows != v->lora_repeat_num)
    VLM_FAIL("%s: \"visual.lora_repeat_num\" %d must equal the number of windows %d "
             "(image_size %d / window_size %d gives %d x %d windows, one LoRA set each)",
             what, v->lora_repeat_num, v->n_windows, v->image_size, v->window_size,
             v->windows_per_side, v->windows_per_side);
  if (v->image_size % v->window_size != 0)
    vlm_warn("%s: \"visual.image_size\" %d is not a multiple of \"visual.window_size\" %d: the "
             "last %d pixel rows and columns reach only the global view (upstream semantics)\n",
             what, v->image_size, v->window_size, v->image_size % v->window_size);
  v->grid = v->window_size / v->patch_size;
  v->n_patches = v->grid * v->grid;
  int q = (int)lround(sqrt((double)v->n_queries));
  if (q * q != v->n_queries)
    VLM_FAIL("%s: \"visual.n_queries\" %d must be a perfect square (the queries form a grid)", what,
             v->n_queries);
  v->query_grid = q;
  long slots = (long)(v->n_windows + 1) * v->n_queries;
  if (slots > CFG_INT_MAX)
    VLM_FAIL("%s: (windows + 1) x \"visual.n_queries\" = %ld image slots is too many", what, slots);
  v->img_slots = (int)slots;
  return 0;
}

int monkey_config_parse(monkey_config *c, const char *json_text, const char *what) {
  memset(c, 0, sizeof *c);
  cJSON *root = NULL;
  VLM_CHECK(parse_json(json_text, what, &root));
  int rc = -1;
  const char *p = "";
  VLM_CHECK_GOTO(check_duplicates(root, what, p), done);
  VLM_CHECK_GOTO(get_int(root, "hidden_size", p, what, 1, 1, CFG_INT_MAX, &c->hidden_size), done);
  VLM_CHECK_GOTO(
      get_int(root, "intermediate_size", p, what, 1, 1, CFG_INT_MAX, &c->intermediate_size), done);
  VLM_CHECK_GOTO(get_int(root, "kv_channels", p, what, 1, 1, CFG_INT_MAX, &c->kv_channels), done);
  VLM_CHECK_GOTO(
      get_int(root, "num_attention_heads", p, what, 1, 1, 4096, &c->num_attention_heads), done);
  VLM_CHECK_GOTO(get_int(root, "num_hidden_layers", p, what, 1, 1, 4096, &c->num_hidden_layers),
                 done);
  VLM_CHECK_GOTO(get_double(root, "layer_norm_epsilon", p, what, 1, &c->layer_norm_epsilon), done);
  VLM_CHECK_GOTO(get_double(root, "rotary_emb_base", p, what, 1, &c->rotary_emb_base), done);
  VLM_CHECK_GOTO(get_double(root, "rotary_pct", p, what, 1, &c->rotary_pct), done);
  VLM_CHECK_GOTO(get_int(root, "seq_length", p, what, 1, 1, CFG_INT_MAX, &c->seq_length), done);
  VLM_CHECK_GOTO(get_int(root, "vocab_size", p, what, 1, 1, CFG_INT_MAX, &c->vocab_size), done);

  char d[96];
  const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
  if (tie && !cJSON_IsBool(tie)) {
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "%s: key \"tie_word_embeddings\": expected true or false, found %s", what,
                 describe(tie, d, sizeof d));
    goto done;
  }
  c->tie_word_embeddings = tie && cJSON_IsTrue(tie); /* absent: false (QWenConfig's default) */
  if (c->tie_word_embeddings) {
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "%s: \"tie_word_embeddings\": true is not supported (Monkey's lm_head is a "
                 "separate matrix); set it to false",
                 what);
    goto done;
  }

  const cJSON *vis = cJSON_GetObjectItemCaseSensitive(root, "visual");
  if (!vis) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: required key \"visual\" is missing", what);
    goto done;
  }
  if (!cJSON_IsObject(vis)) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: key \"visual\": expected an object, found %s",
                 what, describe(vis, d, sizeof d));
    goto done;
  }
  VLM_CHECK_GOTO(parse_visual(&c->visual, vis, what), done);
  rc = 0;
done:
  cJSON_Delete(root);
  if (rc != 0) return -1;

  /* language model: derived sizes and checks */
  if (c->hidden_size % c->num_attention_heads != 0)
    VLM_FAIL("%s: \"hidden_size\" %d is not divisible by \"num_attention_heads\" %d", what,
             c->hidden_size, c->num_attention_heads);
  if ((long)c->num_attention_heads * c->kv_channels != c->hidden_size)
    VLM_FAIL("%s: \"hidden_size\" %d must equal \"num_attention_heads\" %d x \"kv_channels\" %d",
             what, c->hidden_size, c->num_attention_heads, c->kv_channels);
  c->head_dim = c->hidden_size / c->num_attention_heads;
  if (c->intermediate_size % 2 != 0)
    VLM_FAIL("%s: \"intermediate_size\" %d must be even (two SwiGLU branches of half each)", what,
             c->intermediate_size);
  c->ffn = c->intermediate_size / 2;
  if (c->rotary_pct > 1.0)
    VLM_FAIL("%s: \"rotary_pct\" must be in (0, 1], found %g", what, c->rotary_pct);
  c->rotary_dim = (int)(c->head_dim * c->rotary_pct);
  if (c->rotary_dim < 2 || c->rotary_dim % 2 != 0)
    VLM_FAIL("%s: \"rotary_pct\" %g gives a rotary dimension int(%d * %g) = %d: it must be even "
             "and at least 2",
             what, c->rotary_pct, c->head_dim, c->rotary_pct, c->rotary_dim);
  VLM_CHECK(derive_visual(&c->visual, what));

  const visual_config *v = &c->visual;
  if ((long)v->image_start_id + 2 >= c->vocab_size)
    VLM_FAIL("%s: \"visual.image_start_id\" %d: <img> %d, </img> %d and <imgpad> %d must lie "
             "inside the vocabulary (\"vocab_size\" %d)",
             what, v->image_start_id, v->image_start_id, v->image_start_id + 1,
             v->image_start_id + 2, c->vocab_size);
  c->img_end_id = v->image_start_id + 1;
  c->img_pad_id = v->image_start_id + 2;
  c->eos_id = 151643 < v->image_start_id ? 151643 : v->image_start_id - 1;
  if ((long)v->img_slots + 2 > c->seq_length)
    vlm_warn("%s: one image takes %d tokens (<img>, %d slots, </img>), more than \"seq_length\" "
             "%d\n",
             what, v->img_slots + 2, v->img_slots, c->seq_length);
  return 0;
}

int monkey_config_load(monkey_config *c, const char *path) {
  char *text = NULL;
  VLM_CHECK(config_read_file(path, &text, NULL));
  int rc = monkey_config_parse(c, text, path);
  free(text);
  VLM_CHECK(rc);
  return 0;
}

int config_write_file(const char *path, const char *buf, long len) {
  size_t n = (size_t)len;
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
    VLM_FAIL("%s: path too long", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) VLM_FAIL("%s: cannot create: %s", tmp, strerror(errno));
  size_t done = 0;
  while (done < n) {
    ssize_t w = write(fd, buf + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int e = errno;
      close(fd);
      unlink(tmp);
      VLM_FAIL("%s: write failed: %s", tmp, strerror(e));
    }
    done += (size_t)w;
  }
  if (fsync(fd) != 0 || close(fd) != 0) {
    int e = errno;
    unlink(tmp);
    VLM_FAIL("%s: fsync/close failed: %s", tmp, strerror(e));
  }
  if (rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    VLM_FAIL("%s: cannot rename %s to it: %s", path, tmp, strerror(e));
  }
  /* the rename is durable once the directory is synced */
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (!slash) snprintf(dir, sizeof dir, ".");
  else if (slash == dir) dir[1] = '\0';
  else *slash = '\0';
  int dfd = open(dir, O_RDONLY | O_DIRECTORY);
  if (dfd < 0) VLM_FAIL("%s: cannot open directory %s to fsync it: %s", path, dir, strerror(errno));
  int rc = fsync(dfd);
  int e = errno;
  close(dfd);
  if (rc != 0 && e != EINVAL) VLM_FAIL("%s: fsync of directory %s failed: %s", path, dir, strerror(e));
  return 0;
}

int monkey_config_write(const monkey_config *c, const char *path) {
  cJSON *root = cJSON_CreateObject();
  cJSON *vis = cJSON_CreateObject();
  if (!root || !vis) {
    cJSON_Delete(root);
    cJSON_Delete(vis);
    VLM_FAIL("%s: out of memory building the config", path);
  }
  const visual_config *v = &c->visual;
  cJSON_AddStringToObject(root, "model_type", "monkey");
  cJSON_AddNumberToObject(root, "hidden_size", c->hidden_size);
  cJSON_AddNumberToObject(root, "intermediate_size", c->intermediate_size);
  cJSON_AddNumberToObject(root, "kv_channels", c->kv_channels);
  cJSON_AddNumberToObject(root, "num_attention_heads", c->num_attention_heads);
  cJSON_AddNumberToObject(root, "num_hidden_layers", c->num_hidden_layers);
  cJSON_AddNumberToObject(root, "layer_norm_epsilon", c->layer_norm_epsilon);
  cJSON_AddNumberToObject(root, "rotary_emb_base", c->rotary_emb_base);
  cJSON_AddNumberToObject(root, "rotary_pct", c->rotary_pct);
  cJSON_AddNumberToObject(root, "seq_length", c->seq_length);
  cJSON_AddNumberToObject(root, "vocab_size", c->vocab_size);
  cJSON_AddBoolToObject(root, "tie_word_embeddings", c->tie_word_embeddings);
  cJSON_AddNumberToObject(vis, "width", v->width);
  cJSON_AddNumberToObject(vis, "layers", v->layers);
  cJSON_AddNumberToObject(vis, "heads", v->heads);
  cJSON_AddNumberToObject(vis, "patch_size", v->patch_size);
  cJSON_AddNumberToObject(vis, "mlp_ratio", v->mlp_ratio);
  cJSON_AddNumberToObject(vis, "output_dim", v->output_dim);
  cJSON_AddNumberToObject(vis, "image_size", v->image_size);
  cJSON_AddNumberToObject(vis, "image_start_id", v->image_start_id);
  cJSON_AddNumberToObject(vis, "lora_repeat_num", v->lora_repeat_num);
  cJSON_AddNumberToObject(vis, "n_queries", v->n_queries);
  cJSON_AddNumberToObject(vis, "window_size", v->window_size);
  cJSON_AddNumberToObject(vis, "resampler_heads", v->resampler_heads);
  cJSON_AddNumberToObject(vis, "lora_rank", v->lora_rank);
  cJSON_AddNumberToObject(vis, "lora_mlp_rank", v->lora_mlp_rank);
  cJSON_AddItemToObject(root, "visual", vis);
  char *text = cJSON_Print(root);
  cJSON_Delete(root);
  if (!text) VLM_FAIL("%s: out of memory printing the config", path);
  size_t n = strlen(text);
  char *buf = malloc(n + 2);
  if (!buf) {
    cJSON_free(text);
    VLM_FAIL("%s: out of memory", path);
  }
  memcpy(buf, text, n);
  buf[n] = '\n';
  buf[n + 1] = '\0';
  cJSON_free(text);
  int rc = config_write_file(path, buf, (long)n + 1);
  free(buf);
  VLM_CHECK(rc);
  return 0;
}
