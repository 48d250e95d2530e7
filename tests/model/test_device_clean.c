/* tests/model/test_device_clean.c: the model, ZeRO (one rank), AdamW and the
 * checkpoint path are device-clean. Two optimizer steps of two micro-batches
 * each run once on the CPU backend and once on the test-only "cpu-strict"
 * table (tests/model/strict_backend.c: on_device = 1, host_parallel = 0, its
 * memory unreadable by the host outside backend calls). The strict run must not
 * touch backend memory from the host (it would die with the buffer's name) and
 * must give the CPU run's losses, gradient norms and parameters; a checkpoint
 * written from it and read into a fresh state must hold the same parameters and
 * moments. A probe first checks that the strict table does catch a host read.
 * usage: test_device_clean MODEL_DIR DATA.h5 TRAIN.json */
#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/vlm.h"
#include "io/checkpoint.h"
#include "modules/model.h"
#include "modules/optimizer.h"
#include "modules/zero.h"
#include "tests/model/model_inputs.h"
#include "tests/model/strict_backend.h"

enum { STEPS = 2, ACCUM = 2 };

typedef struct {
  double loss[STEPS], norm[STEPS];
  float *params; /* [n_params] after the last step */
  long n;
} result;

typedef struct {
  int32_t *tok, *lab;
  uint8_t *pix;
  int *len, *nimg;
} batch_buf;

static int read_batch(dataset *d, long first, int B, batch_buf *bb, mb_batch *b) {
  const size_t img = (size_t)d->image_size * d->image_size * 3;
  long t_off = 0, i_off = 0;
  for (int j = 0; j < B; j++) {
    VLM_CHECK(dataset_read_sample(d, first + j, bb->tok + t_off, bb->lab + t_off, &bb->len[j],
                                  bb->pix + i_off * img, &bb->nimg[j]));
    t_off += bb->len[j];
    i_off += bb->nimg[j];
  }
  *b = (mb_batch){.n_samples = B, .len = bb->len, .n_img = bb->nimg, .tokens = bb->tok,
                  .labels = bb->lab, .pixels = bb->pix};
  return 0;
}

/* Trains STEPS steps on backend ops; with ckpt_dir, also writes a checkpoint at
 * the end and checks that reading it back gives the same shards and moments. */
static int train(const vlm_backend *ops, char **argv, result *res, const char *ckpt_dir) {
  model_inputs in;
  VLM_CHECK(model_inputs_open(&in, argv[1], argv[2], argv[3]));
  const train_config *t = &in.t;
  registry *r = &in.r;
  dataset *d = &in.d;
  const int B = t->micro_batch;
  if ((long)B * STEPS * ACCUM > d->n_samples)
    VLM_FAIL("the dataset has %ld samples; %d are needed", d->n_samples, B * STEPS * ACCUM);
  batch_buf bb = {malloc((size_t)B * d->max_len * 4), malloc((size_t)B * d->max_len * 4),
                  malloc((size_t)(B * d->max_images + 1) * d->image_size * d->image_size * 3),
                  malloc((size_t)B * sizeof(int)), malloc((size_t)B * sizeof(int))};
  if (!bb.tok || !bb.lab || !bb.pix || !bb.len || !bb.nimg) VLM_FAIL("out of memory");
  vlm_comms comms;
  VLM_CHECK(comms_init(&comms, MPI_COMM_WORLD, 1));
  zero_state z;
  VLM_CHECK(zero_init_backend(&z, ops, &comms, r, t->persistence_threshold, t->max_live_parameters, 0));
  model m;
  VLM_CHECK(model_create(&m, ops, &in.c, &z, B, (int)(B * d->max_len),
                         d->max_images > 0 ? (int)(B * d->max_images) : 1, t->recompute_vit,
                         t->recompute_llm));
  adamw_state opt;
  VLM_CHECK(adamw_init(&opt, &z, t));
  long next = 0;
  for (int s = 0; s < STEPS; s++) {
    zero_clear_grads(&z);
    mb_batch b[ACCUM];
    long tgt = 0;
    double lsum = 0;
    for (int a = 0; a < ACCUM; a++) { /* the normaliser needs every micro-batch's targets */
      VLM_CHECK(read_batch(d, next + (long)a * B, B, &bb, &b[a]));
      tgt += mb_count_targets(&b[a]);
    }
    for (int a = 0; a < ACCUM; a++) {
      VLM_CHECK(read_batch(d, next, B, &bb, &b[a]));
      next += B;
      double l = 0;
      long n = 0;
      VLM_CHECK(model_forward_backward(&m, &b[a], tgt > 0 ? 1.0f / (float)tgt : 0.0f, &l, &n));
      lsum += l;
    }
    zero_reduce_grads(&z);
    res->loss[s] = tgt > 0 ? lsum / (double)tgt : 0.0;
    res->norm[s] = grad_global_norm(&z);
    /* max_norm 0.05: small enough to clip */
    adamw_apply(&opt, &z, schedule_factor(t, s), grad_clip_coef(res->norm[s], 0.05));
  }
  VLM_CHECK(zero_gather_to_root(&z));
  res->n = r->n_params;
  res->params = malloc((size_t)r->n_params * sizeof(float));
  if (!res->params) VLM_FAIL("out of memory");
  memcpy(res->params, r->params, (size_t)r->n_params * sizeof(float));
  int rc = 0;
  if (ckpt_dir) {
    char *mj = NULL;
    long mjl = 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", argv[1]);
    VLM_CHECK(config_read_file(path, &mj, &mjl));
    ckpt_state cs = {.step = STEPS, .R = 1, .S = 1};
    VLM_CHECK(ckpt_save(ckpt_dir, &z, &opt, &cs, mj, t->json_text, 1));
    free(mj);
    zero_state z2;
    VLM_CHECK(zero_init_backend(&z2, ops, &comms, r, t->persistence_threshold, t->max_live_parameters, 0));
    adamw_state o2;
    VLM_CHECK(adamw_init(&o2, &z2, t));
    int loaded = 0;
    char from[1024];
    VLM_CHECK(ckpt_load(ckpt_dir, &z2, &o2, &cs, &loaded, from, sizeof from));
    zero_params_to_host(&z);
    zero_params_to_host(&z2);
    adamw_to_host(&opt);
    adamw_to_host(&o2);
    const size_t pb = (size_t)z.n_local * sizeof(float), mb = (size_t)opt.n * sizeof(float);
    int same = loaded && memcmp(z.hparams, z2.hparams, pb) == 0 &&
               memcmp(opt.hm, o2.hm, mb) == 0 && memcmp(opt.hv, o2.hv, mb) == 0;
    printf("%s checkpoint %s round trip (parameters and moments): %s\n", same ? "ok  " : "FAIL",
           ops->name, same ? "bit-identical" : "differs");
    rc = same ? 0 : -1;
    adamw_free(&o2);
    zero_free(&z2);
  }
  adamw_free(&opt);
  model_free(&m);
  zero_free(&z);
  comms_free(&comms);
  model_inputs_close(&in);
  free(bb.tok);
  free(bb.lab);
  free(bb.pix);
  free(bb.len);
  free(bb.nimg);
  return rc;
}

/* The strict table must catch a host read of its memory (in a child process). */
static int probe(void) {
  pid_t pid = fork();
  if (pid < 0) VLM_FAIL("fork failed");
  if (pid == 0) {
    const vlm_backend *b = strict_backend();
    volatile float *p = b->alloc(64, "probe");
    float x = p ? p[0] : 0.0f;
    _exit(x == 0.0f ? 0 : 1);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  int caught = WIFEXITED(st) && WEXITSTATUS(st) == STRICT_VIOLATION_EXIT;
  printf("%s cpu-strict catches a host read of backend memory\n", caught ? "ok  " : "FAIL");
  return caught ? 0 : -1;
}

static int run(char **argv) {
  result a = {0}, b = {0};
  VLM_CHECK(train(vlm_backend_cpu(), argv, &a, NULL));
  VLM_CHECK(train(strict_backend(), argv, &b, "device_clean_ckpt"));
  printf("ok   the strict run touched no backend memory from the host (%ld backend calls)\n",
         strict_backend_calls());
  double dl = 0, dn = 0, dp = 0, pmax = 0;
  for (int s = 0; s < STEPS; s++) {
    dl = fmax(dl, fabs(a.loss[s] - b.loss[s]) / fabs(a.loss[s]));
    dn = fmax(dn, fabs(a.norm[s] - b.norm[s]) / fabs(a.norm[s]));
  }
  for (long i = 0; i < a.n; i++) {
    dp = fmax(dp, fabs((double)a.params[i] - (double)b.params[i]));
    pmax = fmax(pmax, fabs((double)a.params[i]));
  }
  int bits = memcmp(a.params, b.params, (size_t)a.n * sizeof(float)) == 0 && dl == 0 && dn == 0;
  int ok = dl <= 1e-6 && dn <= 1e-5 && dp <= 1e-6 * pmax;
  printf("%s cpu vs cpu-strict: losses %.9g %.9g / %.9g %.9g, norms %.9g / %.9g; max relative "
         "difference: loss %.2e, norm %.2e, parameters %.2e%s\n", ok ? "ok  " : "FAIL", a.loss[0],
         a.loss[1], b.loss[0], b.loss[1], a.norm[0], b.norm[0], dl, dn, pmax > 0 ? dp / pmax : dp,
         bits ? " (bit-identical)" : "");
  free(a.params);
  free(b.params);
  return ok ? 0 : -1;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: test_device_clean MODEL_DIR DATA.h5 TRAIN.json\n");
    return 2;
  }
  if (probe() != 0) return 1; /* before MPI: the child forks a plain process */
  MPI_Init(&argc, &argv);
  omp_set_max_active_levels(1);
  int rc = run(argv);
  MPI_Finalize();
  return rc == 0 ? 0 : 1;
}
