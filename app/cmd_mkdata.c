/* app/cmd_mkdata.c: `vlmtrain mkdata`, which writes a dataset in format v1
 * (docs/formats.md). Two sources:
 *   --synthetic: the learnable synthetic dataset; rank 0 does the work, the
 *     other ranks wait for its result, so every rank returns the same.
 *   --json TRAIN.json: real data, Monkey or ChatML conversations with images
 *     (issue 6). Every rank takes part: samples are dealt out in rounds, rank r
 *     taking the r-th block of `--block` samples of each round; each rank
 *     tokenises its samples (io/conversation.c), decodes and resizes their
 *     images on its OpenMP threads (io/image.c), and all ranks append the
 *     round collectively to one parallel-HDF5 file (dataset_pwriter), so the
 *     file holds the samples in their JSON order, minus the skipped ones, and
 *     its content does not depend on the number of ranks. A bad sample (image
 *     missing or corrupt, bad conversation, ...) is skipped and counted by
 *     reason; more than --max-skip-fraction of them is an error. Rank 0 prints
 *     the summary (and writes it as JSON with --report). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/commands.h"
#include "app/options.h"
#include "common/vlm.h"
#include "io/config.h"
#include "io/conversation.h"
#include "io/dataset.h"
#include "io/image.h"
#include "io/tokenizer.h"

#define MKDATA_USAGE                                                                          \
  "--synthetic --config CONFIG.json --out DATA.h5 [--samples N] [--seed N] [--filler-min N] " \
  "[--filler-max N] [--multi-image-every N]\n"                                                \
  "   or: vlmtrain mkdata --json TRAIN.json --images ROOT --tokenizer qwen.tiktoken "         \
  "--config CONFIG.json --out DATA.h5 [--format monkey|chatml] [...]\n"                       \
  "       (run the --json form under mpirun to spread the work over ranks)"

enum {
  O_SYNTH,
  O_JSON,
  O_CONFIG,
  O_OUT,
  O_IMAGES,
  O_TOKENIZER,
  O_FORMAT,
  O_TARGETS,
  O_SYSTEM,
  O_MAX_SKIP,
  O_MAX_PIXELS,
  O_BLOCK,
  O_REPORT,
  O_SHOW_SKIPS,
  O_SAMPLES,
  O_SEED,
  O_FMIN,
  O_FMAX,
  O_MULTI,
  O_COUNT
};

static void mkdata_options(opt *o) {
  const opt table[O_COUNT] = {
      [O_SYNTH] = {"--synthetic", NULL, NULL, "make the learnable synthetic colour-class dataset",
                   0, 0},
      [O_JSON] = {"--json", "TRAIN.json", "",
                  "convert real data: a JSON list of Monkey / ChatML conversations", 0, 0},
      [O_CONFIG] = {"--config", "CONFIG.json", NULL,
                    "model config: vocabulary, token ids, image size, image slots, seq_length", 0,
                    0},
      [O_OUT] = {"--out", "DATA.h5", NULL, "output file (written as DATA.h5.tmp, then renamed)", 0,
                 0},
      [O_IMAGES] = {"--images", "ROOT", ".",
                    "--json: folder that relative <img>PATH</img> paths are resolved against", 0,
                    0},
      [O_TOKENIZER] = {"--tokenizer", "RANKS", "",
                       "--json: Qwen's tiktoken ranks file (qwen.tiktoken); required with --json",
                       0, 0},
      [O_FORMAT] = {"--format", "F", "monkey",
                    "--json: monkey (Monkey's template) or chatml (Qwen-VL's ChatML template)", 0,
                    0},
      [O_TARGETS] = {"--chatml-targets", "T", "qwen",
                     "--json chatml: qwen (exactly Qwen-VL's finetune.py labels) or assistant "
                     "(only assistant content and its <|im_end|>)",
                     0, 0},
      [O_SYSTEM] = {"--system-message", "TEXT", "You are a helpful assistant.",
                    "--json chatml: system text of conversations without a system turn", 0, 0},
      [O_MAX_SKIP] = {"--max-skip-fraction", "F", "0.01",
                      "--json: fail when more than this share of the samples is skipped", 0, 0},
      [O_MAX_PIXELS] = {"--max-image-pixels", "N", "100000000",
                        "--json: refuse (skip) images with more pixels than this", 0, 0},
      [O_BLOCK] = {"--block", "N", "16",
                   "--json: samples per rank per round (bounds memory: N x images x S*S*3 bytes)",
                   0, 0},
      [O_REPORT] = {"--report", "FILE", "", "--json: also write the summary as JSON to FILE", 0, 0},
      [O_SHOW_SKIPS] = {"--show-skips", "N", "10",
                        "--json: print the first N skipped samples of each rank with the reason", 0,
                        0},
      [O_SAMPLES] = {"--samples", "N", "256", "--synthetic: number of samples", 0, 0},
      [O_SEED] = {"--seed", "N", "1", "--synthetic: random seed (same seed: byte-identical file)",
                  0, 0},
      [O_FMIN] = {"--filler-min", "N", "4", "--synthetic: fewest filler tokens per question", 0, 0},
      [O_FMAX] = {"--filler-max", "N", "12", "--synthetic: most filler tokens per question", 0, 0},
      [O_MULTI] = {"--multi-image-every", "N", "0",
                   "--synthetic: every N-th sample has 2 images, the answer from the first (0 = "
                   "never)",
                   0, 0},
  };
  memcpy(o, table, sizeof table);
}

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

/* ------------------------------------------------------------------------------
 * --synthetic (rank 0) */

static int mkdata_synthetic(const opt *o) {
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

/* ------------------------------------------------------------------------------
 * --json: options */

typedef struct {
  const char *json, *images, *tokenizer, *config, *out, *report, *system;
  conv_format format;
  chatml_targets targets;
  double max_skip;
  long long max_pixels;
  long block, show_skips;
} json_opts;

static int json_opts_read(const opt *o, json_opts *j) {
  static const int synth_only[] = {O_SAMPLES, O_SEED, O_FMIN, O_FMAX, O_MULTI};
  for (size_t k = 0; k < sizeof synth_only / sizeof synth_only[0]; k++)
    if (o[synth_only[k]].given)
      VLM_FAIL("vlmtrain mkdata: %s belongs to --synthetic, not --json", o[synth_only[k]].name);
  j->json = o[O_JSON].value;
  j->images = o[O_IMAGES].value;
  j->tokenizer = o[O_TOKENIZER].value;
  j->config = o[O_CONFIG].value;
  j->out = o[O_OUT].value;
  j->report = o[O_REPORT].value;
  j->system = o[O_SYSTEM].value;
  if (!j->tokenizer[0])
    VLM_FAIL(
        "vlmtrain mkdata: --json needs --tokenizer RANKS (Qwen's qwen.tiktoken, the file of "
        "\"BASE64 RANK\" lines)");
  if (strcmp(o[O_FORMAT].value, "monkey") == 0)
    j->format = CONV_MONKEY;
  else if (strcmp(o[O_FORMAT].value, "chatml") == 0)
    j->format = CONV_CHATML;
  else
    VLM_FAIL("vlmtrain mkdata: --format must be monkey or chatml, found \"%s\"", o[O_FORMAT].value);
  if (strcmp(o[O_TARGETS].value, "qwen") == 0)
    j->targets = CHATML_TARGETS_QWEN;
  else if (strcmp(o[O_TARGETS].value, "assistant") == 0)
    j->targets = CHATML_TARGETS_ASSISTANT;
  else
    VLM_FAIL("vlmtrain mkdata: --chatml-targets must be qwen or assistant, found \"%s\"",
             o[O_TARGETS].value);
  VLM_CHECK(opt_double(&o[O_MAX_SKIP], &j->max_skip));
  if (!(j->max_skip >= 0.0 && j->max_skip <= 1.0))
    VLM_FAIL("vlmtrain mkdata: --max-skip-fraction must be in [0, 1], found %s",
             o[O_MAX_SKIP].value);
  long v;
  VLM_CHECK(opt_range(&o[O_MAX_PIXELS], 1, LONG_MAX, &v));
  j->max_pixels = v;
  VLM_CHECK(opt_range(&o[O_BLOCK], 1, 1 << 20, &j->block));
  VLM_CHECK(opt_range(&o[O_SHOW_SKIPS], 0, LONG_MAX, &j->show_skips));
  return 0;
}

/* ------------------------------------------------------------------------------
 * --json: counters, reduced over ranks at the end */

#define N_BUCKETS 8
enum {
  C_IN,      /* JSON elements looked at */
  C_KEPT,    /* samples written */
  C_TOKENS,  /* tokens written */
  C_TARGETS, /* labels that are not -100 */
  C_IMAGES,  /* images written */
  C_TRUNC,   /* samples written truncated to seq_length */
  C_SKIP_CONV,
  C_SKIP_IMG = C_SKIP_CONV + CONV_STATUS_COUNT,
  C_HIST = C_SKIP_IMG + IMG_STATUS_COUNT,
  C_COUNT = C_HIST + N_BUCKETS
};

typedef struct {
  long long c[C_COUNT];
  long long longest;
  long shown; /* skip messages printed by this rank */
} mk_stats;

/* Upper edge of length bucket b of seq_length L: bucket b holds (edge(b-1), edge(b)]. */
static long bucket_edge(int b, long L) { return (long)((b + 1) * L / N_BUCKETS); }

static void count_length(mk_stats *st, long len, long L) {
  int b = 0;
  while (b < N_BUCKETS - 1 && len > bucket_edge(b, L)) b++;
  st->c[C_HIST + b]++;
  if (len > st->longest) st->longest = len;
}

static void note_skip(mk_stats *st, const json_opts *jo, int counter, const char *what, long index,
                      const char *id, const char *why) {
  st->c[counter]++;
  if (st->shown >= jo->show_skips) return;
  st->shown++;
  fprintf(stderr, "mkdata: skipping sample %ld%s%s%s: %s: %s\n", index, id[0] ? " (id \"" : "", id,
          id[0] ? "\")" : "", what, why);
}

/* ------------------------------------------------------------------------------
 * --json: one round's samples on this rank */

typedef struct {
  long n, cap;        /* candidate samples (conversation and truncation passed) */
  long *index;        /* JSON index */
  int64_t *len;       /* tokens */
  int32_t *nimg;      /* images */
  int64_t *targets;   /* labels that are not -100 */
  uint8_t *trunc;     /* 1: truncated to seq_length */
  char (*id)[80];     /* for messages */
  int32_t *tok, *lab; /* concatenated */
  size_t nt, tcap;
  char **path;       /* resolved image paths, concatenated */
  int *ist;          /* image status */
  char (*iwhy)[320]; /* image failure reasons */
  long ni, icap;
  uint8_t *px;      /* ni x S x S x 3 */
  size_t px_images; /* images px can hold */
} round_buf;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 16;
  while (c < need) c *= 2;
  void *q = realloc(*p, c * elem);
  if (!q) return -1;
  *p = q;
  *cap = c;
  return 0;
}

static void round_clear(round_buf *r) {
  for (long k = 0; k < r->ni; k++) free(r->path[k]);
  r->n = 0;
  r->nt = 0;
  r->ni = 0;
}

static void round_free(round_buf *r) {
  round_clear(r);
  free(r->index);
  free(r->len);
  free(r->nimg);
  free(r->targets);
  free(r->trunc);
  free(r->id);
  free(r->tok);
  free(r->lab);
  free(r->path);
  free(r->ist);
  free(r->iwhy);
  free(r->px);
  memset(r, 0, sizeof *r);
}

/* Adds a tokenised sample and its resolved image paths to the round. */
static int round_add(round_buf *r, const conv_sample *s, long index, int truncated,
                     const char *root) {
  size_t cap = (size_t)r->cap;
  if ((size_t)r->n + 1 > cap) {
    size_t c1 = cap, c2 = cap, c3 = cap, c4 = cap, c5 = cap, c6 = cap;
    if (grow((void **)&r->index, &c1, (size_t)r->n + 1, sizeof *r->index) ||
        grow((void **)&r->len, &c2, (size_t)r->n + 1, sizeof *r->len) ||
        grow((void **)&r->nimg, &c3, (size_t)r->n + 1, sizeof *r->nimg) ||
        grow((void **)&r->id, &c4, (size_t)r->n + 1, sizeof *r->id) ||
        grow((void **)&r->targets, &c5, (size_t)r->n + 1, sizeof *r->targets) ||
        grow((void **)&r->trunc, &c6, (size_t)r->n + 1, sizeof *r->trunc))
      VLM_FAIL("mkdata: out of memory for the round's samples");
    r->cap = (long)c1;
  }
  size_t tc = r->tcap, tc2 = r->tcap;
  if (grow((void **)&r->tok, &tc, r->nt + s->n, sizeof *r->tok) ||
      grow((void **)&r->lab, &tc2, r->nt + s->n, sizeof *r->lab))
    VLM_FAIL("mkdata: out of memory for the round's tokens");
  r->tcap = tc;
  size_t ic = (size_t)r->icap, ic2 = ic, ic3 = ic;
  if (grow((void **)&r->path, &ic, (size_t)(r->ni + s->n_images), sizeof *r->path) ||
      grow((void **)&r->ist, &ic2, (size_t)(r->ni + s->n_images), sizeof *r->ist) ||
      grow((void **)&r->iwhy, &ic3, (size_t)(r->ni + s->n_images), sizeof *r->iwhy))
    VLM_FAIL("mkdata: out of memory for the round's images");
  r->icap = (long)ic;
  memcpy(r->tok + r->nt, s->tokens, s->n * sizeof *r->tok);
  memcpy(r->lab + r->nt, s->labels, s->n * sizeof *r->lab);
  r->nt += s->n;
  for (int k = 0; k < s->n_images; k++) {
    const char *p = s->images[k];
    size_t len = strlen(p) + strlen(root) + 2;
    char *full = malloc(len);
    if (!full) VLM_FAIL("mkdata: out of memory for an image path");
    if (p[0] == '/' || !root[0])
      snprintf(full, len, "%s", p); /* absolute paths are used as they are */
    else
      snprintf(full, len, "%s/%s", root, p);
    r->path[r->ni++] = full;
  }
  r->index[r->n] = index;
  r->len[r->n] = (int64_t)s->n;
  r->nimg[r->n] = s->n_images;
  r->targets[r->n] = conv_count_targets(s);
  r->trunc[r->n] = (uint8_t)(truncated != 0);
  snprintf(r->id[r->n], sizeof r->id[0], "%s", s->id);
  r->n++;
  return 0;
}

/* Decodes and resizes the round's images (OpenMP threads), then drops every
 * sample with a failed image, compacting tokens and pixels in place. */
static int round_images(round_buf *r, int S, const json_opts *jo, mk_stats *st) {
  const size_t img_bytes = (size_t)S * S * 3;
  if ((size_t)r->ni > r->px_images) {
    uint8_t *p = realloc(r->px, (size_t)r->ni * img_bytes);
    if (!p) VLM_FAIL("mkdata: out of memory for %ld images of %dx%d (lower --block)", r->ni, S, S);
    r->px = p;
    r->px_images = (size_t)r->ni;
  }
  const long ni = r->ni;
#pragma omp parallel for schedule(dynamic, 1)
  for (long k = 0; k < ni; k++)
    r->ist[k] = image_load_resized(r->path[k], S, jo->max_pixels, r->px + (size_t)k * img_bytes,
                                   r->iwhy[k], sizeof r->iwhy[0]);

  long out_s = 0, out_i = 0, in_i = 0;
  size_t out_t = 0, in_t = 0;
  for (long i = 0; i < r->n; i++) {
    const long m = r->nimg[i];
    const size_t len = (size_t)r->len[i];
    long bad = -1;
    for (long k = 0; k < m && bad < 0; k++)
      if (r->ist[in_i + k] != IMG_OK) bad = in_i + k;
    if (bad >= 0) {
      char what[64];
      snprintf(what, sizeof what, "image %s", image_status_name(r->ist[bad]));
      note_skip(st, jo, C_SKIP_IMG + r->ist[bad], what, r->index[i], r->id[i], r->iwhy[bad]);
    } else {
      if (out_t != in_t) {
        memmove(r->tok + out_t, r->tok + in_t, len * sizeof *r->tok);
        memmove(r->lab + out_t, r->lab + in_t, len * sizeof *r->lab);
      }
      if (out_i != in_i && m > 0)
        memmove(r->px + (size_t)out_i * img_bytes, r->px + (size_t)in_i * img_bytes,
                (size_t)m * img_bytes);
      r->len[out_s] = r->len[i];
      r->nimg[out_s] = r->nimg[i];
      r->targets[out_s] = r->targets[i];
      r->trunc[out_s] = r->trunc[i];
      out_s++;
      out_t += len;
      out_i += m;
    }
    in_t += len;
    in_i += m;
  }
  for (long k = 0; k < r->ni; k++) {
    free(r->path[k]);
    r->path[k] = NULL;
  }
  r->n = out_s;
  r->nt = out_t;
  r->ni = out_i; /* from here on: the kept images (their paths are done with) */
  return 0;
}

/* ------------------------------------------------------------------------------
 * --json: input, setup agreement, summary */

/* Rank 0 reads the file; every rank gets the bytes (broadcast in pieces). */
static int read_json_everywhere(const char *path, int rank, MPI_Comm comm, char **text, long *len) {
  *text = NULL;
  *len = 0;
  int rc = 0;
  long n = 0;
  if (rank == 0) {
    rc = config_read_file(path, text, &n);
    if (rc == 0) vlm_log("mkdata: read %s (%ld bytes)\n", path, n);
  }
  MPI_Bcast(&rc, 1, MPI_INT, 0, comm);
  if (rc) return -1; /* rank 0 has said why */
  MPI_Bcast(&n, 1, MPI_LONG, 0, comm);
  if (rank != 0) {
    *text = malloc((size_t)n + 1);
    rc = *text ? 0 : -1;
    if (*text) (*text)[n] = '\0';
  }
  int all = 0;
  MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MIN, comm);
  if (all != 0) {
    free(*text);
    *text = NULL;
    if (rc) VLM_FAIL("mkdata: out of memory for the %ld bytes of %s", n, path);
    return -1;
  }
  const long piece = 1L << 30;
  for (long off = 0; off < n; off += piece) {
    int k = (int)(n - off < piece ? n - off : piece);
    MPI_Bcast(*text + off, k, MPI_CHAR, 0, comm);
  }
  *len = n;
  return 0;
}

/* A deterministic setup step ran on every rank; rank 0 printed its errors and
 * the others were quiet. Returns 0 when every rank succeeded; a rank that
 * failed where rank 0 did not prints its own reason. */
static int agree_setup(int rc, int rank, MPI_Comm comm) {
  int ok = rc == 0, all = 0, ok0 = ok;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm);
  MPI_Bcast(&ok0, 1, MPI_INT, 0, comm);
  if (all) return 0;
  if (rank != 0 && !ok && ok0)
    fprintf(stderr, "vlmtrain: error (rank %d): %s\n", rank, vlm_last_error());
  if (rank == 0 && ok)
    fprintf(stderr, "vlmtrain: error: mkdata setup failed on another rank (see its message)\n");
  return -1;
}

static void reason_name(int c, char *buf, size_t n) {
  if (c >= C_SKIP_IMG)
    snprintf(buf, n, "image %s", image_status_name(c - C_SKIP_IMG));
  else
    snprintf(buf, n, "%s", conv_status_name(c - C_SKIP_CONV));
}

static void print_summary(const mk_stats *t, const json_opts *jo, long seq_len, long n_in,
                          int ranks, double secs) {
  long long skipped = n_in - t->c[C_KEPT];
  vlm_log(
      "mkdata: wrote %lld samples (of %ld in %s), %lld tokens (%lld targets), %lld images to %s "
      "in %.2f s on %d rank%s\n",
      t->c[C_KEPT], n_in, jo->json, t->c[C_TOKENS], t->c[C_TARGETS], t->c[C_IMAGES], jo->out, secs,
      ranks, ranks == 1 ? "" : "s");
  char line[2048];
  size_t k = (size_t)snprintf(line, sizeof line, "mkdata: skipped %lld sample%s (%.2f%%)", skipped,
                              skipped == 1 ? "" : "s", n_in ? 100.0 * (double)skipped / n_in : 0.0);
  const char *sep = ": ";
  for (int c = C_SKIP_CONV; c < C_HIST && k < sizeof line; c++) {
    if (!t->c[c]) continue;
    char name[64];
    reason_name(c, name, sizeof name);
    k += (size_t)snprintf(line + k, sizeof line - k, "%s%s %lld", sep, name, t->c[c]);
    sep = ", ";
  }
  vlm_log("%s\n", line);
  vlm_log("mkdata: truncated to seq_length %ld: %lld sample%s; longest sample %lld tokens\n",
          seq_len, t->c[C_TRUNC], t->c[C_TRUNC] == 1 ? "" : "s", t->longest);
  k = (size_t)snprintf(line, sizeof line, "mkdata: lengths");
  for (int b = 0; b < N_BUCKETS && k < sizeof line; b++)
    k += (size_t)snprintf(line + k, sizeof line - k, "%s%ld-%ld: %lld", b ? " | " : " ",
                          b ? bucket_edge(b - 1, seq_len) + 1 : 1, bucket_edge(b, seq_len),
                          t->c[C_HIST + b]);
  vlm_log("%s\n", line);
}

static int write_report(const char *path, const mk_stats *t, long seq_len, long n_in, int ranks,
                        double secs) {
  char *buf = malloc(8192);
  if (!buf) VLM_FAIL("mkdata: out of memory for the report");
  size_t k = (size_t)snprintf(
      buf, 8192,
      "{\n  \"samples_in\": %ld,\n  \"samples\": %lld,\n  \"tokens\": %lld,\n  \"targets\": "
      "%lld,\n  \"images\": %lld,\n  \"truncated\": %lld,\n  \"skipped\": %lld,\n  \"longest\": "
      "%lld,\n  \"seq_length\": %ld,\n  \"ranks\": %d,\n  \"seconds\": %.3f,\n  \"skips\": {",
      n_in, t->c[C_KEPT], t->c[C_TOKENS], t->c[C_TARGETS], t->c[C_IMAGES], t->c[C_TRUNC],
      n_in - t->c[C_KEPT], t->longest, seq_len, ranks, secs);
  const char *sep = "";
  for (int c = C_SKIP_CONV; c < C_HIST; c++) {
    if (!t->c[c]) continue;
    char name[64];
    reason_name(c, name, sizeof name);
    k += (size_t)snprintf(buf + k, 8192 - k, "%s\n    \"%s\": %lld", sep, name, t->c[c]);
    sep = ",";
  }
  k += (size_t)snprintf(buf + k, 8192 - k, "%s},\n  \"histogram\": [", sep[0] ? "\n  " : "");
  for (int b = 0; b < N_BUCKETS; b++)
    k += (size_t)snprintf(buf + k, 8192 - k, "%s{\"lo\": %ld, \"hi\": %ld, \"count\": %lld}",
                          b ? ", " : "", b ? bucket_edge(b - 1, seq_len) + 1 : 1,
                          bucket_edge(b, seq_len), t->c[C_HIST + b]);
  k += (size_t)snprintf(buf + k, 8192 - k, "]\n}\n");
  int rc = config_write_file(path, buf, (long)k);
  free(buf);
  VLM_CHECK(rc);
  return 0;
}

/* ------------------------------------------------------------------------------
 * --json: the collective conversion */

typedef struct {
  monkey_config cfg;
  tokenizer *tok;
  conv_options co;
  char *text;
  long text_len;
  size_t *start, *end;
  long n;
} json_setup;

static int setup_body(json_setup *s, const json_opts *jo) {
  VLM_CHECK(monkey_config_load(&s->cfg, jo->config));
  VLM_CHECK(tokenizer_load(&s->tok, jo->tokenizer));
  VLM_CHECK(conv_options_init(&s->co, s->tok, &s->cfg, jo->format, jo->targets, jo->system));
  return 0;
}

static int mkdata_json(const json_opts *jo, MPI_Comm comm) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  const double t0 = vlm_now();
  json_setup s;
  memset(&s, 0, sizeof s);
  int rc = -1;
  round_buf r;
  memset(&r, 0, sizeof r);
  conv_sample cs;
  memset(&cs, 0, sizeof cs);
  dataset_pwriter *w = NULL;
  mk_stats st;
  memset(&st, 0, sizeof st);

  /* setup: the same on every rank; only rank 0 speaks */
  if (rank != 0) vlm_set_quiet_errors(1);
  int src = setup_body(&s, jo);
  if (rank != 0) vlm_set_quiet_errors(0);
  if (agree_setup(src, rank, comm)) goto out;
  if (read_json_everywhere(jo->json, rank, comm, &s.text, &s.text_len)) goto out;
  if (rank != 0) vlm_set_quiet_errors(1);
  src = conv_split_array(jo->json, s.text, (size_t)s.text_len, &s.start, &s.end, &s.n);
  if (rank != 0) vlm_set_quiet_errors(0);
  if (agree_setup(src, rank, comm)) goto out;
  if (s.n == 0) {
    if (rank == 0)
      vlm_error_at(__FILE__, __LINE__, __func__, "mkdata: %s holds no samples ([])", jo->json);
    goto out;
  }
  vlm_log("mkdata: %ld samples, %d rank%s, %s format, blocks of %ld samples per rank\n", s.n, size,
          size == 1 ? "" : "s", jo->format == CONV_MONKEY ? "monkey" : "chatml", jo->block);

  if (dataset_pwriter_open(&w, jo->out, s.cfg.visual.image_size, comm)) goto out;
  const int S = s.cfg.visual.image_size, L = s.cfg.seq_length;
  const long B = jo->block, per_round = B * size;
  const long rounds = (s.n + per_round - 1) / per_round;
  for (long k = 0; k < rounds; k++) {
    const long lo = k * per_round + rank * B;
    const long hi = lo + B < s.n ? lo + B : s.n;
    int local = 0;
    round_clear(&r);
    for (long i = lo; i < hi && local == 0; i++) {
      char why[512];
      st.c[C_IN]++;
      int cst = conv_build(&s.co, s.text + s.start[i], s.end[i] - s.start[i], &cs, why, sizeof why);
      int truncated = 0;
      if (cst == CONV_OK) cst = conv_truncate(&cs, L, &truncated, why, sizeof why);
      if (cst == CONV_NO_MEMORY) {
        vlm_error_at(__FILE__, __LINE__, __func__, "mkdata: sample %ld: out of memory", i);
        local = -1;
      } else if (cst != CONV_OK) {
        note_skip(&st, jo, C_SKIP_CONV + cst, conv_status_name(cst), i, cs.id, why);
      } else if (round_add(&r, &cs, i, truncated, jo->images)) {
        local = -1;
      }
    }
    if (local == 0 && round_images(&r, S, jo, &st)) local = -1;
    int all = 0;
    MPI_Allreduce(&local, &all, 1, MPI_INT, MPI_MIN, comm);
    if (all != 0) goto out;
    for (long i = 0; i < r.n; i++) {
      count_length(&st, (long)r.len[i], L);
      st.c[C_TARGETS] += r.targets[i];
      st.c[C_TRUNC] += r.trunc[i];
    }
    st.c[C_KEPT] += r.n;
    st.c[C_TOKENS] += (long long)r.nt;
    st.c[C_IMAGES] += r.ni;
    if (dataset_pwriter_append(w, r.n, r.len, r.nimg, r.tok, r.lab, r.px)) goto out;
  }

  /* totals over ranks */
  mk_stats tot;
  memset(&tot, 0, sizeof tot);
  MPI_Allreduce(st.c, tot.c, C_COUNT, MPI_LONG_LONG, MPI_SUM, comm);
  MPI_Allreduce(&st.longest, &tot.longest, 1, MPI_LONG_LONG, MPI_MAX, comm);
  const double secs = vlm_now() - t0;
  print_summary(&tot, jo, L, s.n, size, secs);
  const long long skipped = s.n - tot.c[C_KEPT];
  if (tot.c[C_KEPT] == 0) {
    if (rank == 0)
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "mkdata: every one of the %ld samples of %s was skipped; nothing written", s.n,
                   jo->json);
    goto out;
  }
  if ((double)skipped > jo->max_skip * (double)s.n) {
    if (rank == 0)
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "mkdata: %lld of %ld samples (%.2f%%) were skipped, more than "
                   "--max-skip-fraction %g allows; nothing written (reasons above; raise the "
                   "fraction to keep the rest)",
                   skipped, s.n, 100.0 * (double)skipped / (double)s.n, jo->max_skip);
    goto out;
  }
  if (rank == 0 && jo->report[0])
    src = write_report(jo->report, &tot, L, s.n, size, secs);
  else
    src = 0;
  MPI_Bcast(&src, 1, MPI_INT, 0, comm);
  if (src) goto out;
  dataset_pwriter *wc = w;
  w = NULL;
  if (dataset_pwriter_commit(wc)) goto out;
  /* reopen on rank 0: the strict reader checks what was written against the config */
  int chk = 0;
  if (rank == 0) {
    dataset d;
    chk = dataset_open(&d, jo->out, &s.cfg);
    if (chk == 0) dataset_close(&d);
  }
  MPI_Bcast(&chk, 1, MPI_INT, 0, comm);
  if (chk) goto out;
  rc = 0;
out:
  if (w) dataset_pwriter_abort(w);
  conv_sample_free(&cs);
  round_free(&r);
  free(s.start);
  free(s.end);
  free(s.text);
  if (s.tok) tokenizer_free(s.tok);
  return rc;
}

/* ------------------------------------------------------------------------------
 * Dispatch: rank 0 parses the options and chooses; --synthetic runs on rank 0,
 * --json on every rank. */

enum { MODE_ERROR, MODE_DONE, MODE_SYNTH, MODE_JSON };

int cmd_mkdata(int argc, char **argv) {
  int mpi_up = 0, rank = 0, size = 1;
  MPI_Initialized(&mpi_up);
  if (mpi_up) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  opt o[O_COUNT];
  mkdata_options(o);
  json_opts jo;
  memset(&jo, 0, sizeof jo);
  int mode = MODE_ERROR;
  if (rank == 0) {
    int prc = opts_parse("mkdata", MKDATA_USAGE, o, O_COUNT, argc, argv, NULL, 0, NULL);
    if (prc > 0) {
      mode = MODE_DONE;
    } else if (prc == 0) {
      if (o[O_SYNTH].given && o[O_JSON].given)
        vlm_error_at(__FILE__, __LINE__, __func__,
                     "vlmtrain mkdata: give either --synthetic or --json, not both");
      else if (o[O_SYNTH].given)
        mode = MODE_SYNTH;
      else if (o[O_JSON].given && o[O_JSON].value[0])
        mode = json_opts_read(o, &jo) == 0 ? MODE_JSON : MODE_ERROR;
      else
        vlm_error_at(__FILE__, __LINE__, __func__,
                     "vlmtrain mkdata: say what to make: --synthetic (the learnable synthetic "
                     "task) or --json TRAIN.json with --images ROOT --tokenizer RANKS (real "
                     "Monkey / ChatML data, issue 6); see vlmtrain mkdata --help");
    }
  }
  if (size > 1) MPI_Bcast(&mode, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (mode == MODE_DONE) return 0;
  if (mode == MODE_ERROR) return -1;
  if (mode == MODE_SYNTH) {
    int rc = 0;
    if (rank == 0) rc = mkdata_synthetic(o);
    if (size > 1) MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return rc == 0 ? 0 : -1;
  }
  /* --json: the other ranks read the same options (rank 0 has checked them) */
  if (rank != 0) {
    vlm_set_quiet_errors(1);
    int prc = opts_parse("mkdata", MKDATA_USAGE, o, O_COUNT, argc, argv, NULL, 0, NULL);
    if (prc == 0) prc = json_opts_read(o, &jo);
    vlm_set_quiet_errors(0);
    if (prc != 0) {
      fprintf(stderr, "vlmtrain: error (rank %d): mkdata: options differ from rank 0's\n", rank);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
  }
  MPI_Comm comm = mpi_up ? MPI_COMM_WORLD : MPI_COMM_SELF;
  return mkdata_json(&jo, comm) == 0 ? 0 : -1;
}
