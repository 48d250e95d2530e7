/* tests/model/test_omp_nesting.c: the model never calls a kernel from inside a
 * serialised OpenMP region. Such a region (a parallel construct whose if-clause
 * was false, or a team of one) makes every parallel region the kernel opens a
 * nested team, for which libgomp starts fresh threads on each call while its
 * pool's workers spin beside them: with libgomp's default spin that made the
 * attention of a `small` step twice as slow. A kernel must run either at the
 * outermost level (and open its own team) or inside an active team (and run on
 * its calling thread).
 * One forward and backward of one sample (1 image: 5 ViT views on 2 threads,
 * so the views run one after the other in the forward and in parallel in the
 * ViT backward; 1 sequence, so the LLM's attention runs at the outermost level)
 * goes through a copy of the CPU table whose kernels record where they were
 * called from. Fails if any call was made inside a serialised region, or if
 * either path (outermost, inside a team) went untested.
 * usage: test_omp_nesting MODEL_DIR DATA.h5 TRAIN.json (micro-batch 1) */
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/vlm.h"
#include "modules/model.h"
#include "modules/zero.h"
#include "tests/model/model_inputs.h"

enum { K_LINEAR, K_ATTENTION, K_LORA, K_N };
static const char *KNAME[K_N] = {"linear", "attention", "lora"};
/* per kind: calls at the outermost level, inside an active team, inside a serialised region */
static long n_top[K_N], n_team[K_N], n_serial[K_N];
static const vlm_backend *CPU;

static void record(int kind) {
  /* levels counts every enclosing region, active levels only those with >1 thread */
  int level = omp_get_level(), active = omp_get_active_level();
#pragma omp critical(omp_nesting_record)
  {
    if (level == 0) n_top[kind]++;
    else if (level == active) n_team[kind]++;
    else n_serial[kind]++;
  }
}

static void w_linear_forward(float *out, const float *in, const float *W, const float *b, int N,
                             int I, int O) {
  record(K_LINEAR);
  CPU->linear_forward(out, in, W, b, N, I, O);
}
static void w_linear_backward(float *din, float *dW, float *db, const float *dout, const float *in,
                              const float *W, int N, int I, int O) {
  record(K_LINEAR);
  CPU->linear_backward(din, dW, db, dout, in, W, N, I, O);
}
static void w_attention_forward(float *out, float *lse, const float *q, const float *k,
                                const float *v, const attn_shape *s, float *scratch) {
  record(K_ATTENTION);
  CPU->attention_forward(out, lse, q, k, v, s, scratch);
}
static void w_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                 const float *out, const float *lse, const float *q,
                                 const float *k, const float *v, const attn_shape *s,
                                 float *scratch) {
  record(K_ATTENTION);
  CPU->attention_backward(dq, dk, dv, dout, out, lse, q, k, v, s, scratch);
}
static void w_lora_forward(float *y, float *t, const float *x, const float *A, const float *B,
                           const float *scale, int N, int K, int O, int r) {
  record(K_LORA);
  CPU->lora_forward(y, t, x, A, B, scale, N, K, O, r);
}
static void w_lora_backward(float *dx, float *dA, float *dB, float *dscale, const float *dy,
                            const float *x, const float *t, const float *A, const float *B,
                            const float *scale, int N, int K, int O, int r, float *scratch) {
  record(K_LORA);
  CPU->lora_backward(dx, dA, dB, dscale, dy, x, t, A, B, scale, N, K, O, r, scratch);
}

static int run(char **argv) {
  model_inputs in;
  VLM_CHECK(model_inputs_open(&in, argv[1], argv[2], argv[3]));
  const train_config *t = &in.t;
  if (t->micro_batch != 1) VLM_FAIL("%s: train_micro_batch_size_per_gpu must be 1", argv[3]);
  dataset *d = &in.d;
  int32_t *tok = malloc((size_t)d->max_len * sizeof *tok), *lab = malloc((size_t)d->max_len * sizeof *lab);
  uint8_t *pix = malloc((size_t)(d->max_images + 1) * d->image_size * d->image_size * 3);
  int len = 0, nimg = 0;
  if (!tok || !lab || !pix) VLM_FAIL("out of memory");
  VLM_CHECK(dataset_read_sample(d, 0, tok, lab, &len, pix, &nimg));
  if (nimg != 1) VLM_FAIL("%s: sample 0 has %d images; this test needs 1", argv[2], nimg);

  CPU = vlm_backend_cpu();
  vlm_backend ops = *CPU;
  ops.name = "cpu-nesting-probe";
  ops.linear_forward = w_linear_forward;
  ops.linear_backward = w_linear_backward;
  ops.attention_forward = w_attention_forward;
  ops.attention_backward = w_attention_backward;
  ops.lora_forward = w_lora_forward;
  ops.lora_backward = w_lora_backward;

  vlm_comms comms;
  VLM_CHECK(comms_init(&comms, MPI_COMM_SELF, 1));
  zero_state z;
  VLM_CHECK(zero_init_backend(&z, &ops, &comms, &in.r, t->persistence_threshold, t->max_live_parameters, 0));
  model m;
  VLM_CHECK(model_create(&m, &ops, &in.c, &z, 1, len, 1, t->recompute_vit, t->recompute_llm));
  mb_batch b = {.n_samples = 1, .len = &len, .n_img = &nimg, .tokens = tok, .labels = lab, .pixels = pix};
  long want = mb_count_targets(&b), n_tgt = 0;
  double loss = 0;
  VLM_CHECK(model_forward_backward(&m, &b, want > 0 ? 1.0f / (float)want : 0.0f, &loss, &n_tgt));

  int ok = 1;
  for (int k = 0; k < K_N; k++) {
    int good = n_serial[k] == 0;
    ok &= good;
    printf("%s %-9s kernels: %ld calls at the outermost level, %ld inside a team, %ld inside a "
           "serialised region\n", good ? "ok  " : "FAIL", KNAME[k], n_top[k], n_team[k], n_serial[k]);
  }
  /* both paths of the model's per-view loops must have been taken */
  int covered = n_top[K_ATTENTION] > 0 && n_team[K_ATTENTION] > 0;
  ok &= covered;
  printf("%s attention was called both at the outermost level and inside a team (threads: %d)\n",
         covered ? "ok  " : "FAIL", omp_get_max_threads());
  model_free(&m);
  zero_free(&z);
  comms_free(&comms);
  model_inputs_close(&in);
  free(tok);
  free(lab);
  free(pix);
  return ok ? 0 : -1;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: test_omp_nesting MODEL_DIR DATA.h5 TRAIN.json\n");
    return 2;
  }
  MPI_Init(&argc, &argv);
  omp_set_max_active_levels(1); /* as vlmtrain does */
  int rc = run(argv);
  MPI_Finalize();
  return rc == 0 ? 0 : 1;
}
