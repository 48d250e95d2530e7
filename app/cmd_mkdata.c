/* app/cmd_mkdata.c: `vlmtrain mkdata`, which writes a dataset in format v1
 * (docs/formats.md). Today it makes the learnable synthetic dataset
 * (--synthetic); converting Monkey JSON conversations comes with issue 6. Runs on
 * rank 0; the other ranks wait for its result, so every rank returns the same. */
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/commands.h"
#include "common/vlm.h"
#include "io/config.h"
#include "io/dataset.h"

typedef struct {
  int synthetic, help;
  const char *config, *out;
  long samples;
  long seed;
  synth_options synth;
} mkdata_args;

static void mkdata_usage(FILE *f) {
  synth_options d;
  synth_options_default(&d);
  fprintf(f,
          "usage: vlmtrain mkdata --synthetic --config CONFIG.json --out DATA.h5 [options]\n"
          "Writes a dataset in vlmtrain format v1 (docs/formats.md).\n"
          "  --synthetic              make the learnable synthetic colour-class dataset\n"
          "                           (required for now; JSON conversion comes with issue 6)\n"
          "  --config PATH            model config.json (required): vocabulary, image size, slots\n"
          "  --out PATH               output HDF5 file (required); written as PATH.tmp, then renamed\n"
          "  --samples N              number of samples (default 256)\n"
          "  --seed N                 random seed (default 1)\n"
          "  --filler-min N           fewest filler tokens per question (default %d)\n"
          "  --filler-max N           most filler tokens per question (default %d)\n"
          "  --multi-image-every N    every N-th sample has 2 images, 0 = never (default %d)\n"
          "  --help                   print this help and exit\n",
          d.filler_min, d.filler_max, d.multi_image_every);
}

static int parse_long(const char *opt, const char *s, long lo, long hi, long *v) {
  char *end;
  long x = strtol(s, &end, 10);
  if (!*s || *end || x < lo || x > hi)
    VLM_FAIL("mkdata: %s expects an integer in [%ld, %ld], got '%s'", opt, lo, hi, s);
  *v = x;
  return 0;
}

static int mkdata_parse(int argc, char **argv, mkdata_args *a) {
  memset(a, 0, sizeof *a);
  a->samples = 256;
  a->seed = 1;
  synth_options_default(&a->synth);
  for (int i = 0; i < argc; i++) {
    const char *arg = argv[i];
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) { a->help = 1; continue; }
    if (!strcmp(arg, "--synthetic")) { a->synthetic = 1; continue; }
    /* options with a value: "--opt VALUE" or "--opt=VALUE" */
    static const char *const with_value[] = {"--config", "--out", "--samples", "--seed",
                                             "--filler-min", "--filler-max", "--multi-image-every"};
    const char *name = NULL, *val = NULL;
    for (size_t k = 0; k < sizeof with_value / sizeof *with_value; k++) {
      size_t n = strlen(with_value[k]);
      if (!strcmp(arg, with_value[k])) {
        if (i + 1 >= argc) VLM_FAIL("mkdata: %s needs a value (see vlmtrain mkdata --help)", arg);
        name = with_value[k];
        val = argv[++i];
      } else if (!strncmp(arg, with_value[k], n) && arg[n] == '=') {
        name = with_value[k];
        val = arg + n + 1;
      }
      if (name) break;
    }
    if (!name) VLM_FAIL("mkdata: unknown option '%s' (see vlmtrain mkdata --help)", arg);
    long v;
    if (!strcmp(name, "--config")) a->config = val;
    else if (!strcmp(name, "--out")) a->out = val;
    else if (!strcmp(name, "--samples")) {
      VLM_CHECK(parse_long(name, val, 1, LONG_MAX / 2, &a->samples));
    } else if (!strcmp(name, "--seed")) {
      VLM_CHECK(parse_long(name, val, 0, LONG_MAX, &a->seed));
    } else if (!strcmp(name, "--filler-min")) {
      VLM_CHECK(parse_long(name, val, 0, INT_MAX, &v));
      a->synth.filler_min = (int)v;
    } else if (!strcmp(name, "--filler-max")) {
      VLM_CHECK(parse_long(name, val, 0, INT_MAX, &v));
      a->synth.filler_max = (int)v;
    } else {
      VLM_CHECK(parse_long(name, val, 0, INT_MAX, &v));
      a->synth.multi_image_every = (int)v;
    }
  }
  if (a->help) return 0;
  if (!a->synthetic)
    VLM_FAIL("mkdata: only --synthetic is implemented; converting Monkey JSON conversations to the "
             "dataset format comes later (issue 6). Use: vlmtrain mkdata --synthetic --config "
             "CONFIG.json --out DATA.h5");
  if (!a->config) VLM_FAIL("mkdata: --config CONFIG.json is required (see vlmtrain mkdata --help)");
  if (!a->out) VLM_FAIL("mkdata: --out DATA.h5 is required (see vlmtrain mkdata --help)");
  if (a->synth.filler_max < a->synth.filler_min)
    VLM_FAIL("mkdata: --filler-max (%d) must be >= --filler-min (%d)", a->synth.filler_max,
             a->synth.filler_min);
  return 0;
}

static int mkdata_rank0(int argc, char **argv) {
  mkdata_args a;
  VLM_CHECK(mkdata_parse(argc, argv, &a));
  if (a.help) {
    mkdata_usage(stdout);
    return 0;
  }
  monkey_config cfg;
  VLM_CHECK(monkey_config_load(&cfg, a.config));
  double t0 = vlm_now();
  VLM_CHECK(dataset_make_synthetic_ex(a.out, &cfg, a.samples, (unsigned long)a.seed, &a.synth));
  /* reopen: checks what was written and gives the counts for the summary */
  dataset d;
  VLM_CHECK(dataset_open(&d, a.out, &cfg));
  vlm_log("mkdata: wrote %ld samples, %ld tokens, %ld images (longest sample %ld tokens) to %s "
          "in %.2f s\n", d.n_samples, d.n_tokens, d.n_images, d.max_len, a.out, vlm_now() - t0);
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
