/* tests/dataload/test_dataload.c: the parallel dataset reader (io/dataset.c,
 * dataset_open_mpi + dataset_read_samples) under MPI.
 *
 *   test_dataload check CONFIG DIR   (mpirun -np 3): writes DIR/mixed.h5 (samples
 *       with 0, 1 and 2 images, an empty one), then checks both modes against
 *       dataset_read_sample through a serial handle, byte for byte, on random
 *       index sets (a rank with n = 0, repeated indices, sorted and shuffled),
 *       the collective mode's actual HDF5 I/O mode, and that failures (missing
 *       file, wrong config, bad index, bad token id) are the same error on
 *       every rank. Rank 0 prints one line per check (a check passes when it
 *       passed on every rank) and "N passed, M failed"; non-zero exit on failure.
 *   test_dataload make CONFIG PATH   writes the same mixed dataset to PATH.
 *   test_dataload read CONFIG PATH MODE   (any rank count; MODE independent |
 *       collective): reads every sample once in shuffled global micro-batches of
 *       8 split over the ranks, as the trainer does; exit 0, or 1 after an error
 *       (agreed over the ranks), printing "read: N samples" on rank 0. */
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "common/vlm.h"
#include "io/config.h"
#include "io/dataset.h"
#include "io/loader.h"

#define N_MIXED 40
#define EMPTY_SAMPLE 7 /* no tokens, no image */
#define BAD_SAMPLE 23  /* in bad.h5: a token id == vocab_size at BAD_POS */
#define BAD_POS 3

static int g_rank, g_size, n_pass, n_fail;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
  int all = 0;
  ok = ok != 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (all)
    n_pass++;
  else
    n_fail++;
  if (g_rank != 0) return;
  printf("%s ", all ? "ok  " : "FAIL");
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  fflush(stdout);
}

/* ---- the mixed dataset: sample i has i % 3 images (0, 1, 2), EMPTY_SAMPLE has
 * nothing; text of 1..20 tokens after the images; labels -100 or in the vocabulary. */

static int write_mixed(const char *path, const monkey_config *c, int bad) {
  const int S = c->visual.image_size, slots = c->visual.img_slots;
  const size_t img = (size_t)S * S * 3;
  int64_t off[N_MIXED + 1], ioff[N_MIXED + 1];
  long cap = (long)N_MIXED * (2 * (slots + 2) + 20);
  int32_t *tok = malloc((size_t)cap * sizeof *tok), *lab = malloc((size_t)cap * sizeof *lab);
  uint8_t *px = malloc((size_t)N_MIXED * 2 * img);
  if (!tok || !lab || !px) {
    free(tok), free(lab), free(px);
    VLM_FAIL("out of memory for the mixed dataset");
  }
  vlm_rng r;
  rng_seed(&r, 4242);
  long nt = 0, ni = 0;
  for (int i = 0; i < N_MIXED; i++) {
    off[i] = nt;
    ioff[i] = ni;
    if (i == EMPTY_SAMPLE) continue;
    for (int k = 0; k < i % 3; k++) {
      tok[nt] = c->visual.image_start_id, lab[nt++] = -100;
      for (int s = 0; s < slots; s++) tok[nt] = c->img_pad_id, lab[nt++] = -100;
      tok[nt] = c->img_end_id, lab[nt++] = -100;
      for (size_t b = 0; b < img; b++) px[(size_t)ni * img + b] = (uint8_t)(rng_u64(&r) >> 56);
      ni++;
    }
    long text = 1 + rng_below(&r, 20);
    for (long t = 0; t < text; t++) {
      tok[nt] = (int32_t)rng_below(&r, c->visual.image_start_id);
      lab[nt++] = rng_below(&r, 2) ? -100 : (int32_t)rng_below(&r, c->vocab_size);
    }
  }
  off[N_MIXED] = nt;
  ioff[N_MIXED] = ni;
  if (bad) tok[off[BAD_SAMPLE] + BAD_POS] = c->vocab_size;
  int rc = dataset_write(path, S, N_MIXED, off, tok, lab, ioff, ni, px);
  free(tok), free(lab), free(px);
  return rc;
}

/* ---- reading and comparing ---- */

typedef struct {
  int32_t *tok, *lab;
  uint8_t *px;
  int *len, *n_img;
} bufs;

static void bufs_alloc(bufs *b, const dataset *d, int n) {
  const size_t img = (size_t)d->image_size * d->image_size * 3;
  size_t nt = (size_t)(n > 0 ? n : 1) * (size_t)(d->max_len > 0 ? d->max_len : 1);
  size_t ni = (size_t)(n > 0 ? n : 1) * (size_t)(d->max_images > 0 ? d->max_images : 1);
  b->tok = calloc(nt, sizeof *b->tok);
  b->lab = calloc(nt, sizeof *b->lab);
  b->px = calloc(ni, img);
  b->len = calloc((size_t)(n > 0 ? n : 1), sizeof(int));
  b->n_img = calloc((size_t)(n > 0 ? n : 1), sizeof(int));
}

static void bufs_free(bufs *b) {
  free(b->tok), free(b->lab), free(b->px), free(b->len), free(b->n_img);
}

/* The reference: dataset_read_sample per sample through the serial handle. */
static int read_reference(dataset *ref, const long *idx, int n, bufs *b) {
  const size_t img = (size_t)ref->image_size * ref->image_size * 3;
  long t = 0, im = 0;
  for (int j = 0; j < n; j++) {
    if (dataset_read_sample(ref, idx[j], b->tok + t, b->lab + t, &b->len[j],
                            b->px + (size_t)im * img, &b->n_img[j]) != 0)
      return -1;
    t += b->len[j];
    im += b->n_img[j];
  }
  return 0;
}

/* Reads idx[0..n) with d (collective: every rank calls it) and compares with the
 * reference; 1 when equal byte for byte. */
static int read_equal(dataset *d, dataset *ref, const long *idx, int n, char *why, size_t nwhy) {
  bufs a, b;
  bufs_alloc(&a, d, n);
  bufs_alloc(&b, d, n);
  int rc = dataset_read_samples(d, idx, n, a.tok, a.lab, a.len, a.px, a.n_img);
  int same = rc == 0 && read_reference(ref, idx, n, &b) == 0;
  if (rc != 0) snprintf(why, nwhy, "dataset_read_samples failed: %s", vlm_last_error());
  long t = 0, im = 0;
  const size_t img = (size_t)d->image_size * d->image_size * 3;
  for (int j = 0; j < n && same; j++) {
    if (a.len[j] != b.len[j] || a.n_img[j] != b.n_img[j]) {
      snprintf(why, nwhy, "sample %ld (position %d): len %d/%d images %d/%d", idx[j], j,
               a.len[j], b.len[j], a.n_img[j], b.n_img[j]);
      same = 0;
      break;
    }
    t += a.len[j];
    im += a.n_img[j];
  }
  if (same && (memcmp(a.tok, b.tok, (size_t)t * 4) || memcmp(a.lab, b.lab, (size_t)t * 4) ||
               memcmp(a.px, b.px, (size_t)im * img))) {
    snprintf(why, nwhy, "bytes differ (%ld tokens, %ld images)", t, im);
    same = 0;
  }
  bufs_free(&a);
  bufs_free(&b);
  return same;
}

/* Random index sets: round r gives every rank its own n in [0, 6] and indices
 * (rank 1 has n = 0 in every third round; every other round repeats an index;
 * every fourth round is sorted ascending without repeats). Returns n. */
static int index_set(int round, long n_samples, long *idx) {
  vlm_rng r;
  rng_seed(&r, 1000u + 31u * (unsigned)round + 7u * (unsigned)g_rank);
  int n = (int)rng_below(&r, 7);
  if (g_rank == 1 && round % 3 == 0) return 0;
  if (round % 4 == 1) { /* sorted, distinct */
    long at = rng_below(&r, 3);
    int k = 0;
    for (; k < n && at < n_samples; k++, at += 1 + rng_below(&r, 4)) idx[k] = at;
    return k;
  }
  for (int j = 0; j < n; j++) idx[j] = rng_below(&r, n_samples);
  if (round % 2 == 0 && n >= 2) idx[n - 1] = idx[0];
  return n;
}

/* 1 on every rank when msg is the same string on every rank. */
static int same_everywhere(const char *msg) {
  char mine[512], root[512];
  snprintf(mine, sizeof mine, "%s", msg);
  memcpy(root, mine, sizeof root);
  MPI_Bcast(root, (int)sizeof root, MPI_CHAR, 0, MPI_COMM_WORLD);
  int same = strcmp(root, mine) == 0, all = 0;
  MPI_Allreduce(&same, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all;
}

static int run_checks(const char *cfg_path, const char *dir) {
  monkey_config c;
  if (monkey_config_load(&c, cfg_path) != 0) return 1;
  char path[1024], bad[1024], missing[1024];
  snprintf(path, sizeof path, "%s/mixed.h5", dir);
  snprintf(bad, sizeof bad, "%s/mixed-bad.h5", dir);
  snprintf(missing, sizeof missing, "%s/no-such-file.h5", dir);
  int wrc = 0;
  if (g_rank == 0) {
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    wrc = system(cmd) != 0 || write_mixed(path, &c, 0) != 0 || write_mixed(bad, &c, 1) != 0;
  }
  MPI_Bcast(&wrc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (wrc) {
    if (g_rank == 0) fprintf(stderr, "cannot write the test datasets in %s\n", dir);
    return 1;
  }

  /* 1: open in both modes; the broadcast metadata equals a serial open's */
  dataset ref, ind, col;
  int ok_ref = dataset_open(&ref, path, &c) == 0;
  int ok_ind = dataset_open_mpi(&ind, path, &c, MPI_COMM_WORLD, 0) == 0;
  int ok_col = dataset_open_mpi(&col, path, &c, MPI_COMM_WORLD, 1) == 0;
  int same_meta = ok_ref && ok_ind && ok_col;
  for (int k = 0; k < 2 && same_meta; k++) {
    const dataset *d = k ? &col : &ind;
    same_meta = d->n_samples == ref.n_samples && d->n_tokens == ref.n_tokens &&
                d->n_images == ref.n_images && d->image_size == ref.image_size &&
                d->max_len == ref.max_len && d->max_images == ref.max_images &&
                !memcmp(d->offsets, ref.offsets, (size_t)(ref.n_samples + 1) * 8) &&
                !memcmp(d->image_offsets, ref.image_offsets, (size_t)(ref.n_samples + 1) * 8);
  }
  check(same_meta, "open: dataset_open_mpi independent and collective, offsets and sizes "
                   "broadcast from rank 0 equal a serial dataset_open's (%ld samples)",
        ref.n_samples);
  if (!same_meta) return 1;

  /* 2, 3: random index sets, both modes, byte for byte */
  const int rounds = 24;
  long idx[8];
  char why[300] = "";
  int zero_img = 0, two_img = 0, repeats = 0, empty_rank = 0;
  for (int m = 0; m < 2; m++) {
    dataset *d = m ? &col : &ind;
    int all_ok = 1;
    for (int round = 0; round < rounds; round++) {
      int n = index_set(round, ref.n_samples, idx);
      for (int j = 0; j < n && m == 0; j++) {
        long ni = (long)(ref.image_offsets[idx[j] + 1] - ref.image_offsets[idx[j]]);
        zero_img += ni == 0;
        two_img += ni == 2;
        for (int k = 0; k < j; k++) repeats += idx[k] == idx[j];
      }
      if (m == 0 && n == 0) empty_rank++;
      if (!read_equal(d, &ref, idx, n, why, sizeof why) && all_ok) {
        all_ok = 0;
        fprintf(stderr, "rank %d, %s mode, round %d: %s\n", g_rank,
                m ? "collective" : "independent", round, why);
      }
    }
    long tally[4] = {zero_img, two_img, repeats, empty_rank};
    MPI_Allreduce(MPI_IN_PLACE, tally, 4, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    check(all_ok && tally[0] > 0 && tally[1] > 0 && tally[2] > 0 && tally[3] > 0,
          "%s mode: %d rounds of random index sets equal dataset_read_sample byte for byte "
          "(%ld samples with 0 images, %ld with 2, %ld repeats, %ld empty rank reads)",
          m ? "collective" : "independent", rounds, tally[0], tally[1], tally[2], tally[3]);
  }

  /* 4: the collective reads were collective, on every rank and every data set */
  long io[2] = {col.n_coll_reads, col.n_coll_done};
  int modes_ok = col.last_io_mode[0] != 0 && col.last_io_mode[1] != 0 && col.last_io_mode[2] != 0;
  check(modes_ok && io[0] == 3L * rounds && io[1] == io[0],
        "collective mode: HDF5's actual I/O mode is collective for all %ld transfers on this "
        "rank (rank 0: %ld of %ld; last modes %d %d %d)", io[0], io[1], io[0],
        col.last_io_mode[0], col.last_io_mode[1], col.last_io_mode[2]);

  /* 5: one rank reading the empty sample and a 2-image one; all ranks n = 0 */
  long one[2] = {EMPTY_SAMPLE, 5};
  int e1 = read_equal(&col, &ref, one, g_rank == 2 ? 2 : 0, why, sizeof why);
  int e2 = read_equal(&col, &ref, one, 0, why, sizeof why);
  check(e1 && e2, "collective mode: only rank 2 reads (the empty sample %d, a 2-image sample), "
                  "then no rank reads anything",
        EMPTY_SAMPLE);

  /* 6: a whole epoch in shuffled global micro-batches of 8, as the trainer splits them */
  int epoch_ok = 1;
  for (int m = 0; m < 2; m++) {
    data_order o;
    data_order_init(&o, ref.n_samples, 1, 7);
    const long G = 8, lo = g_rank * G / g_size, hi = (g_rank + 1) * G / g_size;
    long all[8];
    for (long s = 0; s < ref.n_samples; s += G) {
      data_order_next(&o, all, (int)G);
      epoch_ok &= read_equal(m ? &col : &ind, &ref, all + lo, (int)(hi - lo), why, sizeof why);
    }
    data_order_free(&o);
  }
  check(epoch_ok, "both modes: a shuffled epoch in global micro-batches of 8 split over %d ranks",
        g_size);

  /* 7: dataset_read_sample refuses a collectively opened dataset (local, no hang) */
  bufs b;
  bufs_alloc(&b, &ref, 1);
  vlm_set_quiet_errors(1);
  int rc = dataset_read_sample(&col, 0, b.tok, b.lab, b.len, b.px, b.n_img);
  vlm_set_quiet_errors(0);
  bufs_free(&b);
  check(rc != 0 && strstr(vlm_last_error(), "dataset_read_samples"),
        "dataset_read_sample on a collective dataset: \"%s\"", vlm_last_error());

  /* 8: a sample index out of range on rank 2 only: the same error on every rank,
   * and the next collective read works */
  long badidx[2] = {1, g_rank == 2 ? ref.n_samples + 5 : 2};
  bufs_alloc(&b, &ref, 2);
  vlm_set_quiet_errors(1);
  rc = dataset_read_samples(&col, badidx, 2, b.tok, b.lab, b.len, b.px, b.n_img);
  vlm_set_quiet_errors(0);
  bufs_free(&b);
  int agreed = rc != 0 && strstr(vlm_last_error(), "does not exist");
  agreed = same_everywhere(vlm_last_error()) && agreed;
  long after[1] = {g_rank};
  int next_ok = read_equal(&col, &ref, after, 1, why, sizeof why);
  check(agreed && next_ok, "collective mode, bad index on rank 2 only: every rank fails with "
                           "\"%s\"; the next read works", vlm_last_error());
  dataset_close(&col);
  dataset_close(&ind);

  /* 9: open failures are the same on every rank, in both modes */
  int open_same = 1;
  monkey_config wrong = c;
  wrong.visual.image_size = c.visual.image_size * 2;
  for (int m = 0; m < 2; m++) {
    dataset x;
    vlm_set_quiet_errors(1);
    rc = dataset_open_mpi(&x, missing, &c, MPI_COMM_WORLD, m);
    vlm_set_quiet_errors(0);
    open_same &= rc != 0 && strstr(vlm_last_error(), "no-such-file.h5") &&
                 same_everywhere(vlm_last_error());
    vlm_set_quiet_errors(1);
    rc = dataset_open_mpi(&x, path, &wrong, MPI_COMM_WORLD, m);
    vlm_set_quiet_errors(0);
    open_same &= rc != 0 && strstr(vlm_last_error(), "image_size") &&
                 same_everywhere(vlm_last_error());
  }
  check(open_same, "open errors (missing file, image_size not the config's) are the same on "
                   "every rank in both modes: \"%s\"", vlm_last_error());

  /* 10: a bad token id in one sample, read by one rank: in collective mode every
   * rank fails with the message naming file, sample and position */
  dataset bd;
  int bad_ok = dataset_open_mpi(&bd, bad, &c, MPI_COMM_WORLD, 1) == 0;
  long bidx[2] = {g_rank == 1 ? BAD_SAMPLE : 3, 4};
  bufs_alloc(&b, &ref, 2);
  vlm_set_quiet_errors(1);
  rc = bad_ok ? dataset_read_samples(&bd, bidx, 2, b.tok, b.lab, b.len, b.px, b.n_img) : -1;
  vlm_set_quiet_errors(0);
  bufs_free(&b);
  char expect[64];
  snprintf(expect, sizeof expect, "sample %d, token position %d", BAD_SAMPLE, BAD_POS);
  int bad_same = rc != 0 && strstr(vlm_last_error(), expect) &&
                 strstr(vlm_last_error(), "mixed-bad.h5") && strstr(vlm_last_error(), "vocabulary");
  bad_same = same_everywhere(vlm_last_error()) && bad_same;
  if (bad_ok) dataset_close(&bd);
  check(bad_same, "collective mode, bad token id read by rank 1: every rank fails with \"%s\"",
        vlm_last_error());

  dataset_close(&ref);
  return 0;
}

static int run_read(const char *cfg_path, const char *path, const char *mode) {
  monkey_config c;
  if (monkey_config_load(&c, cfg_path) != 0) return 1;
  const int coll = strcmp(mode, "collective") == 0;
  dataset d;
  if (dataset_open_mpi(&d, path, &c, MPI_COMM_WORLD, coll) != 0) return 1;
  const long G = 8, lo = g_rank * G / g_size, hi = (g_rank + 1) * G / g_size;
  bufs b;
  bufs_alloc(&b, &d, (int)(hi - lo));
  data_order o;
  data_order_init(&o, d.n_samples, 1, 11);
  long all[8], n_read = 0;
  int ok = 1;
  for (long s = 0; s < d.n_samples && ok; s += G) {
    data_order_next(&o, all, (int)G);
    ok = dataset_read_samples(&d, all + lo, (int)(hi - lo), b.tok, b.lab, b.len, b.px,
                              b.n_img) == 0;
    if (!coll) MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    n_read += G;
  }
  data_order_free(&o);
  bufs_free(&b);
  dataset_close(&d);
  if (ok && g_rank == 0) printf("read: %ld samples\n", n_read);
  return ok ? 0 : 1;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  vlm_set_rank(g_rank);
  int rc = 2;
  if (argc == 4 && strcmp(argv[1], "check") == 0) {
    if (g_size != 3 && g_rank == 0) fprintf(stderr, "test_dataload check: run it on 3 ranks\n");
    rc = g_size == 3 ? run_checks(argv[2], argv[3]) : 2;
    if (rc == 0) {
      if (g_rank == 0) printf("%d passed, %d failed\n", n_pass, n_fail);
      rc = n_fail ? 1 : 0;
    }
  } else if (argc == 4 && strcmp(argv[1], "make") == 0) {
    monkey_config c;
    rc = 1;
    if (monkey_config_load(&c, argv[2]) == 0)
      rc = g_rank == 0 && write_mixed(argv[3], &c, 0) != 0 ? 1 : 0;
  } else if (argc == 5 && strcmp(argv[1], "read") == 0) {
    rc = run_read(argv[2], argv[3], argv[4]);
  } else if (g_rank == 0) {
    fprintf(stderr,
            "usage: test_dataload check CONFIG DIR | make CONFIG PATH | "
            "read CONFIG PATH independent|collective\n");
  }
  MPI_Finalize();
  return rc;
}
