/* io/checkpoint.c: see io/checkpoint.h. Layout of a checkpoint file:
 *   root attributes  format "vlmtrain-checkpoint", version 1, model_config,
 *                    train_config, step, epoch, cursor, data_seed, shuffle,
 *                    adam_step, layout_R, layout_S, world_size, rng
 *   /tensors/<name>                 every parameter (frozen ones included)
 *   /optimizer/exp_avg/<name>       AdamW first moment, trainable tensors
 *   /optimizer/exp_avg_sq/<name>    AdamW second moment, trainable tensors
 * each a float32 dataset at the tensor's global shape with a checksum
 * attribute (io/h5util.h). */
#define _POSIX_C_SOURCE 200809L
#include "io/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/vlm.h"
#include "io/h5util.h"
#include "io/model_h5.h"

static const char *MOMENT_GROUP[2] = {"/optimizer/exp_avg", "/optimizer/exp_avg_sq"};

static float *io_range(void *ctx, int idx, long *lo, long *hi) {
  return (float *)zero_io_range((const zero_state *)ctx, idx, lo, hi);
}

static int make_dir_agreed(const char *dir, MPI_Comm comm) {
  int rank, rc = 0;
  MPI_Comm_rank(comm, &rank);
  if (rank == 0 && mkdir(dir, 0755) != 0 && errno != EEXIST) rc = errno;
  MPI_Bcast(&rc, 1, MPI_INT, 0, comm);
  if (rc) VLM_FAIL("cannot create checkpoint directory %s: %s", dir, strerror(rc));
  return 0;
}

/* Writes the moments of every trainable tensor (moment k of 2). */
static int write_moments(h5u_file *f, zero_state *z, const adamw_state *opt) {
  const registry *r = z->reg;
  for (int k = 0; k < 2; k++) {
    VLM_CHECK(h5u_group_create(f, MOMENT_GROUP[k]));
    float *base = k == 0 ? opt->hm : opt->hv;
    for (int i = 0; i < r->n; i++) {
      const param_info *p = &r->p[i];
      if (!p->trainable) continue;
      char path[512];
      snprintf(path, sizeof path, "%s/%s", MOMENT_GROUP[k], p->name);
      VLM_CHECK(h5u_dataset_create_f32(f, path, p->ndim, p->shape));
      long lo, hi, llo, lhi;
      const float *w = zero_io_range(z, i, &lo, &hi);
      const float *src = zero_local_grad_range(z, base, i, &llo, &lhi);
      VLM_CHECK(h5u_write_tensor_f32(f, path, lo, hi, w ? src : NULL));
    }
  }
  return 0;
}

int ckpt_save(const char *dir, zero_state *z, const adamw_state *opt, const ckpt_state *st,
              const char *model_config_json, const char *train_config_json, int keep) {
  MPI_Comm comm = z->comm->world;
  zero_params_to_host(z); /* a device backend's shards, into the host mirrors written below */
  adamw_to_host(opt);
  VLM_CHECK(make_dir_agreed(dir, comm));
  char name[64], path[2048];
  if (h5u_step_name(name, sizeof name, CKPT_PREFIX, st->step, CKPT_SUFFIX) != 0)
    VLM_FAIL("checkpoint name for step %ld does not fit", st->step);
  snprintf(path, sizeof path, "%s/%s", dir, name);
  h5u_file f;
  VLM_CHECK(h5u_create_tmp(&f, path, comm));
  int ok = model_h5_write_header(&f, CKPT_FORMAT, CKPT_VERSION, model_config_json) == 0;
  ok = ok && h5u_attr_write_string(&f, "/", "train_config", train_config_json) == 0;
  const struct {
    const char *name;
    long long v;
  } ints[] = {{"step", st->step},         {"epoch", st->epoch},
              {"cursor", st->cursor},     {"data_seed", st->data_seed},
              {"shuffle", st->shuffle},   {"adam_step", opt->step},
              {"layout_R", z->comm->R},   {"layout_S", z->comm->S},
              {"world_size", z->comm->size}};
  for (size_t k = 0; ok && k < sizeof ints / sizeof ints[0]; k++)
    ok = h5u_attr_write_int(&f, "/", ints[k].name, ints[k].v) == 0;
  ok = ok && h5u_attr_write_string(&f, "/", "rng",
                                   "none: training draws no random numbers (no dropout); the data "
                                   "order is a function of data_seed and the epoch") == 0;
  ok = ok && model_h5_write_tensors(&f, z->reg, io_range, z) == 0;
  /* Test hook (tests/ckpt): VLMTRAIN_TEST_KILL_IN_CKPT=STEP:RANK makes that rank
   * SIGKILL itself here, halfway through writing that step's checkpoint. */
  const char *kill_at = getenv("VLMTRAIN_TEST_KILL_IN_CKPT");
  long kstep = -1, krank = -1;
  if (kill_at && sscanf(kill_at, "%ld:%ld", &kstep, &krank) == 2 && kstep == st->step &&
      krank == z->comm->rank)
    raise(SIGKILL);
  ok = ok && write_moments(&f, z, opt) == 0;
  long io[2] = {f.n_transfers, f.n_collective};
  MPI_Allreduce(MPI_IN_PLACE, io, 2, MPI_LONG, MPI_SUM, comm);
  if (h5u_commit(&f, ok) != 0 || !ok) VLM_FAIL("checkpoint %s was not written (the previous ones are untouched)", path);
  vlm_log("checkpoint %s: %ld of %ld dataset transfers were collective MPI-IO (all ranks)\n", path,
          io[1], io[0]);
  VLM_CHECK(h5u_pointer_write(dir, CKPT_POINTER, name, comm));
  VLM_CHECK(h5u_keep_last(dir, CKPT_PREFIX, CKPT_SUFFIX, keep, CKPT_POINTER, comm));
  return 0;
}

static int read_int(h5u_file *f, const char *name, long *out) {
  long long v = 0;
  VLM_CHECK(h5u_attr_read_int(f, "/", name, &v));
  *out = (long)v;
  return 0;
}

/* Loads one file; on failure the shards hold partial data (the caller loads
 * another checkpoint over them or stops). */
static int load_one(const char *path, zero_state *z, adamw_state *opt, ckpt_state *st) {
  model_h5 mh;
  VLM_CHECK(model_h5_open(&mh, path, z->comm->world));
  int rc = -1;
  const registry *r = z->reg;
  long v[8];
  if (strcmp(mh.format, CKPT_FORMAT) != 0) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: format \"%s\", expected \"%s\"", path, mh.format,
                 CKPT_FORMAT);
    goto out;
  }
  if (mh.reg.n != r->n) {
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "%s: a checkpoint of another model config (%d tensors; this model has %d)", path,
                 mh.reg.n, r->n);
    goto out;
  }
  for (int i = 0; i < r->n; i++) {
    const param_info *a = &r->p[i], *b = &mh.reg.p[i];
    int same = strcmp(a->name, b->name) == 0 && a->ndim == b->ndim;
    for (int d = 0; same && d < a->ndim; d++) same = a->shape[d] == b->shape[d];
    if (!same) {
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "%s: a checkpoint of another model config: tensor %d is \"%s\" there, \"%s\" "
                   "(shape differs or name) here", path, i, b->name, a->name);
      goto out;
    }
  }
  static const char *names[6] = {"step", "epoch", "cursor", "data_seed", "shuffle", "adam_step"};
  for (int k = 0; k < 6; k++)
    if (read_int(&mh.f, names[k], &v[k]) != 0) goto out;
  if (read_int(&mh.f, "layout_R", &v[6]) != 0 || read_int(&mh.f, "layout_S", &v[7]) != 0) goto out;
  for (int i = 0; i < r->n; i++) {
    long lo, hi;
    float *dst = zero_local_range(z, i, &lo, &hi);
    if (model_h5_read(&mh, i, lo, hi, dst) != 0) goto out;
  }
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < r->n; i++) {
      if (!r->p[i].trainable) continue;
      char p[512];
      snprintf(p, sizeof p, "%s/%s", MOMENT_GROUP[k], r->p[i].name);
      int e = h5u_exists(&mh.f, p);
      if (e != 1) {
        if (e == 0)
          vlm_error_at(__FILE__, __LINE__, __func__,
                       "%s: no optimizer state %s for trainable tensor \"%s\" (was it frozen when "
                       "the checkpoint was written? the trainable set must match to resume)",
                       path, p, r->p[i].name);
        goto out;
      }
      long lo, hi;
      float *dst = zero_local_grad_range(z, k == 0 ? opt->hm : opt->hv, i, &lo, &hi);
      int rr = h5u_read_tensor_f32(&mh.f, p, lo, hi, dst);
      if (rr == 1)
        vlm_error_at(__FILE__, __LINE__, __func__, "%s: %s has no checksum", path, p);
      if (rr != 0) goto out;
    }
  st->step = v[0];
  st->epoch = v[1];
  st->cursor = v[2];
  st->data_seed = v[3];
  st->shuffle = (int)v[4];
  st->R = (int)v[6];
  st->S = (int)v[7];
  opt->step = v[5];
  zero_params_to_device(z); /* what was read into the host mirrors */
  adamw_to_device(opt);
  rc = 0;
out:
  if (model_h5_close(&mh) != 0) rc = -1;
  return rc;
}

static int cmp_desc(const void *a, const void *b) {
  long x = *(const long *)a, y = *(const long *)b;
  return (x < y) - (x > y);
}

int ckpt_load(const char *what, zero_state *z, adamw_state *opt, ckpt_state *st, int *loaded,
              char *loaded_path, size_t path_len) {
  MPI_Comm comm = z->comm->world;
  int rank;
  MPI_Comm_rank(comm, &rank);
  *loaded = 0;
  struct stat sb;
  int is_dir = stat(what, &sb) == 0 && S_ISDIR(sb.st_mode);
  if (!is_dir) {
    VLM_CHECK(load_one(what, z, opt, st));
    snprintf(loaded_path, path_len, "%s", what);
    *loaded = 1;
    return 0;
  }
  /* candidates: the one `latest` names, then every ckpt-STEP.h5 newest first (rank 0 lists) */
  enum { MAXC = 256 };
  long steps[MAXC + 1];
  int n = 0;
  char latest[256] = "";
  if (rank == 0) {
    if (h5u_pointer_read(what, CKPT_POINTER, latest, sizeof latest) != 0) latest[0] = '\0';
    DIR *d = opendir(what);
    struct dirent *e;
    while (d && (e = readdir(d)) && n < MAXC) {
      long s = h5u_step_of(e->d_name, CKPT_PREFIX, CKPT_SUFFIX);
      if (s >= 0) steps[n++] = s;
    }
    if (d) closedir(d);
    qsort(steps, (size_t)n, sizeof steps[0], cmp_desc);
  }
  MPI_Bcast(&n, 1, MPI_INT, 0, comm);
  MPI_Bcast(steps, n, MPI_LONG, 0, comm);
  MPI_Bcast(latest, sizeof latest, MPI_CHAR, 0, comm);
  long first = h5u_step_of(latest, CKPT_PREFIX, CKPT_SUFFIX);
  if (n == 0) return 0; /* nothing to resume from */
  int tried = 0;
  for (int k = -1; k < n; k++) {
    long s = k < 0 ? first : steps[k];
    if (s < 0 || (k >= 0 && s == first)) continue;
    char name[64], path[2048];
    h5u_step_name(name, sizeof name, CKPT_PREFIX, s, CKPT_SUFFIX);
    snprintf(path, sizeof path, "%s/%s", what, name);
    if (tried) vlm_warn("trying the previous checkpoint %s\n", path);
    tried++;
    if (load_one(path, z, opt, st) == 0) {
      snprintf(loaded_path, path_len, "%s", path);
      *loaded = 1;
      return 0;
    }
    vlm_warn("checkpoint %s failed its checks (above)\n", path);
  }
  VLM_FAIL("%s: none of its %d checkpoint(s) could be loaded", what, n);
}

int ckpt_clean_dir(const char *dir, MPI_Comm comm) {
  struct stat sb;
  int exists = stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode);
  MPI_Allreduce(MPI_IN_PLACE, &exists, 1, MPI_INT, MPI_MIN, comm);
  if (!exists) return 0;
  long removed = 0;
  VLM_CHECK(h5u_remove_stale_tmp(dir, &removed, comm));
  if (removed > 0) vlm_log("checkpoints: removed %ld stale .tmp file(s) from %s\n", removed, dir);
  return 0;
}
