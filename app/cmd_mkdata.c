/* app/cmd_mkdata.c: `vlmtrain mkdata`, which writes a dataset in format v1
 * (docs/formats.md). Today it makes the learnable synthetic dataset
 * (--synthetic); converting Monkey JSON conversations comes with issue 6. Rank 0
 * does the work; the other ranks wait for its result, so every rank returns the
 * same. */
#include <limits.h>
#include <mpi.h>

#include "app/commands.h"
#include "app/options.h"
#include "common/vlm.h"
#include "io/config.h"
#include "io/dataset.h"

#define MKDATA_USAGE                                                                          \
  "--synthetic --config CONFIG.json --out DATA.h5 [--samples N] [--seed N] [--filler-min N] " \
  "[--filler-max N] [--multi-image-every N]"

enum { O_SYNTH, O_CONFIG, O_OUT, O_SAMPLES, O_SEED, O_FMIN, O_FMAX, O_MULTI, O_COUNT };

/* An integer option in [lo, hi]; errors name the option. */
static int opt_range(const opt *o, long lo, long hi, long *v) {
  VLM_CHECK(opt_long(o, v));
  if (*v < lo || *v > hi) {
    if (hi >= INT_MAX)
      VLM_FAIL("vlmtrain mkdata: option %s must be >= %ld, found %ld", o->name, lo, *v);
    VLM_FAIL("vlmtrain mkdata: option %s must be in [%ld, %ld], found %ld", o->name, lo, hi, *v);
  }
  return 0;
}

static int mkdata_rank0(int argc, char **argv) {
  opt o[O_COUNT] = {
      [O_SYNTH] = {"--synthetic", NULL, NULL,
                   "make the learnable synthetic colour-class dataset (required for now: "
                   "converting Monkey JSON comes with issue 6)",
                   0, 0},
      [O_CONFIG] = {"--config", "CONFIG.json", NULL,
                    "model config: vocabulary, token ids, image size, image slots", 0, 0},
      [O_OUT] = {"--out", "DATA.h5", NULL, "output file (written as DATA.h5.tmp, then renamed)", 0,
                 0},
      [O_SAMPLES] = {"--samples", "N", "256", "number of samples", 0, 0},
      [O_SEED] = {"--seed", "N", "1", "random seed (same seed: byte-identical file)", 0, 0},
      [O_FMIN] = {"--filler-min", "N", "4", "fewest filler tokens per question", 0, 0},
      [O_FMAX] = {"--filler-max", "N", "12", "most filler tokens per question", 0, 0},
      [O_MULTI] = {"--multi-image-every", "N", "0",
                   "every N-th sample has 2 images, the answer from the first (0 = never)", 0, 0},
  };
  int rc = opts_parse("mkdata", MKDATA_USAGE, o, O_COUNT, argc, argv, NULL, 0, NULL);
  if (rc) return rc > 0 ? 0 : -1;
  if (!o[O_SYNTH].given)
    VLM_FAIL(
        "vlmtrain mkdata: only --synthetic is implemented; converting Monkey JSON "
        "conversations to the dataset format comes later (issue 6). Use: vlmtrain mkdata "
        "--synthetic --config CONFIG.json --out DATA.h5");
  long samples, seed, fmin, fmax, multi;
  VLM_CHECK(opt_range(&o[O_SAMPLES], 1, INT_MAX, &samples));
  VLM_CHECK(opt_range(&o[O_SEED], 0, LONG_MAX, &seed));
  VLM_CHECK(opt_range(&o[O_FMIN], 0, INT_MAX, &fmin));
  VLM_CHECK(opt_range(&o[O_FMAX], 0, INT_MAX, &fmax));
  VLM_CHECK(opt_range(&o[O_MULTI], 0, INT_MAX, &multi));
  if (fmax < fmin)
    VLM_FAIL("vlmtrain mkdata: --filler-max (%ld) must be >= --filler-min (%ld)", fmax, fmin);
  synth_options so = {
      .filler_min = (int)fmin, .filler_max = (int)fmax, .multi_image_every = (int)multi};
  const char *out = o[O_OUT].value;

  monkey_config cfg;
  VLM_CHECK(monkey_config_load(&cfg, o[O_CONFIG].value));
  double t0 = vlm_now();
  VLM_CHECK(dataset_make_synthetic_ex(out, &cfg, samples, (unsigned long)seed, &so));
  /* reopen: checks what was written against the config and gives the counts */
  dataset d;
  VLM_CHECK(dataset_open(&d, out, &cfg));
  vlm_log(
      "mkdata: wrote %ld samples, %ld tokens, %ld images (longest sample %ld tokens) to %s "
      "in %.2f s\n",
      d.n_samples, d.n_tokens, d.n_images, d.max_len, out, vlm_now() - t0);
  dataset_close(&d);
  return 0;
}

int cmd_mkdata(int argc, char **argv) {
  int mpi_up = 0, rank = 0, size = 1;
  MPI_Initialized(&mpi_up);
  if (mpi_up) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  int rc = 0;
  if (rank == 0) rc = mkdata_rank0(argc, argv);
  if (size > 1) MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return rc == 0 ? 0 : -1;
}
