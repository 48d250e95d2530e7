/* app/cmd_train.c: `vlmtrain train --model DIR --data DATA.h5 --config
 * TRAIN.json --out RUNDIR [--steps N] [--audit] [--device cpu|cuda]`: the
 * training loop. Loads the
 * model and the dataset, selects trainable parameters and groups, and runs
 * optimizer steps of gradient_accumulation_steps micro-batches each; writes
 * RUNDIR/metrics.jsonl (one JSON object per step), a human line per step, and
 * the final weights to RUNDIR/final/ (HF layout). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <mpi.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "app/commands.h"
#include "app/options.h"
#include "common/cpus.h"
#include "common/vlm.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "io/dataset.h"
#include "io/loader.h"
#include "io/model_h5.h"
#include "io/prefetch.h"
#include "io/train_config.h"
#include "io/weights.h"
#include "kernels/backend.h"
#include "modules/model.h"
#include "modules/optimizer.h"
#include "modules/registry.h"
#include "modules/zero.h"
#include "slurm/runtime.h"


static int make_dir(const char *path) {
  if (mkdir(path, 0755) != 0 && errno != EEXIST)
    VLM_FAIL("cannot create directory %s: %s", path, strerror(errno));
  return 0;
}

static float *shard_range(void *ctx, int idx, long *lo, long *hi) {
  return zero_local_range((zero_state *)ctx, idx, lo, hi);
}

/* On resume: keeps the metrics lines of steps <= step (a run that died after
 * its last checkpoint logged steps that will be run again), atomically. */
static int trim_metrics(const char *path, long step) {
  FILE *in = fopen(path, "r");
  if (!in) return 0;
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *out = fopen(tmp, "w");
  if (!out) {
    fclose(in);
    VLM_FAIL("cannot write %s: %s", tmp, strerror(errno));
  }
  char line[8192];
  while (fgets(line, sizeof line, in)) {
    long s = -1;
    const char *k = strstr(line, "\"step\": ");
    if (k) s = strtol(k + 8, NULL, 10);
    if (s >= 1 && s <= step) fputs(line, out);
  }
  fclose(in);
  if (fclose(out) != 0 || rename(tmp, path) != 0) VLM_FAIL("cannot rewrite %s", path);
  return 0;
}

/* --audit: per group, how many parameters changed and by how much; frozen
 * parameters must be bit-identical. Each global element is counted once: by
 * the rank that would write it to a checkpoint (zero_io_range). */
static int audit(zero_state *z, const float *before) {
  const registry *r = z->reg;
  const int ng = r->n_groups + 1; /* slot 0: frozen */
  double *cnt = calloc((size_t)ng * 3, sizeof(double)), *mx = calloc((size_t)ng, sizeof(double));
  if (!cnt || !mx) VLM_FAIL("out of memory");
  for (int i = 0; i < r->n; i++) {
    long lo, hi;
    const float *b = zero_io_range(z, i, &lo, &hi);
    if (!b) continue;
    const float *a = before + z->sh[i].off;
    int g = r->p[i].group + 1;
    for (long k = 0; k < hi - lo; k++) {
      double d = fabs((double)b[k] - (double)a[k]);
      cnt[3 * g] += memcmp(&a[k], &b[k], sizeof(float)) != 0;
      cnt[3 * g + 1] += 1;
      cnt[3 * g + 2] += d;
      if (d > mx[g]) mx[g] = d;
    }
  }
  MPI_Allreduce(MPI_IN_PLACE, cnt, ng * 3, MPI_DOUBLE, MPI_SUM, z->comm->world);
  MPI_Allreduce(MPI_IN_PLACE, mx, ng, MPI_DOUBLE, MPI_MAX, z->comm->world);
  vlm_log("audit: parameter changes since the start of the run\n");
  for (int g = 0; g < ng; g++) {
    if (g == 0)
      vlm_log("  %-14s %14.0f of %14.0f elements changed%s\n", "frozen", cnt[0], cnt[1],
              cnt[0] > 0 ? "  <-- ERROR: frozen parameters must not change" : " (bit-identical)");
    else
      vlm_log("  %-14s %14.0f of %14.0f elements changed, max |delta| %.3e, mean |delta| %.3e\n",
              r->groups[g - 1].name, cnt[3 * g], cnt[3 * g + 1], mx[g],
              cnt[3 * g + 1] > 0 ? cnt[3 * g + 2] / cnt[3 * g + 1] : 0.0);
  }
  double frozen_changed = cnt[0];
  free(cnt);
  free(mx);
  if (frozen_changed > 0) VLM_FAIL("audit: %.0f frozen parameter elements changed", frozen_changed);
  return 0;
}

/* Seconds per phase of the run on this rank (the PETSc -log_view idea). */
enum { PH_COMPUTE, PH_GATHER, PH_REDUCE, PH_OPTIMIZER, PH_IO, PH_N };
static const char *PHASE_NAMES[PH_N] = {"compute", "exposed gather", "exposed reduce", "optimizer", "I/O"};

/* Prints the end-of-run table (min/max across ranks) and writes it as JSON. */
static void phase_table(const vlm_comms *c, const double *ph, const zero_stats *st, long steps,
                        const double *mem, FILE *summary) {
  double mn[PH_N], mx[PH_N], sum[PH_N];
  MPI_Allreduce(ph, mn, PH_N, MPI_DOUBLE, MPI_MIN, c->world);
  MPI_Allreduce(ph, mx, PH_N, MPI_DOUBLE, MPI_MAX, c->world);
  MPI_Allreduce(ph, sum, PH_N, MPI_DOUBLE, MPI_SUM, c->world);
  double b[3] = {st->bytes_allgather, st->bytes_reduce_scatter, st->bytes_allreduce};
  double bmin[3], bmax[3];
  MPI_Allreduce(b, bmin, 3, MPI_DOUBLE, MPI_MIN, c->world);
  MPI_Allreduce(b, bmax, 3, MPI_DOUBLE, MPI_MAX, c->world);
  double total = 0;
  for (int k = 0; k < PH_N; k++) total += sum[k] / c->size;
  vlm_log("\nphase            time min (s)   time max (s)   %% of run (mean)   [%d ranks: %d replica(s) x %d shard(s)]\n",
          c->size, c->R, c->S);
  for (int k = 0; k < PH_N; k++)
    vlm_log("%-16s %12.3f   %12.3f   %14.1f\n", PHASE_NAMES[k], mn[k], mx[k],
            total > 0 ? 100.0 * sum[k] / c->size / total : 0.0);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double rss = ru.ru_maxrss / 1024.0, rss_min, rss_max; /* MiB */
  MPI_Allreduce(&rss, &rss_min, 1, MPI_DOUBLE, MPI_MIN, c->world);
  MPI_Allreduce(&rss, &rss_max, 1, MPI_DOUBLE, MPI_MAX, c->world);
  vlm_log("%-16s %12.1f   %12.1f   (MiB)\n", "peak resident", rss_min, rss_max);
  static const char *coll[3] = {"allgather", "reduce-scatter", "allreduce"};
  vlm_log("collective       bytes/step min   bytes/step max   calls (rank 0)\n");
  const long calls[3] = {st->n_allgather, st->n_reduce_scatter, st->n_allreduce};
  for (int k = 0; k < 3; k++)
    vlm_log("%-16s %14.0f   %14.0f   %8ld\n", coll[k], bmin[k] / steps, bmax[k] / steps, calls[k]);
  if (summary) {
    fprintf(summary, "{\"ranks\": %d, \"replicas\": %d, \"shard\": %d, \"steps\": %ld, \"phases\": {", c->size,
            c->R, c->S, steps);
    for (int k = 0; k < PH_N; k++)
      fprintf(summary, "%s\"%s\": {\"min\": %.6g, \"max\": %.6g}", k ? ", " : "", PHASE_NAMES[k],
              mn[k], mx[k]);
    fprintf(summary, "}, \"bytes_per_step\": {");
    for (int k = 0; k < 3; k++)
      fprintf(summary, "%s\"%s\": {\"min\": %.6g, \"max\": %.6g}", k ? ", " : "", coll[k],
              bmin[k] / steps, bmax[k] / steps);
    fprintf(summary, "}, \"peak_rss_mib\": {\"min\": %.1f, \"max\": %.1f}, \"predicted_mib\": "
            "{\"parameters\": %.2f, \"gradients\": %.2f, \"moments\": %.2f, \"gather_buffers\": "
            "%.2f, \"activations\": %.2f}}\n", rss_min, rss_max, mem[0], mem[1], mem[2], mem[3], mem[4]);
  }
}

int cmd_train(int argc, char **argv) {
  opt o[] = {
      {"--model", "DIR", NULL, "model directory (config.json + model.safetensors or shards)", 0, 0},
      {"--data", "DATA.h5", NULL, "dataset in vlmtrain's HDF5 format (docs/formats.md)", 0, 0},
      {"--config", "TRAIN.json", NULL, "training config (DeepSpeed key names; docs/config.md)", 0, 0},
      {"--out", "RUNDIR", NULL, "run directory: metrics.jsonl, final/", 0, 0},
      {"--steps", "N", "", "optimizer steps (overrides train_steps of the config)", 0, 0},
      {"--audit", NULL, NULL, "at the end, report per group how many parameters changed", 0, 0},
      {"--resume", "auto|PATH", "", "continue from a checkpoint: auto = the newest valid one in "
       "the run's checkpoint directory (none: start fresh), or a checkpoint file", 0, 0},
      {"--device", "cpu|cuda", "cpu", "where the model computes: cpu, or cuda (needs a build "
       "with -DVLMTRAIN_CUDA=ON; docs/cuda.md)", 0, 0},
  };
  int rc = opts_parse("train", "--model DIR --data DATA.h5 --config TRAIN.json --out RUNDIR [--steps N] [--audit] [--resume auto|PATH] [--device cpu|cuda]",
                      o, 8, argc, argv, NULL, 0, NULL);
  if (rc) return rc > 0 ? 0 : -1;
  const char *device = o[7].value;
  if (strcmp(device, "cpu") != 0 && strcmp(device, "cuda") != 0) {
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "vlmtrain train: option --device: unknown device \"%s\": choose cpu or cuda "
                 "(see vlmtrain train --help)", device);
    return CMD_USAGE_ERROR;
  }
  const double t_launch = vlm_now();
  const char *model_dir = o[0].value, *data_path = o[1].value, *out_dir = o[3].value;
  const int do_audit = o[5].value[0] == '1';

  char path[4096];
  monkey_config c;
  /* --model: a HF directory, or a vlmtrain model/checkpoint file (.h5) whose
   * config travels inside it */
  struct stat msb;
  const int model_is_h5 = stat(model_dir, &msb) == 0 && S_ISREG(msb.st_mode);
  char *h5_config = NULL;
  if (model_is_h5) {
    model_h5 mh;
    VLM_CHECK(model_h5_open(&mh, model_dir, MPI_COMM_WORLD));
    c = mh.cfg;
    h5_config = strdup(mh.config_json);
    VLM_CHECK(model_h5_close(&mh));
    if (!h5_config) VLM_FAIL("out of memory");
  } else {
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    VLM_CHECK(monkey_config_load(&c, path));
  }
  train_config t;
  VLM_CHECK(train_config_load(&t, o[2].value));
  if (o[4].value[0]) {
    long steps;
    VLM_CHECK(opt_long(&o[4], &steps));
    if (steps < 1) VLM_FAIL("option --steps: expected a positive number of steps, found %ld", steps);
    t.train_steps = steps;
  }
  { /* before anything collective: refuse a wrong launch, catch signals, watch for hangs */
    char launch[512];
    VLM_CHECK(rt_startup_check(MPI_COMM_WORLD, launch, sizeof launch));
    vlm_log("launch: %s\n", launch);
    VLM_CHECK(rt_signals_install());
    VLM_CHECK(rt_watchdog_start(t.watchdog_timeout));
  }
  const vlm_backend *ops = vlm_backend_get(device); /* cuda: this rank's GPU */
  if (!ops) {
    rt_watchdog_stop();
    train_config_free(&t);
    free(h5_config);
    return -1;
  }
  if (t.bf16 && ops->set_bf16) {
    ops->set_bf16(1);
    vlm_log("bf16: GEMM operands rounded to bf16, fp32 accumulation; master weights, moments, "
            "gradients and the other kernels fp32\n");
  } else if (t.bf16) {
    vlm_warn("bf16.enabled is set: the %s backend computes in fp32\n", ops->name);
  }
  int stopped = 0;

  /* everything below owns resources: failures jump to done. Failures that
   * can differ between ranks (data) are agreed on with an all-reduce first. */
  int ok = 0;
  vlm_comms comms = {0};
  int comms_made = 0;
  registry r = {0};
  zero_state z = {0};
  int z_made = 0;
  dataset d = {0};
  int d_open = 0;
  data_order order = {0};
  model m = {0};
  int m_made = 0;
  adamw_state opt_state = {0};
  prefetcher pf = {0};
  long *all_idx = NULL;
  float *before = NULL;
  FILE *metrics = NULL, *summary = NULL;
  char *model_json = NULL;
  long json_len = 0, step0 = 0;
  double mem[5] = {0};
  char ckpt_dir[2048];
  if (t.ckpt_dir[0])
    snprintf(ckpt_dir, sizeof ckpt_dir, "%s", t.ckpt_dir);
  else
    snprintf(ckpt_dir, sizeof ckpt_dir, "%s/checkpoints", out_dir);

  VLM_CHECK_GOTO(comms_init(&comms, MPI_COMM_WORLD, t.shard_size), done);
  comms_made = 1;
  VLM_CHECK_GOTO(registry_build(&r, &c), done);
  VLM_CHECK_GOTO(registry_select(&r, &t), done);
  /* shards first, then each rank reads only its ranges of the weights: no rank
   * ever holds the whole model */
  VLM_CHECK_GOTO(zero_init_backend(&z, ops, &comms, &r, t.persistence_threshold,
                                   t.max_live_parameters, t.replicate_frozen), done);
  z_made = 1;
  /* bf16 gathers with bf16.enabled, bf16 gradient sums with communication_data_type
   * "bf16", where the backend runs the collectives (CUDA: NCCL) */
  if (t.comm_bf16 && !ops->all_gather)
    vlm_warn("communication_data_type \"bf16\": the %s backend reduces gradients in fp32\n",
             ops->name);
  VLM_CHECK_GOTO(zero_set_comm_types(&z, t.bf16 && ops->set_bf16 != NULL, t.comm_bf16), done);
  weights_load_stats ws;
  memset(&ws, 0, sizeof ws);
  if (model_is_h5) {
    VLM_CHECK_GOTO(model_h5_load_ranges(&r, model_dir, comms.world, shard_range, &z), done);
    ws.n_loaded = r.n;
    ws.n_files = 1;
  } else {
    VLM_CHECK_GOTO(weights_load_hf_dir_ranges(&r, model_dir, (unsigned long)t.seed, &ws,
                                              shard_range, &z), done);
  }
  zero_params_to_device(&z); /* the loaders filled the host side */
  vlm_log("model: %s (%ld tensors from %d file(s); %ld LoRA tensors absent and initialised as "
          "upstream: lora_a Kaiming-uniform, lora_b 0, lora_scale 1)\n",
          model_dir, ws.n_loaded, ws.n_files, ws.n_lora_init);
  registry_print_summary(&r, &c);

  VLM_CHECK_GOTO(dataset_open_mpi(&d, data_path, &c, comms.world, t.read_collective), done);
  d_open = 1;
  if (d.max_len > c.seq_length) {
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "%s: a sample has %ld tokens, more than the model's seq_length %d", data_path,
                 d.max_len, c.seq_length);
    goto done;
  }
  /* The global batch is fixed by the config: train_batch_size when given
   * (DeepSpeed: micro x accumulation x ranks), else micro x accumulation x ranks.
   * Each micro-step's global micro-batch is split over all ranks. */
  const int GA = t.grad_accum, W = comms.size;
  long G = (long)t.micro_batch * W;
  if (t.train_batch_size > 0) {
    if (t.train_batch_size % GA != 0) {
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "%s: train_batch_size %ld is not a multiple of gradient_accumulation_steps %d",
                   o[2].value, t.train_batch_size, GA);
      goto done;
    }
    G = t.train_batch_size / GA;
  }
  if (G < W) {
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "%s: the global micro-batch has %ld samples but there are %d ranks: every rank "
                 "needs at least one (raise train_batch_size)", o[2].value, G, W);
    goto done;
  }
  const long my_lo = comms.rank * G / W, my_hi = (comms.rank + 1) * G / W;
  const int B = (int)(my_hi - my_lo), Bmax = (int)((G + W - 1) / W);
  VLM_CHECK_GOTO(data_order_init(&order, d.n_samples, t.shuffle, (unsigned long)t.data_seed), done);
  const long max_tokens = (long)Bmax * d.max_len, max_images = (long)Bmax * d.max_images;
  VLM_CHECK_GOTO(model_create(&m, ops, &c, &z, Bmax, (int)max_tokens, (int)max_images, t.recompute_vit,
                              t.recompute_llm), done);
  m_made = 1;
  VLM_CHECK_GOTO(adamw_init(&opt_state, &z, &t), done);
  const double MiB = 1048576.0;
  mem[0] = z.n_local * 4.0 / MiB;
  mem[1] = z.n_local_grad * 4.0 / MiB;
  mem[2] = 2.0 * z.n_local_grad * 4.0 / MiB;
  mem[3] = zero_buffer_bytes(&z) / MiB;
  mem[4] = m.arena_bytes / MiB;
  vlm_log("memory per rank (rank 0): parameters %.1f MiB, gradients %.1f, AdamW moments %.1f, "
          "gather buffers %.1f, activations and scratch %.1f: %.1f MiB predicted\n",
          mem[0], mem[1], mem[2], mem[3], mem[4], mem[0] + mem[1] + mem[2] + mem[3] + mem[4]);
  if (model_is_h5) {
    model_json = h5_config;
    h5_config = NULL;
  } else {
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    VLM_CHECK_GOTO(config_read_file(path, &model_json, &json_len), done);
  }
  VLM_CHECK_GOTO(ckpt_clean_dir(ckpt_dir, comms.world), done);
  if (o[6].value[0]) { /* --resume */
    ckpt_state cs;
    int loaded = 0;
    char from[2048];
    const int is_auto = strcmp(o[6].value, "auto") == 0;
    const char *what = is_auto ? ckpt_dir : o[6].value;
    struct stat csb;
    int dir_exists = stat(ckpt_dir, &csb) == 0 && S_ISDIR(csb.st_mode);
    MPI_Allreduce(MPI_IN_PLACE, &dir_exists, 1, MPI_INT, MPI_MIN, comms.world);
    const double tl = vlm_now();
    if (!is_auto || dir_exists) /* auto with no checkpoint directory yet: a fresh start */
      VLM_CHECK_GOTO(ckpt_load(what, &z, &opt_state, &cs, &loaded, from, sizeof from), done);
    if (loaded) vlm_log("resume: checkpoint read in %.2f s\n", vlm_now() - tl);
    if (loaded) {
      step0 = cs.step;
      VLM_CHECK_GOTO(data_order_seek(&order, cs.epoch, cs.cursor), done);
      vlm_log("resume: %s: step %ld, data epoch %ld position %ld (written by %d x %d ranks, "
              "resumed on %d x %d)\n", from, cs.step, cs.epoch, cs.cursor, cs.R, cs.S, comms.R, comms.S);
      if (step0 >= t.train_steps) vlm_log("resume: the run already has its %ld steps\n", t.train_steps);
    } else {
      vlm_log("resume: no checkpoint in %s: starting at step 0\n", ckpt_dir);
    }
  }
  VLM_CHECK_GOTO(prefetch_init(&pf, &d, Bmax, max_tokens, max_images, t.read_collective), done);
  all_idx = vlm_alloc((size_t)G * sizeof(long), "global batch indices");
  if (!all_idx) goto done;
  if (do_audit) {
    before = vlm_alloc((size_t)(z.n_local > 0 ? z.n_local : 1) * sizeof(float), "audit copy");
    if (!before) goto done;
    zero_params_to_host(&z);
    memcpy(before, z.hparams, (size_t)z.n_local * sizeof(float));
  }
  int open_ok = 1;
  if (comms.rank == 0) {
    open_ok = make_dir(out_dir) == 0;
    snprintf(path, sizeof path, "%s/metrics.jsonl", out_dir);
    if (open_ok && step0 > 0) open_ok = trim_metrics(path, step0) == 0;
    if (open_ok && !(metrics = fopen(path, step0 > 0 ? "a" : "w"))) {
      vlm_error_at(__FILE__, __LINE__, __func__, "cannot write %s: %s", path, strerror(errno));
      open_ok = 0;
    }
  }
  MPI_Allreduce(MPI_IN_PLACE, &open_ok, 1, MPI_INT, MPI_MIN, comms.world);
  if (!open_ok) goto done;
  vlm_log("data: %s: %ld samples, %ld tokens, %ld images; global batch %ld = %ld per micro-step x "
          "%d accumulation; %d rank(s) = %d replica(s) x %d shard rank(s), %d..%d samples per "
          "rank; %ld steps; %d threads per rank; recompute vit %s, llm %s\n",
          data_path, d.n_samples, d.n_tokens, d.n_images, G * GA, G, GA, W, comms.R, comms.S,
          (int)(G / W), Bmax, t.train_steps, omp_get_max_threads(), t.recompute_vit ? "on" : "off",
          t.recompute_llm ? "on" : "off");
  {
    vlm_placement pl;
    char warn[1024];
    vlm_omp_placement(&pl);
    vlm_log("threads: %s\n", pl.text);
    if (vlm_placement_warning(&pl, warn, sizeof warn))
      fprintf(stderr, "vlmtrain: warning: rank %d: %s", comms.rank, warn);
  }

  /* The reader thread fetches the next micro-batch while this one computes.
   * pf_epoch/pf_cursor: the data position before the batch in flight, i.e. the
   * first sample not consumed yet (what a checkpoint must record). */
  long pf_epoch = order.epoch, pf_cursor = order.cursor;
  int in_flight = 0;
  if (step0 < t.train_steps) {
    data_order_next(&order, all_idx, (int)G);
    prefetch_start(&pf, all_idx + my_lo, B);
    in_flight = 1;
  }
  double ph[PH_N] = {0};
  zero_reset_stats(&z);
  const double t_start = vlm_now();
  vlm_log("start-up: %.2f s from launch to the first step%s\n", vlm_now() - t_launch,
          step0 > 0 ? " (resumed)" : "");
  for (long step = step0; step < t.train_steps; step++) {
    const double t0 = vlm_now();
    zero_stats st0;
    zero_get_stats(&z, &st0);
    double t_io = 0, t_opt = 0;
    zero_clear_grads(&z);
    double loss_part = 0.0, flops = 0.0;
    long counts[2] = {0, 0}; /* tokens, targets */
    for (int mb = 0; mb < GA; mb++) {
      const double ti = vlm_now();
      sample_batch *sb = prefetch_wait(&pf);
      in_flight = 0;
      int read_ok = sb->rc == 0;
      MPI_Allreduce(MPI_IN_PLACE, &read_ok, 1, MPI_INT, MPI_MIN, comms.world);
      if (!read_ok) goto done;
      if (!(step + 1 == t.train_steps && mb + 1 == GA)) { /* fetch the next one meanwhile */
        pf_epoch = order.epoch;
        pf_cursor = order.cursor;
        data_order_next(&order, all_idx, (int)G);
        prefetch_start(&pf, all_idx + my_lo, B);
        in_flight = 1;
      }
      mb_batch b = {.n_samples = B, .len = sb->len, .n_img = sb->n_img, .tokens = sb->tokens,
                    .labels = sb->labels, .pixels = sb->pixels};
      long tgt = mb_count_targets(&b);
      MPI_Allreduce(MPI_IN_PLACE, &tgt, 1, MPI_LONG, MPI_SUM, comms.world);
      t_io += vlm_now() - ti;
      const float scale = tgt > 0 ? (float)(1.0 / ((double)tgt * GA)) : 0.0f;
      double lsum = 0.0;
      long n_tgt = 0;
      VLM_CHECK_GOTO(model_forward_backward(&m, &b, scale, &lsum, &n_tgt), done);
      if (tgt > 0) loss_part += lsum / (double)tgt / GA;
      counts[1] += n_tgt;
      flops += m.flops;
      for (int j = 0; j < B; j++) counts[0] += b.len[j];
    }
    zero_reduce_grads(&z);
    double red[2] = {loss_part, flops};
    MPI_Allreduce(MPI_IN_PLACE, red, 2, MPI_DOUBLE, MPI_SUM, comms.world);
    MPI_Allreduce(MPI_IN_PLACE, counts, 2, MPI_LONG, MPI_SUM, comms.world);
    const double step_loss = red[0];
    const double norm = grad_global_norm(&z);
    if (!isfinite(norm) || !isfinite(step_loss)) {
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "step %ld: loss %g, gradient norm %g: training diverged (lower the learning "
                   "rate or enable gradient_clipping)", step + 1, step_loss, norm);
      goto done;
    }
    const double to = vlm_now();
    const double factor = schedule_factor(&t, step);
    adamw_apply(&opt_state, &z, factor, grad_clip_coef(norm, t.grad_clip));
    t_opt = vlm_now() - to;
    double dt = vlm_now() - t0;
    MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, comms.world);
    zero_stats st1;
    zero_get_stats(&z, &st1);
    const double t_gather = st1.t_gather_wait - st0.t_gather_wait, t_red = st1.t_reduce - st0.t_reduce;
    ph[PH_GATHER] += t_gather;
    ph[PH_REDUCE] += t_red;
    ph[PH_OPTIMIZER] += t_opt;
    ph[PH_IO] += t_io;
    ph[PH_COMPUTE] += dt - t_gather - t_red - t_opt - t_io;
    const double lr = t.lr * factor;
    if (metrics) {
      fprintf(metrics,
              "{\"step\": %ld, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g, \"tokens_per_s\": "
              "%.6g, \"gflops\": %.6g, \"step_time\": %.6g, \"tokens\": %ld, \"targets\": %ld, "
              "\"t_gather\": %.6g, \"t_reduce\": %.6g, \"t_optimizer\": %.6g, \"t_io\": %.6g, "
              "\"bytes_allgather\": %.0f, \"bytes_reduce_scatter\": %.0f, \"bytes_allreduce\": %.0f}\n",
              step + 1, step_loss, lr, norm, counts[0] / dt, red[1] / dt * 1e-9, dt, counts[0],
              counts[1], t_gather, t_red, t_opt, t_io, st1.bytes_allgather - st0.bytes_allgather,
              st1.bytes_reduce_scatter - st0.bytes_reduce_scatter,
              st1.bytes_allreduce - st0.bytes_allreduce);
      fflush(metrics);
    }
    if (t.steps_per_print > 0 && ((step + 1) % t.steps_per_print == 0 || step + 1 == t.train_steps))
      vlm_log("step %5ld/%ld | loss %8.4f | lr %.3e | grad_norm %8.4f | %7.0f tok/s | %6.1f "
              "GFLOP/s | %.3f s\n",
              step + 1, t.train_steps, step_loss, lr, norm, counts[0] / dt, red[1] / dt * 1e-9, dt);
    int last = step + 1 == t.train_steps;
    const int stop = rt_stop_requested(comms.world); /* SIGUSR1/SIGTERM on any rank */
    if (last || stop || (t.ckpt_every > 0 && (step + 1) % t.ckpt_every == 0)) {
      const double tc = vlm_now();
      if (in_flight) prefetch_wait(&pf); /* HDF5 is not thread-safe: the reader must be idle */
      ckpt_state cs = {.step = step + 1, .epoch = in_flight ? pf_epoch : order.epoch,
                       .cursor = in_flight ? pf_cursor : order.cursor,
                       .data_seed = t.data_seed, .shuffle = t.shuffle, .R = comms.R, .S = comms.S};
      VLM_CHECK_GOTO(ckpt_save(ckpt_dir, &z, &opt_state, &cs, model_json, t.json_text, t.ckpt_keep),
                     done);
      ph[PH_IO] += vlm_now() - tc;
      vlm_log("checkpoint: %s/" CKPT_PREFIX "%08ld" CKPT_SUFFIX " (%.2f s)\n", ckpt_dir, step + 1,
              vlm_now() - tc);
    }
    if (stop && !last) {
      vlm_log("stopped by %s after step %ld, checkpoint written\n",
              stop & RT_STOP_REQUEUE ? "SIGUSR1" : "SIGTERM", step + 1);
      if ((stop & RT_STOP_REQUEUE) && comms.rank == 0 && rt_in_slurm() && rt_requeue() == 0)
        vlm_log("requeued: this job will start again and continue with --resume auto\n");
      stopped = 1;
      break;
    }
  }
  if (stopped) {
    ok = 1;
    goto done;
  }
  vlm_log("trained %ld steps in %.1f s\n", t.train_steps - step0, vlm_now() - t_start);
  if (comms.rank == 0) {
    snprintf(path, sizeof path, "%s/summary.json", out_dir);
    summary = fopen(path, "w");
  }
  zero_stats st;
  zero_get_stats(&z, &st);
  phase_table(&comms, ph, &st, t.train_steps - step0 > 0 ? t.train_steps - step0 : 1, mem, summary);
  const double tw = vlm_now();
  VLM_CHECK_GOTO(zero_gather_to_root(&z), done);
  int save_ok = 1;
  if (comms.rank == 0) {
    snprintf(path, sizeof path, "%s/final", out_dir);
    char cfg_path[4096];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", model_dir);
    if (model_is_h5) { /* the config came from inside the file */
      snprintf(cfg_path, sizeof cfg_path, "%s/model_config.json", out_dir);
      save_ok = config_write_file(cfg_path, model_json, (long)strlen(model_json)) == 0;
    }
    save_ok = save_ok && weights_save_hf_dir(&r, path, cfg_path) == 0;
    if (save_ok) vlm_log("final weights: %s/model.safetensors (%.1f s)\n", path, vlm_now() - tw);
  }
  MPI_Allreduce(MPI_IN_PLACE, &save_ok, 1, MPI_INT, MPI_MIN, comms.world);
  if (!save_ok) goto done;
  if (do_audit) {
    zero_params_to_host(&z);
    VLM_CHECK_GOTO(audit(&z, before), done);
  }
  ok = 1;

done:
  free(model_json);
  free(h5_config);
  if (metrics) fclose(metrics);
  if (summary) fclose(summary);
  vlm_free(before);
  vlm_free(all_idx);
  prefetch_free(&pf);
  adamw_free(&opt_state);
  if (m_made) model_free(&m);
  data_order_free(&order);
  if (d_open) dataset_close(&d);
  if (z_made) zero_free(&z);
  registry_free(&r);
  if (comms_made) comms_free(&comms);
  train_config_free(&t);
  vlm_backend_shutdown(ops);
  rt_watchdog_stop();
  int world_size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  if (!ok && world_size > 1) /* a failure on some ranks must not leave the others waiting */
    MPI_Abort(MPI_COMM_WORLD, 1);
  return !ok ? -1 : stopped ? RT_EXIT_STOPPED : 0;
}
