/* tests/h5/test_model_load.c: the io/model_h5.h API the trainer uses, under
 * mpirun -np 2 with the tiny model (config given as argv[1]): import of a HF
 * dir, model_h5_load on every rank (one process each) bit-identical to the
 * registry it came from, model_h5_load_ranges with ZeRO-style shards and with
 * overlapping ranges, model_h5_save, a checkpoint-style file (format
 * "vlmtrain-checkpoint", uneven disjoint write ranges) loading too, LoRA
 * tensors absent from HF initialised exactly as weights_load_hf_dir does,
 * a different model config and a non-HDF5 file refused with clear errors.
 * Files land in h5/load/ under the working directory. Rank 0 prints one line
 * per check and "N passed, M failed". */
#define _POSIX_C_SOURCE 200809L
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/vlm.h"
#include "io/config.h"
#include "io/model_h5.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "modules/registry.h"

static int g_rank, g_size, n_pass, n_fail;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
  int all = 0;
  ok = ok != 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (all) n_pass++;
  else n_fail++;
  if (g_rank != 0) return;
  printf("%s ", all ? "ok  " : "FAIL");
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  fflush(stdout);
}

static monkey_config g_cfg;

static int fresh(registry *r) { return registry_build(r, &g_cfg) != 0 || registry_alloc(r) != 0 ? -1 : 0; }

static int same_params(const registry *a, const registry *b) {
  return a->n_params == b->n_params &&
         memcmp(a->params, b->params, (size_t)a->n_params * sizeof(float)) == 0;
}

/* ZeRO-style shards: rank s holds [s*chunk, (s+1)*chunk) of every tensor in
 * its own buffer; `overlap` widens each range to start at 0. */
typedef struct {
  const registry *r;
  float *store;
  long *off;
  int overlap;
} shard_ctx;

static void shard_of(const shard_ctx *c, int idx, long *lo, long *hi) {
  long n = c->r->p[idx].numel, chunk = (n + g_size - 1) / g_size;
  *lo = g_rank * chunk < n ? g_rank * chunk : n;
  *hi = (g_rank + 1) * chunk < n ? (g_rank + 1) * chunk : n;
  if (c->overlap) *lo = 0;
}

static float *shard_range(void *ctx, int idx, long *lo, long *hi) {
  shard_ctx *c = ctx;
  shard_of(c, idx, lo, hi);
  return c->store + c->off[idx];
}

/* Uneven disjoint ranges for writing: rank 0 the first third, the last rank the rest. */
static float *uneven_range(void *ctx, int idx, long *lo, long *hi) {
  const registry *r = ctx;
  long n = r->p[idx].numel, cut = n / 3;
  *lo = g_rank == 0 ? 0 : cut;
  *hi = g_rank == 0 ? cut : n;
  if (g_size > 2 && g_rank > 0 && g_rank < g_size - 1) *lo = *hi = n; /* middle ranks: nothing */
  if (g_size > 2 && g_rank == g_size - 1) *lo = cut;
  return registry_param(r, idx) + *lo;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  vlm_set_rank(g_rank);
  if (argc < 2) {
    if (g_rank == 0) fprintf(stderr, "usage: test_model_load CONFIG.json\n");
    MPI_Finalize();
    return 2;
  }
  const char *cfg_path = argv[1];
  if (monkey_config_load(&g_cfg, cfg_path) != 0) {
    MPI_Finalize();
    return 1;
  }
  char *cfg_text = NULL;
  config_read_file(cfg_path, &cfg_text, NULL);
  mkdir("h5", 0755);
  mkdir("h5/load", 0755);

  /* the source model */
  registry r = {0}, r2 = {0};
  int rc = fresh(&r);
  if (rc == 0) registry_init_random(&r, &g_cfg, 11);
  if (g_rank == 0 && rc == 0) rc = weights_save_hf_dir(&r, "h5/load/hf", cfg_path);
  MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  check(rc == 0, "a random tiny model saved as a HF directory");
  rc = model_h5_import("h5/load/hf", "h5/load/m.h5", 42, MPI_COMM_WORLD);
  check(rc == 0, "model_h5_import on %d ranks", g_size);

  rc = fresh(&r2) || model_h5_load(&r2, "h5/load/m.h5");
  check(rc == 0 && same_params(&r, &r2),
        "model_h5_load on every rank (MPI_COMM_SELF): all %ld parameters bit-identical", r.n_params);

  /* ZeRO-style shards and overlapping ranges */
  shard_ctx sc = {.r = &r};
  sc.off = malloc((size_t)r.n * sizeof *sc.off);
  long total = 0;
  for (int i = 0; i < r.n; i++) sc.off[i] = total, total += r.p[i].numel;
  sc.store = malloc((size_t)total * sizeof *sc.store);
  for (int overlap = 0; overlap <= 1; overlap++) {
    sc.overlap = overlap;
    memset(sc.store, 0xff, (size_t)total * sizeof *sc.store);
    rc = model_h5_load_ranges(&r, "h5/load/m.h5", MPI_COMM_WORLD, shard_range, &sc);
    int same = rc == 0;
    for (int i = 0; same && i < r.n; i++) {
      long lo, hi;
      shard_of(&sc, i, &lo, &hi);
      same = memcmp(sc.store + sc.off[i], registry_param(&r, i) + lo, (size_t)(hi - lo) * 4) == 0;
    }
    check(same, "model_h5_load_ranges, %s: every rank's part bit-identical, checksums verified",
          overlap ? "overlapping ranges [0, hi)" : "ZeRO shards [s*chunk, (s+1)*chunk)");
  }
  free(sc.store);
  free(sc.off);

  /* model_h5_save, and a checkpoint-style file written by uneven ranges */
  rc = model_h5_save(&r, "h5/load/saved.h5", cfg_text, MPI_COMM_WORLD);
  memset(r2.params, 0, (size_t)r2.n_params * 4);
  rc = rc || model_h5_load(&r2, "h5/load/saved.h5");
  check(rc == 0 && same_params(&r, &r2), "model_h5_save then model_h5_load: bit-identical");
  h5u_file f;
  rc = h5u_create_tmp(&f, "h5/load/ckpt.h5", MPI_COMM_WORLD);
  int ok = rc == 0 && model_h5_write_header(&f, MODEL_H5_CHECKPOINT_FORMAT, 1, cfg_text) == 0 &&
           h5u_attr_write_int(&f, "/", "step", 17) == 0 &&
           model_h5_write_tensors(&f, &r, uneven_range, &r) == 0;
  rc = rc || h5u_commit(&f, ok);
  memset(r2.params, 0, (size_t)r2.n_params * 4);
  rc = rc || model_h5_load(&r2, "h5/load/ckpt.h5");
  check(rc == 0 && ok && same_params(&r, &r2),
        "a \"vlmtrain-checkpoint\" file written by uneven disjoint ranges loads bit-identical");
  model_h5 m;
  rc = model_h5_open(&m, "h5/load/ckpt.h5", MPI_COMM_WORLD);
  check(rc == 0 && strcmp(m.format, MODEL_H5_CHECKPOINT_FORMAT) == 0 && m.reg.n == r.n &&
            m.cfg.hidden_size == g_cfg.hidden_size,
        "model_h5_open: format, model config and registry of the checkpoint");
  if (rc == 0) model_h5_close(&m);

  /* LoRA tensors absent from HF: the same values as weights_load_hf_dir gives */
  if (g_rank == 0) {
    st_write_item *it = malloc((size_t)r.n * sizeof *it);
    int n = 0;
    for (int i = 0; i < r.n; i++) {
      if (strstr(r.p[i].name, "lora")) continue;
      it[n].name = r.p[i].name;
      it[n].data = registry_param(&r, i);
      it[n].ndim = r.p[i].ndim;
      for (int d = 0; d < 4; d++) it[n].shape[d] = r.p[i].shape[d];
      n++;
    }
    mkdir("h5/load/nolora", 0755);
    rc = st_write("h5/load/nolora/model.safetensors", it, n, ST_F32);
    char *text = NULL;
    long len = 0;
    rc = rc || config_read_file(cfg_path, &text, &len) ||
         config_write_file("h5/load/nolora/config.json", text, len);
    free(text);
    free(it);
  }
  MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  registry r3 = {0};
  weights_load_stats ws;
  rc = rc || fresh(&r3) || weights_load_hf_dir(&r3, "h5/load/nolora", 42, &ws);
  rc = rc || model_h5_import("h5/load/nolora", "h5/load/nolora.h5", 42, MPI_COMM_WORLD);
  rc = rc || model_h5_load(&r2, "h5/load/nolora.h5");
  check(rc == 0 && ws.n_lora_init > 0 && same_params(&r2, &r3),
        "LoRA tensors absent from HF (%ld): import initialises them exactly as weights_load_hf_dir",
        ws.n_lora_init);
  registry_free(&r3);

  /* refused: another model's registry, a non-HDF5 file */
  monkey_config c2 = g_cfg;
  c2.num_hidden_layers += 1;
  registry r4 = {0};
  vlm_set_quiet_errors(1);
  rc = registry_build(&r4, &c2) || registry_alloc(&r4);
  int rc2 = rc == 0 ? model_h5_load(&r4, "h5/load/m.h5") : 0;
  check(rc == 0 && rc2 != 0 && strstr(vlm_last_error(), "m.h5") &&
            strstr(vlm_last_error(), "different model"),
        "a registry of another config refused: \"%s\"", vlm_last_error());
  registry_free(&r4);
  if (g_rank == 0) config_write_file("h5/load/text.h5", "text\n", 5);
  MPI_Barrier(MPI_COMM_WORLD);
  rc = model_h5_load(&r2, "h5/load/text.h5");
  check(rc != 0 && strstr(vlm_last_error(), "not an HDF5 file"), "a text file refused: \"%s\"",
        vlm_last_error());
  vlm_set_quiet_errors(0);

  registry_free(&r);
  registry_free(&r2);
  free(cfg_text);
  if (g_rank == 0) printf("%d passed, %d failed\n", n_pass, n_fail);
  MPI_Finalize();
  return n_fail ? 1 : 0;
}
