/* io/model_h5.c: vlmtrain's HDF5 model file (io/model_h5.h, docs/formats.md):
 * the validating reader, the loaders for the trainer, the writer used by
 * import and by checkpoints, `import` (HF safetensors -> HDF5) and `export`
 * (HDF5 -> HF safetensors directory).
 *
 * Sharing the work under MPI: every tensor is split evenly over the ranks
 * (ceil(n / size) elements each, as ZeRO does); a rank reads and converts only
 * its part, in pieces of at most PIECE_DEFAULT elements so that memory stays
 * bounded whatever the tensor, and all ranks make the same collective calls
 * (ranks with nothing left take part with empty ranges). Exported safetensors
 * shards are written with MPI-IO, each rank writing its bytes at their offset.
 * Validation that every rank would fail the same way (a bad config, a missing
 * tensor) runs on rank 0 first, so the error is printed once.
 * This file does not decide which tensors a model has: the registry does. */
#define _POSIX_C_SOURCE 200809L
#include "io/model_h5.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/vlm.h"
#include "io/train_config.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "io/model_h5.c assumes a little-endian host (safetensors data is little-endian)"
#endif

#define PIECE_DEFAULT ((long)1 << 24) /* elements per rank per transfer (64 MiB of fp32) */
#define PIECE_MAX ((long)1 << 28)     /* MPI counts are int: stay well below 2^31 bytes */
#define LIST_MAX 20                   /* problems printed per kind */
#define PATH_LEN 1400

/* ------------------------------------------------------------------------------
 * Small helpers. */

/* VLM_CHECK for a collective call that fails on every rank of comm while one
 * rank reports why: only rank 0 of comm adds its trace line. */
#define COLL_CHECK(comm, call)                                         \
  do {                                                                 \
    if ((call) != 0) {                                                 \
      int coll_rank_ = 0;                                              \
      MPI_Comm_rank((comm), &coll_rank_);                              \
      if (coll_rank_ == 0) vlm_trace_at(__FILE__, __LINE__, __func__, #call); \
      return -1;                                                       \
    }                                                                  \
  } while (0)

/* Elements per transfer: PIECE_DEFAULT, or VLMTRAIN_H5_PIECE_ELEMS (tests use
 * small pieces to exercise the multi-piece path). */
static long piece_elems(void) {
  const char *s = getenv("VLMTRAIN_H5_PIECE_ELEMS");
  if (!s || !*s) return PIECE_DEFAULT;
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (!end || *end || v < 1) return PIECE_DEFAULT;
  return v < PIECE_MAX ? v : PIECE_MAX;
}

static void shape_str(int ndim, const long *s, char *buf, size_t n) {
  size_t k = (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, "%s%ld", i ? ", " : "", s[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
}

static int tensor_path(char *buf, size_t n, const char *name) {
  return snprintf(buf, n, "%s/%s", MODEL_H5_GROUP, name) >= (int)n ? -1 : 0;
}

/* The even split of n elements: this rank's [lo, hi). */
static void even_range(long n, int rank, int size, long *lo, long *hi) {
  long chunk = (n + size - 1) / size;
  long a = (long)rank * chunk, b = a + chunk;
  *lo = a < n ? a : n;
  *hi = b < n ? b : n;
}

/* Pieces every rank goes through for ranges of at most max_len elements. */
static long n_pieces(long max_len, long piece) { return max_len > 0 ? (max_len + piece - 1) / piece : 1; }

/* Runs a step that fails the same way on every rank (validation of shared
 * inputs) on rank 0 first, then on the others only if rank 0 succeeded, so
 * its error is printed once. fn must leave nothing to clean up when it fails. */
static int rank0_first(MPI_Comm comm, int (*fn)(void *), void *arg) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  int rc0 = rank == 0 ? fn(arg) : 0;
  MPI_Bcast(&rc0, 1, MPI_INT, 0, comm);
  if (rc0 != 0) return -1;
  int rc = rank == 0 ? 0 : fn(arg), who = -1;
  if (h5u_agree(comm, rc, &who) != 0) {
    if (rank == 0)
      vlm_error_at(__FILE__, __LINE__, __func__, "the same step failed on rank %d (see its message)",
                   who);
    return -1;
  }
  return 0;
}

/* A kind of problem found while matching tensors against the registry: the
 * first LIST_MAX are printed (rank 0), all are counted. */
typedef struct {
  const char *kind;
  int report; /* print the lines (one rank does) */
  long count;
  char first[400];
} problem_list;

static void problem(problem_list *l, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void problem(problem_list *l, const char *where, const char *fmt, ...) {
  char line[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (l->count == 0) snprintf(l->first, sizeof l->first, "%.399s", line);
  if (l->count < LIST_MAX && l->report) fprintf(stderr, "vlmtrain: %s: %s: %s\n", where, l->kind, line);
  else if (l->count == LIST_MAX && l->report)
    fprintf(stderr, "vlmtrain: %s: %s: ... (more, counted below)\n", where, l->kind);
  l->count++;
}

/* One error line summing up the problem lists; -1 if there were any. */
static int problems_report(const char *where, const char *what, problem_list *const *lists, int n) {
  long total = 0;
  for (int i = 0; i < n; i++) total += lists[i]->count;
  if (total == 0) return 0;
  char parts[1200];
  size_t k = 0;
  parts[0] = '\0';
  for (int i = 0; i < n; i++) {
    if (lists[i]->count == 0 || k >= sizeof parts) continue;
    k += (size_t)snprintf(parts + k, sizeof parts - k, "%s%ld %s (first: %.200s)", k ? "; " : "",
                          lists[i]->count, lists[i]->kind, lists[i]->first);
  }
  VLM_FAIL("%s: %s: %s", where, what, parts);
}

/* ------------------------------------------------------------------------------
 * Element conversions (little-endian bit patterns). */

static inline float bits_to_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* Round to nearest even; a NaN stays a (quiet) NaN. */
static uint16_t f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
  return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* st_read_range_f32 (io/safetensors.h) reads elements [lo, hi) of a tensor as fp32. */

/* ------------------------------------------------------------------------------
 * Writing tensors. */

/* Fills dst with elements [lo, hi) of tensor idx; failures go to e. */
typedef int (*fill_fn)(void *ctx, int idx, long lo, long hi, float *dst, h5u_err *e);

/* Writes /tensors/<name of idx> from this rank's [lo, hi), either straight from
 * src (element lo; fill NULL) or through fill into buf (piece elements), in
 * pieces; then the checksum. Every rank makes the same calls. */
static int write_tensor(h5u_file *f, const param_info *p, int idx, long lo, long hi,
                        const float *src, fill_fn fill, void *ctx, float *buf, long piece) {
  const float none = 0.0f;
  char path[PATH_LEN];
  if (tensor_path(path, sizeof path, p->name) != 0) VLM_FAIL("%s: tensor name too long: %.100s", f->path, p->name);
  long len = hi - lo, max_len = 0;
  MPI_Allreduce(&len, &max_len, 1, MPI_LONG, MPI_MAX, f->comm);
  COLL_CHECK(f->comm, h5u_dataset_create_f32(f, path, p->ndim, p->shape));
  uint64_t part = 0;
  for (long k = 0, np = n_pieces(max_len, piece); k < np; k++) {
    long a = lo + k * piece < hi ? lo + k * piece : hi;
    long b = a + piece < hi ? a + piece : hi;
    const float *x = !fill ? (b > a ? src + (a - lo) : &none) : buf;
    if (fill) {
      h5u_err e = {0};
      if (b > a) fill(ctx, idx, a, b, buf, &e);
      COLL_CHECK(f->comm, h5u_finish(f->comm, &e));
    }
    COLL_CHECK(f->comm, h5u_write_range_f32(f, path, a, b, x));
    part += h5u_sum64_part(a, b, x);
  }
  uint64_t sum = 0;
  COLL_CHECK(f->comm, h5u_sum64_reduce(f->comm, part, &sum));
  COLL_CHECK(f->comm, h5u_checksum_write(f, path, h5u_sum64_final(sum, p->numel)));
  return 0;
}

int model_h5_write_header(h5u_file *f, const char *format, long version, const char *config_json) {
  COLL_CHECK(f->comm, h5u_attr_write_string(f, "/", "format", format));
  COLL_CHECK(f->comm, h5u_attr_write_int(f, "/", "version", version));
  COLL_CHECK(f->comm, h5u_attr_write_string(f, "/", MODEL_H5_CONFIG_ATTR, config_json));
  int ex = h5u_exists(f, MODEL_H5_GROUP);
  if (ex < 0) return -1;
  if (!ex) COLL_CHECK(f->comm, h5u_group_create(f, MODEL_H5_GROUP));
  return 0;
}

int model_h5_write_tensors(h5u_file *f, const registry *r, model_h5_range_fn range, void *ctx) {
  long piece = piece_elems();
  for (int i = 0; i < r->n; i++) {
    long lo = 0, hi = 0;
    const float *x = range(ctx, i, &lo, &hi);
    h5u_err e = {0};
    if (lo < 0 || hi < lo || hi > r->p[i].numel || (hi > lo && !x))
      h5u_err_set(&e, __FILE__, __LINE__, __func__,
                  "%s: tensor %s: bad range [%ld, %ld) of %ld elements to write", f->path,
                  r->p[i].name, lo, hi, r->p[i].numel);
    COLL_CHECK(f->comm, h5u_finish(f->comm, &e));
    COLL_CHECK(f->comm, write_tensor(f, &r->p[i], i, lo, hi, x, NULL, NULL, NULL, piece));
  }
  return 0;
}

typedef struct {
  const registry *r;
  int rank, size;
} even_ctx;

static float *even_share(void *ctx, int idx, long *lo, long *hi) {
  even_ctx *c = ctx;
  even_range(c->r->p[idx].numel, c->rank, c->size, lo, hi);
  return registry_param(c->r, idx) + *lo;
}

int model_h5_save(const registry *r, const char *path, const char *config_json, MPI_Comm comm) {
  h5u_file f;
  COLL_CHECK(comm, h5u_create_tmp(&f, path, comm));
  even_ctx c = {.r = r};
  MPI_Comm_rank(comm, &c.rank);
  MPI_Comm_size(comm, &c.size);
  int ok = r->params != NULL;
  if (!ok && c.rank == 0) vlm_error_at(__FILE__, __LINE__, __func__, "%s: the registry has no parameters", path);
  ok = ok && model_h5_write_header(&f, MODEL_H5_FORMAT, MODEL_H5_VERSION, config_json) == 0 &&
       model_h5_write_tensors(&f, r, even_share, &c) == 0;
  COLL_CHECK(comm, h5u_commit(&f, ok));
  return ok ? 0 : -1;
}

/* ------------------------------------------------------------------------------
 * Reading: open and validate. */

static int accepted_format(const char *fmt) {
  return strcmp(fmt, MODEL_H5_FORMAT) == 0 || strcmp(fmt, MODEL_H5_CHECKPOINT_FORMAT) == 0;
}

static int parse_config_step(void *arg) {
  model_h5 *m = arg;
  char what[H5U_PATH_LEN + 64];
  snprintf(what, sizeof what, "%s: root attribute %s", m->f.path, MODEL_H5_CONFIG_ATTR);
  VLM_CHECK(monkey_config_parse(&m->cfg, m->config_json, what));
  if (registry_build(&m->reg, &m->cfg) != 0) {
    registry_free(&m->reg);
    VLM_FAIL("%s: cannot build the parameter registry of its model config", m->f.path);
  }
  return 0;
}

/* Every name in /tensors is a registry tensor with its shape; every registry
 * tensor is there. All ranks run it (the shape queries are collective); only
 * rank 0 prints the problem lines. */
static int match_tensors(model_h5 *m) {
  char **names = NULL;
  int n_names = 0, rc = -1;
  COLL_CHECK(m->f.comm, h5u_list(&m->f, MODEL_H5_GROUP, &names, &n_names));
  char *seen = calloc((size_t)(m->reg.n > 0 ? m->reg.n : 1), 1);
  if (!seen) {
    h5u_names_free(names, n_names);
    VLM_FAIL("%s: out of memory", m->f.path);
  }
  const int report = m->f.rank == 0;
  problem_list missing = {.kind = "missing", .report = report},
               unexpected = {.kind = "unexpected", .report = report},
               shape = {.kind = "wrong shape", .report = report};
  for (int k = 0; k < n_names; k++) {
    char path[PATH_LEN];
    int ndim = 0;
    long s[H5U_MAX_DIMS];
    if (tensor_path(path, sizeof path, names[k]) != 0) {
      problem(&unexpected, m->f.path, "%.100s... (name too long)", names[k]);
      continue;
    }
    if (h5u_dataset_shape(&m->f, path, &ndim, s) != 0) goto done; /* not float32, not a dataset */
    int i = registry_find(&m->reg, names[k]);
    char got[200];
    shape_str(ndim, s, got, sizeof got);
    if (i < 0) {
      problem(&unexpected, m->f.path, "%s %s is not a tensor of the model its config describes", path, got);
      continue;
    }
    seen[i] = 1;
    const param_info *p = &m->reg.p[i];
    int same = p->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = p->shape[d] == s[d];
    if (!same) {
      char want[200];
      shape_str(p->ndim, p->shape, want, sizeof want);
      problem(&shape, m->f.path, "%s has shape %s, the model config expects %s", path, got, want);
    }
  }
  for (int i = 0; i < m->reg.n; i++)
    if (!seen[i]) {
      char want[200];
      shape_str(m->reg.p[i].ndim, m->reg.p[i].shape, want, sizeof want);
      problem(&missing, m->f.path, "%s/%s %s is not in the file", MODEL_H5_GROUP, m->reg.p[i].name, want);
    }
  problem_list *all[] = {&missing, &unexpected, &shape};
  if (report) {
    if (problems_report(m->f.path, "the tensors do not match its model config", all, 3) != 0) goto done;
  } else if (missing.count + unexpected.count + shape.count > 0) {
    goto done;
  }
  rc = 0;
done:
  free(seen);
  h5u_names_free(names, n_names);
  return rc;
}

int model_h5_open(model_h5 *m, const char *path, MPI_Comm comm) {
  memset(m, 0, sizeof *m);
  m->f.id = -1;
  COLL_CHECK(comm, h5u_open(&m->f, path, comm, 0));
  h5u_err e = {0};
  char *fmt = NULL;
  int ex = h5u_attr_exists(&m->f, "/", "format");
  if (ex < 0) goto fail;
  if (ex == 0) {
    h5u_err_set(&e, __FILE__, __LINE__, __func__,
                "%s: no root attribute 'format': not a vlmtrain model file (expected format = "
                "\"%s\", or a vlmtrain checkpoint)",
                path, MODEL_H5_FORMAT);
    h5u_finish(comm, &e);
    goto fail;
  }
  if (h5u_attr_read_string(&m->f, "/", "format", &fmt) != 0) goto fail;
  snprintf(m->format, sizeof m->format, "%s", fmt);
  if (!accepted_format(fmt)) {
    h5u_err_set(&e, __FILE__, __LINE__, __func__,
                "%s: root attribute 'format' is \"%.100s\", expected \"%s\" (or \"%s\"): not a "
                "vlmtrain model file",
                path, fmt, MODEL_H5_FORMAT, MODEL_H5_CHECKPOINT_FORMAT);
    h5u_finish(comm, &e);
    goto fail;
  }
  if (h5u_attr_read_int(&m->f, "/", "version", &m->version) != 0) goto fail;
  if (strcmp(fmt, MODEL_H5_FORMAT) == 0 && m->version != MODEL_H5_VERSION) {
    h5u_err_set(&e, __FILE__, __LINE__, __func__,
                "%s: %s version %lld is not supported (this vlmtrain reads version %d)", path, fmt,
                m->version, MODEL_H5_VERSION);
    h5u_finish(comm, &e);
    goto fail;
  }
  if (h5u_attr_read_string(&m->f, "/", MODEL_H5_CONFIG_ATTR, &m->config_json) != 0) goto fail;
  if (rank0_first(comm, parse_config_step, m) != 0) goto fail;
  ex = h5u_exists(&m->f, MODEL_H5_GROUP);
  if (ex < 0) goto fail;
  if (ex == 0) {
    h5u_err_set(&e, __FILE__, __LINE__, __func__, "%s: no group %s: the file holds no tensors", path,
                MODEL_H5_GROUP);
    h5u_finish(comm, &e);
    goto fail;
  }
  if (h5u_agree(comm, match_tensors(m), NULL) != 0) goto fail;
  free(fmt);
  return 0;
fail:
  free(fmt);
  model_h5_close(m);
  return -1;
}

int model_h5_read(model_h5 *m, int idx, long lo, long hi, float *dst) {
  char path[PATH_LEN];
  if (idx < 0 || idx >= m->reg.n) VLM_FAIL("%s: tensor index %d out of range", m->f.path, idx);
  tensor_path(path, sizeof path, m->reg.p[idx].name);
  int rc = h5u_read_tensor_f32(&m->f, path, lo, hi, dst);
  if (rc < 0) return -1;
  return rc; /* 1: read, but the file has no checksum for it */
}

int model_h5_close(model_h5 *m) {
  int rc = m->f.id >= 0 ? h5u_close(&m->f) : 0;
  free(m->config_json);
  m->config_json = NULL;
  registry_free(&m->reg);
  return rc;
}

/* ------------------------------------------------------------------------------
 * Loading into the trainer. */

static int same_registry(const registry *r, const model_h5 *m) {
  if (r->n != m->reg.n)
    VLM_FAIL("%s: its model config has %d tensors, the model being loaded %d: a different model",
             m->f.path, m->reg.n, r->n);
  for (int i = 0; i < r->n; i++) {
    const param_info *a = &r->p[i], *b = &m->reg.p[i];
    int same = strcmp(a->name, b->name) == 0 && a->ndim == b->ndim;
    for (int d = 0; same && d < a->ndim; d++) same = a->shape[d] == b->shape[d];
    if (!same) {
      char sa[200], sb[200];
      shape_str(a->ndim, a->shape, sa, sizeof sa);
      shape_str(b->ndim, b->shape, sb, sizeof sb);
      VLM_FAIL("%s: tensor %d is %s %s in the file but %s %s in the model being loaded: the file's "
               "model config differs",
               m->f.path, i, b->name, sb, a->name, sa);
    }
  }
  return 0;
}

typedef struct {
  const registry *r;
  const model_h5 *m;
} same_ctx;

static int same_step(void *arg) {
  const same_ctx *c = arg;
  return same_registry(c->r, c->m);
}

int model_h5_load_ranges(const registry *r, const char *path, MPI_Comm comm, model_h5_range_fn range,
                         void *ctx) {
  model_h5 m;
  COLL_CHECK(comm, model_h5_open(&m, path, comm));
  int rc = -1;
  long unverified = 0;
  same_ctx sc = {r, &m};
  if (rank0_first(comm, same_step, &sc) != 0) goto done;
  for (int i = 0; i < r->n; i++) {
    long lo = 0, hi = 0;
    float *dst = range(ctx, i, &lo, &hi);
    h5u_err e = {0};
    if (lo < 0 || hi < lo || hi > r->p[i].numel || (hi > lo && !dst))
      h5u_err_set(&e, __FILE__, __LINE__, __func__,
                  "%s: tensor %s: bad range [%ld, %ld) of %ld elements to load", path, r->p[i].name,
                  lo, hi, r->p[i].numel);
    if (h5u_finish(comm, &e) != 0) goto done;
    float dummy = 0;
    int st = model_h5_read(&m, i, lo, hi, dst ? dst : &dummy);
    if (st < 0) goto done;
    unverified += st;
  }
  if (unverified > 0)
    vlm_warn("%s: %ld tensor(s) without a checksum attribute: their data was not verified\n", path, unverified);
  rc = 0;
done:
  if (model_h5_close(&m) != 0) rc = -1;
  return rc;
}

static float *whole_tensor(void *ctx, int idx, long *lo, long *hi) {
  const registry *r = ctx;
  *lo = 0;
  *hi = r->p[idx].numel;
  return registry_param(r, idx);
}

int model_h5_load(registry *r, const char *path) {
  if (!r->params) VLM_FAIL("%s: the registry has no parameter buffer (call registry_alloc)", path);
  COLL_CHECK(MPI_COMM_SELF, model_h5_load_ranges(r, path, MPI_COMM_SELF, whole_tensor, r));
  return 0;
}

/* ------------------------------------------------------------------------------
 * Import: HF safetensors directory -> model file. */

/* The safetensors files of a HF directory, each registry tensor located. */
typedef struct {
  const char *dir;
  const registry *reg;
  st_file *files;
  int n_files, n_open;
  int *file_of, *idx_of; /* per registry tensor; -1 when absent */
  long n_found, n_lora_absent;
} hf_source;

static void hf_close(hf_source *s) {
  for (int i = 0; i < s->n_open; i++) st_close(&s->files[i]);
  free(s->files);
  free(s->file_of);
  free(s->idx_of);
  s->files = NULL;
  s->file_of = s->idx_of = NULL;
  s->n_files = s->n_open = 0;
}

static int is_file(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Shard names of an index, in order of first appearance. */
static int index_files(const char *path, cJSON **root, char ***files, int *n) {
  char *text = NULL;
  *root = NULL;
  *files = NULL;
  *n = 0;
  VLM_CHECK(config_read_file(path, &text, NULL));
  *root = cJSON_Parse(text);
  free(text);
  const cJSON *map = *root ? cJSON_GetObjectItemCaseSensitive(*root, "weight_map") : NULL;
  if (!*root || !cJSON_IsObject(map)) {
    cJSON_Delete(*root);
    *root = NULL;
    VLM_FAIL("%s: not a JSON object with a \"weight_map\" object", path);
  }
  int cap = cJSON_GetArraySize(map);
  *files = calloc((size_t)(cap > 0 ? cap : 1), sizeof **files);
  if (!*files) VLM_FAIL("%s: out of memory", path);
  for (const cJSON *e = map->child; e; e = e->next) {
    if (!cJSON_IsString(e) || !e->valuestring[0] || strchr(e->valuestring, '/'))
      VLM_FAIL("%s: \"weight_map\" entry \"%.100s\": expected a shard file name in the same directory",
               path, e->string);
    int seen = 0;
    for (int i = 0; i < *n && !seen; i++) seen = strcmp((*files)[i], e->valuestring) == 0;
    if (!seen && !((*files)[(*n)++] = strdup(e->valuestring))) VLM_FAIL("%s: out of memory", path);
  }
  if (*n == 0) VLM_FAIL("%s: \"weight_map\" is empty", path);
  return 0;
}

static int hf_locate(hf_source *s, cJSON *index_root, char **names);

/* Opens and validates every safetensors file of s->dir against s->reg. */
static int hf_open_step(void *arg) {
  hf_source *s = arg;
  char single[PATH_LEN], index[PATH_LEN];
  snprintf(single, sizeof single, "%s/model.safetensors", s->dir);
  snprintf(index, sizeof index, "%s/model.safetensors.index.json", s->dir);
  cJSON *root = NULL;
  char **names = NULL;
  int n_names = 0, rc = -1;
  if (is_file(single)) { /* as HF: a single file wins over an index */
    n_names = 1;
  } else if (is_file(index)) {
    if (index_files(index, &root, &names, &n_names) != 0) goto done;
  } else {
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "%s: neither model.safetensors nor model.safetensors.index.json found", s->dir);
    goto done;
  }
  int n = s->reg->n > 0 ? s->reg->n : 1;
  s->files = calloc((size_t)n_names, sizeof *s->files);
  s->file_of = malloc((size_t)n * sizeof *s->file_of);
  s->idx_of = malloc((size_t)n * sizeof *s->idx_of);
  if (!s->files || !s->file_of || !s->idx_of) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: out of memory", s->dir);
    goto done;
  }
  s->n_files = n_names;
  for (int f = 0; f < n_names; f++) {
    char path[PATH_LEN];
    snprintf(path, sizeof path, "%s/%s", s->dir, root ? names[f] : "model.safetensors");
    VLM_CHECK_GOTO(st_open(&s->files[f], path), done);
    s->n_open++;
  }
  VLM_CHECK_GOTO(hf_locate(s, root, names), done);
  rc = 0;
done:
  for (int i = 0; i < (root ? n_names : 0); i++) free(names[i]);
  free(names);
  cJSON_Delete(root);
  if (rc != 0) hf_close(s);
  return rc;
}

/* Matches every tensor of the files to the registry; reports all problems. */
static int hf_locate(hf_source *s, cJSON *index_root, char **names) {
  const registry *r = s->reg;
  const cJSON *map = index_root ? cJSON_GetObjectItemCaseSensitive(index_root, "weight_map") : NULL;
  for (int i = 0; i < r->n; i++) s->file_of[i] = s->idx_of[i] = -1;
  const int report = 1;
  problem_list missing = {.kind = "missing", .report = report},
               unexpected = {.kind = "unexpected", .report = report},
               shape = {.kind = "wrong shape", .report = report},
               twice = {.kind = "found twice", .report = report},
               index_bad = {.kind = "index mismatch", .report = report};
  for (int f = 0; f < s->n_files; f++) {
    const st_file *sf = &s->files[f];
    for (int t = 0; t < sf->n; t++) {
      const st_tensor *tt = &sf->t[t];
      char got[200];
      shape_str(tt->ndim, tt->shape, got, sizeof got);
      if (map) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(map, tt->name);
        if (!m)
          problem(&index_bad, s->dir, "\"%s\" is in %s but not in the index's weight_map", tt->name, sf->path);
        else if (strcmp(m->valuestring, names[f]) != 0)
          problem(&index_bad, s->dir, "\"%s\" is in %s but the index maps it to %s", tt->name, sf->path,
                  m->valuestring);
      }
      int ri = registry_find(r, tt->name);
      if (ri < 0) {
        problem(&unexpected, s->dir, "%s %s (in %s) is not a tensor of the model config.json describes",
                tt->name, got, sf->path);
        continue;
      }
      if (s->file_of[ri] >= 0) {
        problem(&twice, s->dir, "%s: in %s and in %s", tt->name, s->files[s->file_of[ri]].path, sf->path);
        continue;
      }
      s->file_of[ri] = f;
      s->idx_of[ri] = t;
      const param_info *p = &r->p[ri];
      int same = p->ndim == tt->ndim;
      for (int d = 0; same && d < p->ndim; d++) same = p->shape[d] == tt->shape[d];
      if (!same) {
        char want[200];
        shape_str(p->ndim, p->shape, want, sizeof want);
        problem(&shape, s->dir, "tensor \"%s\" in %s has shape %s, the model config expects %s", tt->name,
                sf->path, got, want);
      }
    }
  }
  if (map)
    for (const cJSON *e = map->child; e; e = e->next) {
      int f = 0;
      while (f < s->n_files && strcmp(names[f], e->valuestring) != 0) f++;
      if (f < s->n_files && st_find(&s->files[f], e->string) < 0)
        problem(&index_bad, s->dir, "the index maps \"%s\" to %s, which does not hold it", e->string,
                s->files[f].path);
    }
  s->n_found = s->n_lora_absent = 0;
  for (int i = 0; i < r->n; i++) {
    if (s->file_of[i] >= 0) {
      s->n_found++;
    } else if (strstr(r->p[i].name, "lora")) {
      s->n_lora_absent++;
    } else {
      char want[200];
      shape_str(r->p[i].ndim, r->p[i].shape, want, sizeof want);
      problem(&missing, s->dir, "%s %s", r->p[i].name, want);
    }
  }
  problem_list *all[] = {&missing, &unexpected, &shape, &twice, &index_bad};
  VLM_CHECK(problems_report(s->dir, "the safetensors files do not match config.json", all, 5));
  return 0;
}

typedef struct {
  const char *hf_dir;
  monkey_config cfg;
  char *config_text;
  registry reg;
} import_setup;

static int import_setup_step(void *arg) {
  import_setup *s = arg;
  char path[PATH_LEN];
  snprintf(path, sizeof path, "%s/config.json", s->hf_dir);
  VLM_CHECK(monkey_config_load(&s->cfg, path));
  VLM_CHECK(config_read_file(path, &s->config_text, NULL));
  if (registry_build(&s->reg, &s->cfg) != 0) {
    registry_free(&s->reg);
    free(s->config_text);
    s->config_text = NULL;
    VLM_FAIL("%s: cannot build the parameter registry", path);
  }
  return 0;
}

/* Fills tensor pieces from the HF files, or for an absent LoRA tensor from
 * its upstream initialisation (computed whole in lora_buf, through a view of
 * the registry whose parameter storage is that buffer). */
typedef struct {
  hf_source *src;
  registry view;   /* copy of the registry with its own p[] */
  float *lora_buf; /* largest LoRA tensor */
  int lora_idx;    /* tensor now in lora_buf, -1 none */
  unsigned long seed;
} import_fill;

static int import_fill_fn(void *ctx, int idx, long lo, long hi, float *dst, h5u_err *e) {
  import_fill *c = ctx;
  const hf_source *s = c->src;
  if (s->file_of[idx] >= 0) {
    if (st_read_range_f32(&s->files[s->file_of[idx]], s->idx_of[idx], lo, hi, dst) != 0)
      H5U_FAIL(e, "%s: reading tensor %s failed (see above)", s->dir, s->reg->p[idx].name);
    return 0;
  }
  if (c->lora_idx != idx) {
    c->view.p[idx].offset = 0;
    c->view.params = c->lora_buf;
    registry_init_lora_param(&c->view, idx, c->seed);
    c->lora_idx = idx;
  }
  memcpy(dst, c->lora_buf + lo, (size_t)(hi - lo) * sizeof *dst);
  return 0;
}

int model_h5_import(const char *hf_dir, const char *out_path, unsigned long seed, MPI_Comm comm) {
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  const double t0 = vlm_now();
  import_setup setup = {.hf_dir = hf_dir};
  COLL_CHECK(comm, rank0_first(comm, import_setup_step, &setup));
  hf_source src = {.dir = hf_dir, .reg = &setup.reg};
  import_fill fill = {.src = &src, .lora_idx = -1, .seed = seed};
  float *buf = NULL;
  int rc = -1, ok = 0;
  h5u_file f = {.id = -1};
  if (rank0_first(comm, hf_open_step, &src) != 0) goto done;

  const registry *r = &setup.reg;
  const long piece = piece_elems();
  long max_share = 0, max_lora = 1;
  for (int i = 0; i < r->n; i++) {
    long lo, hi;
    even_range(r->p[i].numel, rank, size, &lo, &hi);
    if (hi - lo > max_share) max_share = hi - lo;
    if (src.file_of[i] < 0 && r->p[i].numel > max_lora) max_lora = r->p[i].numel;
  }
  h5u_err e = {0};
  long buf_len = max_share < piece ? max_share : piece;
  buf = malloc((size_t)(buf_len > 0 ? buf_len : 1) * sizeof *buf);
  fill.view = *r;
  fill.view.p = malloc((size_t)(r->n > 0 ? r->n : 1) * sizeof *fill.view.p);
  fill.lora_buf = src.n_lora_absent ? malloc((size_t)max_lora * sizeof *fill.lora_buf) : NULL;
  if (!buf || !fill.view.p || (src.n_lora_absent && !fill.lora_buf))
    h5u_err_set(&e, __FILE__, __LINE__, __func__, "%s: out of memory for conversion buffers", out_path);
  else
    memcpy(fill.view.p, r->p, (size_t)r->n * sizeof *r->p);
  if (h5u_finish(comm, &e) != 0) goto done;

  if (h5u_create_tmp(&f, out_path, comm) != 0) goto done;
  ok = model_h5_write_header(&f, MODEL_H5_FORMAT, MODEL_H5_VERSION, setup.config_text) == 0;
  for (int i = 0; ok && i < r->n; i++) {
    long lo, hi;
    even_range(r->p[i].numel, rank, size, &lo, &hi);
    ok = write_tensor(&f, &r->p[i], i, lo, hi, NULL, import_fill_fn, &fill, buf, piece) == 0;
  }
  if (h5u_commit(&f, ok) != 0 || !ok) goto done;
  vlm_log("import: %s -> %s: %d tensors, %ld parameters (%ld from %d safetensors file(s), %ld LoRA "
          "tensors absent and initialised with seed %lu), %d rank(s), %.2f s\n",
          hf_dir, out_path, r->n, r->n_params, src.n_found, src.n_files, src.n_lora_absent, seed,
          size, vlm_now() - t0);
  rc = 0;
done:
  if (f.id >= 0) h5u_close(&f);
  free(buf);
  free(fill.view.p);
  free(fill.lora_buf);
  hf_close(&src);
  registry_free(&setup.reg);
  free(setup.config_text);
  return rc;
}

/* ------------------------------------------------------------------------------
 * Export: model file -> HF directory. */

typedef struct {
  char name[64];
  int first, count; /* tensors order[first .. first+count) */
  uint64_t data_bytes;
} shard_plan;

/* {"__metadata__":{"format":"pt"},"NAME":{"dtype":..,"shape":[..],"data_offsets":[a,b]},...}
 * padded with spaces so that the data starts 8-byte aligned; *offsets gets
 * each tensor's data offset (relative to the data section). */
static char *st_header(const registry *r, const int *order, int count, st_dtype dtype,
                       uint64_t *offsets, size_t *len) {
  size_t cap = 256 + (size_t)count * (REG_NAME_LEN * 2 + 160), k = 0;
  char *h = malloc(cap);
  if (!h) return NULL;
  k += (size_t)snprintf(h + k, cap - k, "{\"__metadata__\":{\"format\":\"pt\"}");
  uint64_t off = 0;
  const int esz = dtype == ST_F32 ? 4 : 2;
  for (int j = 0; j < count; j++) {
    const param_info *p = &r->p[order[j]];
    cJSON *js = cJSON_CreateString(p->name);
    char *q = js ? cJSON_PrintUnformatted(js) : NULL;
    cJSON_Delete(js);
    if (!q) {
      free(h);
      return NULL;
    }
    k += (size_t)snprintf(h + k, cap - k, ",%s:{\"dtype\":\"%s\",\"shape\":[", q,
                          dtype == ST_F32 ? "F32" : "BF16");
    cJSON_free(q);
    for (int d = 0; d < p->ndim; d++) k += (size_t)snprintf(h + k, cap - k, "%s%ld", d ? "," : "", p->shape[d]);
    uint64_t bytes = (uint64_t)p->numel * (uint64_t)esz;
    offsets[j] = off;
    k += (size_t)snprintf(h + k, cap - k, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                          (unsigned long long)(off + bytes));
    off += bytes;
  }
  k += (size_t)snprintf(h + k, cap - k, "}");
  while ((8 + k) % 8 != 0 && k + 1 < cap) h[k++] = ' ';
  h[k] = '\0';
  if (k + 1 >= cap) { /* cannot happen with the capacity above; stay safe */
    free(h);
    return NULL;
  }
  *len = k;
  return h;
}

static void mpi_reason(int code, char *buf) {
  int len = 0;
  buf[0] = '\0';
  MPI_Error_string(code, buf, &len);
}

/* Writes one safetensors file of the tensors order[0 .. count) with MPI-IO:
 * rank 0 the header, every rank its share of every tensor, converted; each
 * tensor's checksum is verified from the data read. *unverified counts the
 * tensors without one. */
static int write_shard(model_h5 *m, const char *path, const int *order, int count, st_dtype dtype,
                       float *buf, long piece, long *unverified) {
  MPI_Comm comm = m->f.comm;
  const int rank = m->f.rank, size = m->f.size, esz = dtype == ST_F32 ? 4 : 2;
  uint64_t *offsets = malloc((size_t)(count > 0 ? count : 1) * sizeof *offsets);
  size_t hlen = 0;
  char *header = offsets ? st_header(&m->reg, order, count, dtype, offsets, &hlen) : NULL;
  h5u_err e = {0};
  if (!header) h5u_err_set(&e, __FILE__, __LINE__, __func__, "%s: out of memory for the header", path);
  if (h5u_finish(comm, &e) != 0) {
    free(offsets);
    free(header);
    return -1;
  }
  MPI_File fh;
  char why[MPI_MAX_ERROR_STRING + 1];
  int mrc = MPI_File_open(comm, path, MPI_MODE_CREATE | MPI_MODE_WRONLY, MPI_INFO_NULL, &fh);
  if (mrc != MPI_SUCCESS) {
    mpi_reason(mrc, why);
    h5u_err_set(&e, __FILE__, __LINE__, __func__, "%s: cannot create (MPI-IO): %s", path, why);
  }
  if (h5u_finish(comm, &e) != 0) {
    free(offsets);
    free(header);
    return -1;
  }
  int rc = -1;
  const uint64_t data_start = 8 + (uint64_t)hlen;
  if (rank == 0) {
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    MPI_Status st;
    mrc = MPI_File_write_at(fh, 0, lenb, 8, MPI_BYTE, &st);
    if (mrc == MPI_SUCCESS) mrc = MPI_File_write_at(fh, 8, header, (int)hlen, MPI_BYTE, &st);
    if (mrc != MPI_SUCCESS) {
      mpi_reason(mrc, why);
      h5u_err_set(&e, __FILE__, __LINE__, __func__, "%s: writing the header failed: %s", path, why);
    }
  }
  if (h5u_finish(comm, &e) != 0) goto done;
  for (int j = 0; j < count; j++) {
    const int idx = order[j];
    const param_info *p = &m->reg.p[idx];
    char dpath[PATH_LEN];
    tensor_path(dpath, sizeof dpath, p->name);
    long lo, hi;
    even_range(p->numel, rank, size, &lo, &hi);
    long len = hi - lo, max_len = 0;
    MPI_Allreduce(&len, &max_len, 1, MPI_LONG, MPI_MAX, comm);
    uint64_t part = 0;
    for (long k = 0, np = n_pieces(max_len, piece); k < np; k++) {
      long a = lo + k * piece < hi ? lo + k * piece : hi;
      long b = a + piece < hi ? a + piece : hi;
      if (h5u_read_range_f32(&m->f, dpath, a, b, buf) != 0) goto done;
      part += h5u_sum64_part(a, b, buf);
      if (dtype == ST_BF16) { /* narrow in place, front to back */
        uint16_t *h = (uint16_t *)(void *)buf;
        for (long i = 0; i < b - a; i++) h[i] = f32_to_bf16(buf[i]);
      }
      MPI_Status st;
      MPI_Offset at = (MPI_Offset)(data_start + offsets[j] + (uint64_t)a * (uint64_t)esz);
      mrc = MPI_File_write_at_all(fh, at, buf, (int)((b - a) * esz), MPI_BYTE, &st);
      if (mrc != MPI_SUCCESS) {
        mpi_reason(mrc, why);
        h5u_err_set(&e, __FILE__, __LINE__, __func__, "%s: writing tensor %s failed: %s", path, p->name, why);
      }
      if (h5u_finish(comm, &e) != 0) goto done;
    }
    uint64_t sum = 0, stored = 0;
    if (h5u_sum64_reduce(comm, part, &sum) != 0) goto done;
    int has = h5u_checksum_read(&m->f, dpath, &stored);
    if (has < 0) goto done;
    if (has == 0) {
      (*unverified)++;
    } else if (h5u_sum64_final(sum, p->numel) != stored) {
      h5u_err_set(&e, __FILE__, __LINE__, __func__,
                  "%s: dataset %s: checksum mismatch (stored 0x%016llx, computed 0x%016llx from "
                  "the data read): the tensor's data is corrupt; nothing exported",
                  m->f.path, dpath, (unsigned long long)stored,
                  (unsigned long long)h5u_sum64_final(sum, p->numel));
      h5u_finish(comm, &e);
      goto done;
    }
  }
  mrc = MPI_File_sync(fh);
  if (mrc != MPI_SUCCESS) {
    mpi_reason(mrc, why);
    h5u_err_set(&e, __FILE__, __LINE__, __func__, "%s: sync failed: %s", path, why);
  }
  rc = h5u_finish(comm, &e);
done:
  mrc = MPI_File_close(&fh);
  if (mrc != MPI_SUCCESS && rc == 0) {
    mpi_reason(mrc, why);
    h5u_err_set(&e, __FILE__, __LINE__, __func__, "%s: close failed: %s", path, why);
    rc = h5u_finish(comm, &e);
  }
  free(offsets);
  free(header);
  return rc;
}

/* mkdir -p of dir's parent, then checks that dir is absent or an empty
 * directory and makes a fresh dir.tmp (a stale one's files removed). Rank 0. */
static int make_parents(const char *dir, h5u_err *e) {
  char buf[PATH_LEN];
  if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) H5U_FAIL(e, "%.100s...: path too long", dir);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
      H5U_FAIL(e, "%s: cannot create directory %s: %s", dir, buf, strerror(errno));
    *p = '/';
  }
  return 0;
}

static int remove_dir_files(const char *dir, h5u_err *e) {
  DIR *d = opendir(dir);
  if (!d) H5U_FAIL(e, "%s: cannot list: %s", dir, strerror(errno));
  struct dirent *de;
  int rc = 0;
  while (rc == 0 && (de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    char path[PATH_LEN + 260];
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    struct stat sb;
    if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) {
      h5u_err_set(e, __FILE__, __LINE__, __func__,
                  "%s: holds %s, which is not a file written by export: remove it yourself", dir, de->d_name);
      rc = -1;
    } else if (unlink(path) != 0) {
      h5u_err_set(e, __FILE__, __LINE__, __func__, "%s: cannot remove: %s", path, strerror(errno));
      rc = -1;
    }
  }
  closedir(d);
  return rc;
}

static int dir_is_empty(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  struct dirent *de;
  int empty = 1;
  while (empty && (de = readdir(d)) != NULL)
    empty = strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0;
  closedir(d);
  return empty;
}

static int prepare_out_dir(const char *out, const char *tmp, h5u_err *e) {
  struct stat sb;
  if (stat(out, &sb) == 0) {
    if (!S_ISDIR(sb.st_mode)) H5U_FAIL(e, "%s: exists and is not a directory", out);
    if (!dir_is_empty(out))
      H5U_FAIL(e, "%s: exists and is not empty: export writes a new directory (remove it or choose "
                  "another --out)", out);
  }
  if (make_parents(out, e) != 0) return -1;
  if (lstat(tmp, &sb) == 0) { /* left by an interrupted export */
    if (S_ISDIR(sb.st_mode)) {
      if (remove_dir_files(tmp, e) != 0) return -1;
      if (rmdir(tmp) != 0) H5U_FAIL(e, "%s: cannot remove the stale directory: %s", tmp, strerror(errno));
    } else if (unlink(tmp) != 0) {
      H5U_FAIL(e, "%s: cannot remove the stale file: %s", tmp, strerror(errno));
    }
  }
  if (mkdir(tmp, 0755) != 0) H5U_FAIL(e, "%s: cannot create directory: %s", tmp, strerror(errno));
  return 0;
}

static int fsync_path(const char *path, int is_dir, h5u_err *e) {
  int fd = open(path, (is_dir ? O_DIRECTORY : 0) | O_RDONLY | O_CLOEXEC);
  if (fd < 0) H5U_FAIL(e, "%s: cannot open to fsync: %s", path, strerror(errno));
  int rc = fsync(fd), en = errno;
  close(fd);
  if (rc != 0 && en != EINVAL) H5U_FAIL(e, "%s: fsync failed: %s", path, strerror(en));
  return 0;
}

/* Rank 0: config.json, the index, fsyncs, and tmp renamed to out. */
static int finish_out_dir(const model_h5 *m, const char *out, const char *tmp, const shard_plan *plan,
                          int n_shards, const int *order, uint64_t total_bytes, h5u_err *e) {
  char path[PATH_LEN + 64];
  snprintf(path, sizeof path, "%s/config.json", tmp);
  if (config_write_file(path, m->config_json, (long)strlen(m->config_json)) != 0)
    H5U_FAIL(e, "%s: writing config.json failed (see above)", tmp);
  if (n_shards > 1) {
    cJSON *root = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(root, "metadata");
    cJSON *map = cJSON_AddObjectToObject(root, "weight_map");
    int bad = !root || !meta || !map || !cJSON_AddNumberToObject(meta, "total_size", (double)total_bytes);
    for (int s = 0; !bad && s < n_shards; s++)
      for (int j = plan[s].first; !bad && j < plan[s].first + plan[s].count; j++)
        bad = !cJSON_AddStringToObject(map, m->reg.p[order[j]].name, plan[s].name);
    char *text = bad ? NULL : cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) H5U_FAIL(e, "%s: out of memory building the index", tmp);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", tmp);
    int rc = config_write_file(path, text, (long)strlen(text));
    cJSON_free(text);
    if (rc != 0) H5U_FAIL(e, "%s: writing the index failed (see above)", tmp);
  }
  for (int s = 0; s < n_shards; s++) {
    snprintf(path, sizeof path, "%s/%s", tmp, plan[s].name);
    if (fsync_path(path, 0, e) != 0) return -1;
  }
  if (fsync_path(tmp, 1, e) != 0) return -1;
  if (rename(tmp, out) != 0)
    H5U_FAIL(e, "%s: cannot rename the finished %s to it: %s", out, tmp, strerror(errno));
  char parent[PATH_LEN];
  snprintf(parent, sizeof parent, "%s", out);
  char *slash = strrchr(parent, '/');
  if (!slash) snprintf(parent, sizeof parent, ".");
  else if (slash == parent) parent[1] = '\0';
  else *slash = '\0';
  return fsync_path(parent, 1, e);
}

typedef struct {
  registry *reg;
  const char *train_json;
} select_ctx;

static int select_step(void *arg) {
  select_ctx *c = arg;
  train_config t;
  train_config_defaults(&t);
  VLM_CHECK(train_config_load(&t, c->train_json));
  int rc = registry_select(c->reg, &t);
  train_config_free(&t);
  if (rc != 0) VLM_FAIL("%s: its trainable selection does not apply to this model", c->train_json);
  return 0;
}

int model_h5_export(const char *path, const char *out_arg, const model_h5_export_opts *o, MPI_Comm comm) {
  const double t0 = vlm_now();
  char out_dir[PATH_LEN];
  if (snprintf(out_dir, sizeof out_dir, "%s", out_arg) >= (int)sizeof out_dir)
    VLM_FAIL("%.100s...: path too long", out_arg);
  for (size_t k = strlen(out_dir); k > 1 && out_dir[k - 1] == '/';) out_dir[--k] = '\0'; /* "DIR/" */
  if (o->dtype != ST_F32 && o->dtype != ST_BF16) VLM_FAIL("export: dtype must be F32 or BF16");
  if (!o->train_json && o->shard_bytes < 1) VLM_FAIL("export: the shard size must be positive");
  model_h5 m;
  COLL_CHECK(comm, model_h5_open(&m, path, comm));
  const int rank = m.f.rank;
  const long piece = piece_elems();
  int rc = -1, n_shards = 0, n_sel = 0, made_tmp = 0;
  int *order = NULL;
  shard_plan *plan = NULL;
  float *buf = NULL;
  long unverified = 0;
  uint64_t total_bytes = 0;
  char tmp[PATH_LEN];
  h5u_err e = {0};
  if (snprintf(tmp, sizeof tmp, "%s.tmp", out_dir) >= (int)sizeof tmp) {
    h5u_err_set(&e, __FILE__, __LINE__, __func__, "%.100s...: path too long", out_dir);
    h5u_finish(comm, &e);
    goto done;
  }
  if (o->train_json) {
    select_ctx sc = {&m.reg, o->train_json};
    if (rank0_first(comm, select_step, &sc) != 0) goto done;
  }

  /* the tensors in registry order, then shards of at most shard_bytes */
  const int esz = o->dtype == ST_F32 ? 4 : 2;
  order = malloc((size_t)(m.reg.n > 0 ? m.reg.n : 1) * sizeof *order);
  plan = calloc((size_t)(m.reg.n > 0 ? m.reg.n : 1), sizeof *plan);
  long max_share = 1;
  for (int i = 0; order && i < m.reg.n; i++) {
    if (o->train_json && !m.reg.p[i].trainable) continue;
    order[n_sel++] = i;
    long lo, hi;
    even_range(m.reg.p[i].numel, rank, m.f.size, &lo, &hi);
    if (hi - lo > max_share) max_share = hi - lo;
  }
  buf = malloc((size_t)(max_share < piece ? max_share : piece) * sizeof *buf);
  if (!order || !plan || !buf) h5u_err_set(&e, __FILE__, __LINE__, __func__, "%s: out of memory", out_dir);
  if (h5u_finish(comm, &e) != 0) goto done;
  for (int j = 0; j < n_sel; j++) {
    uint64_t bytes = (uint64_t)m.reg.p[order[j]].numel * (uint64_t)esz;
    total_bytes += bytes;
    shard_plan *cur = n_shards ? &plan[n_shards - 1] : NULL;
    if (!cur || (!o->train_json && cur->data_bytes + bytes > (uint64_t)o->shard_bytes && cur->count > 0)) {
      cur = &plan[n_shards++];
      cur->first = j;
    }
    cur->count++;
    cur->data_bytes += bytes;
  }
  if (n_shards == 0) { /* a selection with nothing in it still gives a (valid, empty) file */
    plan[0].first = 0;
    n_shards = 1;
  }
  for (int s = 0; s < n_shards; s++) {
    if (o->train_json) snprintf(plan[s].name, sizeof plan[s].name, "trained.safetensors");
    else if (n_shards == 1) snprintf(plan[s].name, sizeof plan[s].name, "model.safetensors");
    else snprintf(plan[s].name, sizeof plan[s].name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
  }

  if (rank == 0) prepare_out_dir(out_dir, tmp, &e);
  made_tmp = 1;
  if (h5u_finish(comm, &e) != 0) goto done;
  for (int s = 0; s < n_shards; s++) {
    char spath[PATH_LEN + 80];
    snprintf(spath, sizeof spath, "%s/%s", tmp, plan[s].name);
    if (write_shard(&m, spath, order + plan[s].first, plan[s].count, o->dtype, buf, piece, &unverified) != 0)
      goto done;
  }
  if (rank == 0)
    finish_out_dir(&m, out_dir, tmp, plan, n_shards, order, total_bytes, &e);
  if (h5u_finish(comm, &e) != 0) goto done;
  made_tmp = 0;
  if (unverified > 0)
    vlm_warn("%s: %ld tensor(s) without a checksum attribute: their data was not verified\n", path, unverified);
  vlm_log("export: %s -> %s: %d tensors%s, %.1f MiB of %s in %d file(s), %d rank(s), %.2f s\n", path,
          out_dir, n_sel, o->train_json ? " (trained only)" : "", (double)total_bytes / 1048576.0,
          o->dtype == ST_F32 ? "F32" : "BF16", n_shards, m.f.size, vlm_now() - t0);
  rc = 0;
done:
  if (made_tmp && rank == 0) { /* leave nothing half-written behind */
    h5u_err ignore = {0};
    struct stat sb;
    if (stat(tmp, &sb) == 0 && remove_dir_files(tmp, &ignore) == 0) rmdir(tmp);
  }
  free(order);
  free(plan);
  free(buf);
  if (model_h5_close(&m) != 0) rc = -1;
  return rc;
}
