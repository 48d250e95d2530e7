/* app/cmd_train.c: `vlmtrain train --model DIR --data DATA.h5 --config
 * TRAIN.json --out RUNDIR [--steps N] [--audit]`: the training loop. Loads the
 * model and the dataset, selects trainable parameters and groups, and runs
 * optimizer steps of gradient_accumulation_steps micro-batches each; writes
 * RUNDIR/metrics.jsonl (one JSON object per step), a human line per step, and
 * the final weights to RUNDIR/final/ (HF layout). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "app/commands.h"
#include "app/options.h"
#include "common/vlm.h"
#include "io/config.h"
#include "io/dataset.h"
#include "io/loader.h"
#include "io/train_config.h"
#include "io/weights.h"
#include "modules/model.h"
#include "modules/optimizer.h"
#include "modules/registry.h"

typedef struct {
  int32_t *tokens, *labels;
  uint8_t *pixels;
  int *len, *n_img;
  long *idx;
} batch_buffers;

static int make_dir(const char *path) {
  if (mkdir(path, 0755) != 0 && errno != EEXIST)
    VLM_FAIL("cannot create directory %s: %s", path, strerror(errno));
  return 0;
}

/* Reads the next micro-batch of B samples (in data order) into bb and b. */
static int read_micro_batch(dataset *d, data_order *o, int B, batch_buffers *bb, mb_batch *b) {
  const size_t img_bytes = (size_t)d->image_size * d->image_size * 3;
  long t = 0, im = 0;
  data_order_next(o, bb->idx, B);
  for (int j = 0; j < B; j++) {
    VLM_CHECK(dataset_read_sample(d, bb->idx[j], bb->tokens + t, bb->labels + t, &bb->len[j],
                                  bb->pixels + im * img_bytes, &bb->n_img[j]));
    t += bb->len[j];
    im += bb->n_img[j];
  }
  b->n_samples = B;
  b->len = bb->len;
  b->n_img = bb->n_img;
  b->tokens = bb->tokens;
  b->labels = bb->labels;
  b->pixels = bb->pixels;
  return 0;
}

/* --audit: per group, how many parameters changed and by how much; frozen
 * parameters must be bit-identical. */
static int audit(const registry *r, const float *before) {
  long frozen_changed = 0, frozen_total = 0;
  vlm_log("audit: parameter changes since the start of the run\n");
  for (int g = -1; g < r->n_groups; g++) {
    long changed = 0, total = 0;
    double max_abs = 0, sum_abs = 0;
    for (int i = 0; i < r->n; i++) {
      const param_info *p = &r->p[i];
      if (p->group != g) continue;
      const float *a = before + p->offset, *b = r->params + p->offset;
      for (long k = 0; k < p->numel; k++) {
        double dlt = fabs((double)b[k] - (double)a[k]);
        if (memcmp(&a[k], &b[k], sizeof(float)) != 0) changed++;
        if (dlt > max_abs) max_abs = dlt;
        sum_abs += dlt;
      }
      total += p->numel;
    }
    if (g < 0) {
      frozen_changed = changed;
      frozen_total = total;
      vlm_log("  %-14s %14ld of %14ld elements changed%s\n", "frozen", changed, total,
              changed ? "  <-- ERROR: frozen parameters must not change" : " (bit-identical)");
    } else {
      vlm_log("  %-14s %14ld of %14ld elements changed, max |delta| %.3e, mean |delta| %.3e\n",
              r->groups[g].name, changed, total, max_abs, total ? sum_abs / total : 0.0);
    }
  }
  (void)frozen_total;
  if (frozen_changed) VLM_FAIL("audit: %ld frozen parameter elements changed", frozen_changed);
  return 0;
}

int cmd_train(int argc, char **argv) {
  opt o[] = {
      {"--model", "DIR", NULL, "model directory (config.json + model.safetensors or shards)", 0, 0},
      {"--data", "DATA.h5", NULL, "dataset in vlmtrain's HDF5 format (docs/formats.md)", 0, 0},
      {"--config", "TRAIN.json", NULL, "training config (DeepSpeed key names; docs/config.md)", 0, 0},
      {"--out", "RUNDIR", NULL, "run directory: metrics.jsonl, final/", 0, 0},
      {"--steps", "N", "", "optimizer steps (overrides train_steps of the config)", 0, 0},
      {"--audit", NULL, NULL, "at the end, report per group how many parameters changed", 0, 0},
  };
  int rc = opts_parse("train", "--model DIR --data DATA.h5 --config TRAIN.json --out RUNDIR [--steps N] [--audit]",
                      o, 6, argc, argv, NULL, 0, NULL);
  if (rc) return rc > 0 ? 0 : -1;
  const char *model_dir = o[0].value, *data_path = o[1].value, *out_dir = o[3].value;
  const int do_audit = o[5].value[0] == '1';

  char path[4096];
  monkey_config c;
  snprintf(path, sizeof path, "%s/config.json", model_dir);
  VLM_CHECK(monkey_config_load(&c, path));
  train_config t;
  VLM_CHECK(train_config_load(&t, o[2].value));
  if (o[4].value[0]) {
    long steps;
    VLM_CHECK(opt_long(&o[4], &steps));
    if (steps < 1) VLM_FAIL("option --steps: expected a positive number of steps, found %ld", steps);
    t.train_steps = steps;
  }
  if (t.bf16) vlm_warn("bf16.enabled is set: the CPU path computes in fp32\n");

  /* everything below owns resources: failures jump to done */
  int ok = 0;
  registry r = {0};
  dataset d = {0};
  int d_open = 0;
  data_order order = {0};
  model m = {0};
  int m_made = 0;
  adamw_state opt_state = {0};
  batch_buffers bb = {0};
  float *before = NULL;
  FILE *metrics = NULL;

  VLM_CHECK_GOTO(registry_build(&r, &c), done);
  VLM_CHECK_GOTO(registry_select(&r, &t), done);
  VLM_CHECK_GOTO(registry_alloc(&r), done);
  weights_load_stats ws;
  VLM_CHECK_GOTO(weights_load_hf_dir(&r, model_dir, (unsigned long)t.seed, &ws), done);
  vlm_log("model: %s (%ld tensors from %d file(s); %ld LoRA tensors absent and initialised as "
          "upstream: lora_a Kaiming-uniform, lora_b 0, lora_scale 1)\n",
          model_dir, ws.n_loaded, ws.n_files, ws.n_lora_init);
  registry_print_summary(&r, &c);

  VLM_CHECK_GOTO(dataset_open(&d, data_path, &c), done);
  d_open = 1;
  if (d.max_len > c.seq_length) {
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "%s: a sample has %ld tokens, more than the model's seq_length %d", data_path,
                 d.max_len, c.seq_length);
    goto done;
  }
  const int B = t.micro_batch, GA = t.grad_accum;
  const int replicas = 1; /* data-parallel replicas: one process for now */
  if (t.train_batch_size > 0 && t.train_batch_size != (long)B * GA * replicas) {
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "%s: train_batch_size %ld != train_micro_batch_size_per_gpu %d x "
                 "gradient_accumulation_steps %d x %d replica(s)", o[2].value, t.train_batch_size,
                 B, GA, replicas);
    goto done;
  }
  VLM_CHECK_GOTO(data_order_init(&order, d.n_samples, t.shuffle, (unsigned long)t.data_seed), done);
  const long max_tokens = (long)B * d.max_len, max_images = (long)B * d.max_images;
  VLM_CHECK_GOTO(model_create(&m, &c, &r, B, (int)max_tokens, (int)max_images, t.recompute_vit,
                              t.recompute_llm), done);
  m_made = 1;
  VLM_CHECK_GOTO(adamw_init(&opt_state, &r, &t), done);
  const size_t img_bytes = (size_t)d.image_size * d.image_size * 3;
  bb.tokens = vlm_alloc((size_t)max_tokens * sizeof(int32_t), "batch tokens");
  bb.labels = vlm_alloc((size_t)max_tokens * sizeof(int32_t), "batch labels");
  bb.pixels = vlm_alloc((size_t)(max_images > 0 ? max_images : 1) * img_bytes, "batch pixels");
  bb.len = vlm_alloc((size_t)B * sizeof(int), "batch lengths");
  bb.n_img = vlm_alloc((size_t)B * sizeof(int), "batch image counts");
  bb.idx = vlm_alloc((size_t)B * sizeof(long), "batch indices");
  if (!bb.tokens || !bb.labels || !bb.pixels || !bb.len || !bb.n_img || !bb.idx) goto done;
  if (do_audit) {
    before = vlm_alloc((size_t)r.n_params * sizeof(float), "audit copy of the parameters");
    if (!before) goto done;
    memcpy(before, r.params, (size_t)r.n_params * sizeof(float));
  }
  VLM_CHECK_GOTO(make_dir(out_dir), done);
  snprintf(path, sizeof path, "%s/metrics.jsonl", out_dir);
  metrics = fopen(path, "w");
  if (!metrics) {
    vlm_error_at(__FILE__, __LINE__, __func__, "cannot write %s: %s", path, strerror(errno));
    goto done;
  }
  vlm_log("data: %s: %ld samples, %ld tokens, %ld images; micro-batch %d x %d accumulation = %d "
          "samples per step; %ld steps; %d threads; recompute vit %s, llm %s\n",
          data_path, d.n_samples, d.n_tokens, d.n_images, B, GA, B * GA, t.train_steps,
          omp_get_max_threads(), t.recompute_vit ? "on" : "off", t.recompute_llm ? "on" : "off");

  const double t_start = vlm_now();
  for (long step = 0; step < t.train_steps; step++) {
    const double t0 = vlm_now();
    memset(r.grads, 0, (size_t)r.n_trainable * sizeof(float));
    double step_loss = 0.0, flops = 0.0;
    long tokens = 0, targets = 0;
    for (int mb = 0; mb < GA; mb++) {
      mb_batch b;
      VLM_CHECK_GOTO(read_micro_batch(&d, &order, B, &bb, &b), done);
      double loss = 0.0;
      long n_tgt = 0;
      VLM_CHECK_GOTO(model_forward_backward(&m, &b, 1.0f / (float)GA, &loss, &n_tgt), done);
      step_loss += loss / GA;
      targets += n_tgt;
      flops += m.flops;
      for (int j = 0; j < B; j++) tokens += b.len[j];
    }
    const double norm = grad_global_norm(&r);
    if (!isfinite(norm) || !isfinite(step_loss)) {
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "step %ld: loss %g, gradient norm %g: training diverged (lower the learning "
                   "rate or enable gradient_clipping)", step + 1, step_loss, norm);
      goto done;
    }
    grad_clip(&r, norm, t.grad_clip);
    const double factor = schedule_factor(&t, step);
    adamw_apply(&opt_state, &r, factor);
    const double dt = vlm_now() - t0;
    const double lr = t.lr * factor;
    fprintf(metrics,
            "{\"step\": %ld, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g, \"tokens_per_s\": "
            "%.6g, \"gflops\": %.6g, \"step_time\": %.6g, \"tokens\": %ld, \"targets\": %ld}\n",
            step + 1, step_loss, lr, norm, tokens / dt, flops / dt * 1e-9, dt, tokens, targets);
    fflush(metrics);
    if (t.steps_per_print > 0 && ((step + 1) % t.steps_per_print == 0 || step + 1 == t.train_steps))
      vlm_log("step %5ld/%ld | loss %8.4f | lr %.3e | grad_norm %8.4f | %7.0f tok/s | %6.1f "
              "GFLOP/s | %.3f s\n",
              step + 1, t.train_steps, step_loss, lr, norm, tokens / dt, flops / dt * 1e-9, dt);
  }
  vlm_log("trained %ld steps in %.1f s\n", t.train_steps, vlm_now() - t_start);
  snprintf(path, sizeof path, "%s/final", out_dir);
  char cfg_path[4096];
  snprintf(cfg_path, sizeof cfg_path, "%s/config.json", model_dir);
  VLM_CHECK_GOTO(weights_save_hf_dir(&r, path, cfg_path), done);
  vlm_log("final weights: %s/model.safetensors\n", path);
  if (do_audit) VLM_CHECK_GOTO(audit(&r, before), done);
  ok = 1;

done:
  if (metrics) fclose(metrics);
  vlm_free(before);
  vlm_free(bb.tokens);
  vlm_free(bb.labels);
  vlm_free(bb.pixels);
  vlm_free(bb.len);
  vlm_free(bb.n_img);
  vlm_free(bb.idx);
  adamw_free(&opt_state);
  if (m_made) model_free(&m);
  data_order_free(&order);
  if (d_open) dataset_close(&d);
  registry_free(&r);
  train_config_free(&t);
  return ok ? 0 : -1;
}
