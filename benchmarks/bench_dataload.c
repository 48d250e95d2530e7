/* benchmarks/bench_dataload.c: times the two modes of the parallel dataset reader
 * (io/dataset.c: dataset_open_mpi + dataset_read_samples), independent (each
 * rank reads its samples one by one with HDF5's default driver, on data sets held
 * open) against collective (MPI-IO driver, one collective H5Dread per data set
 * per micro-batch), and as a baseline what the trainer does today (dataset_open
 * + dataset_read_sample per sample: "per-sample"), reading every sample of a file
 * in shuffled global micro-batches split over the ranks as the trainer splits
 * them. Not a test.
 *
 *   mpirun -np R bench_dataload CONFIG DATA [--reps N (31)] [--passes P (2)] [--batch G (8)]
 *
 * Per repetition the three run, in rotating order (ABC, BCA, CAB, ...), each P
 * passes over the file (a new shuffle per pass, the same for both modes), after
 * one untimed warm-up pass per mode; a repetition is timed from a barrier to the
 * slowest rank's end. Both modes end each micro-batch with the trainer's
 * agreement on the read status (one all-reduce of an int). Prints
 * each repetition, then per mode MB/s and samples/s at the median time and at
 * the best (shortest) time, the ratios of both, and "RESULT" lines for scripts.
 * On a shared machine the best time is the reader's own cost, the median
 * includes the interference of other jobs.
 * MB = 1e6 bytes of tokens + labels + pixels delivered to the ranks. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/vlm.h"
#include "io/config.h"
#include "io/dataset.h"
#include "io/loader.h"

static int g_rank, g_size;

typedef struct {
  int32_t *tok, *lab;
  uint8_t *px;
  int *len, *n_img;
} read_bufs;

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* P passes over every sample, pass p in the order order[p * n_samples ..]:
 * batches of G, rank w reading [w*G/W, (w+1)*G/W) of each (a last, shorter
 * batch is split the same way). Returns the slowest rank's seconds, or -1. */
static double timed_passes(dataset *d, const long *order, int P, long G, read_bufs *b) {
  MPI_Barrier(MPI_COMM_WORLD);
  const double t0 = vlm_now();
  int ok = 1;
  for (long s = 0; s < (long)P * d->n_samples && ok; s += G) {
    const long left = d->n_samples - s % d->n_samples, g = left < G ? left : G;
    const long lo = g_rank * g / g_size, hi = (g_rank + 1) * g / g_size;
    if (dataset_read_samples(d, order + s + lo, (int)(hi - lo), b->tok, b->lab, b->len, b->px,
                             b->n_img) != 0)
      ok = 0;
    /* the trainer agrees on each micro-batch's read status; the collective mode
     * does that inside dataset_read_samples, the independent one here, as there */
    if (!d->collective) MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (left < G) s -= G - left; /* the next pass starts at its own first sample */
  }
  double dt = vlm_now() - t0;
  MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return ok ? dt : -1.0;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  vlm_set_rank(g_rank);
  int reps = 31, passes = 2;
  long G = 8;
  const char *cfg_path = NULL, *data = NULL;
  for (int a = 1; a < argc; a++) {
    if (!strcmp(argv[a], "--reps") && a + 1 < argc)
      reps = atoi(argv[++a]);
    else if (!strcmp(argv[a], "--passes") && a + 1 < argc)
      passes = atoi(argv[++a]);
    else if (!strcmp(argv[a], "--batch") && a + 1 < argc)
      G = atol(argv[++a]);
    else if (!cfg_path)
      cfg_path = argv[a];
    else if (!data)
      data = argv[a];
  }
  if (!cfg_path || !data || reps < 1 || passes < 1 || G < 1) {
    if (g_rank == 0)
      fprintf(stderr, "usage: mpirun -np R bench_dataload CONFIG DATA [--reps N] [--passes P] "
                      "[--batch G]\n");
    MPI_Finalize();
    return 2;
  }
  monkey_config c;
  if (monkey_config_load(&c, cfg_path) != 0) MPI_Abort(MPI_COMM_WORLD, 1);

  enum { NM = 3 };
  const char *names[NM] = {"independent", "collective", "per-sample"};
  dataset ds[NM];
  double t_open[NM];
  for (int m = 0; m < NM; m++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = vlm_now();
    int rc = m < 2 ? dataset_open_mpi(&ds[m], data, &c, MPI_COMM_WORLD, m)
                   : dataset_open(&ds[m], data, &c);
    if (rc != 0) MPI_Abort(MPI_COMM_WORLD, 1);
    t_open[m] = vlm_now() - t0;
    MPI_Allreduce(MPI_IN_PLACE, &t_open[m], 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  }
  dataset *d = &ds[0];
  const long per_rank = (G + g_size - 1) / g_size;
  const size_t img = (size_t)d->image_size * d->image_size * 3;
  read_bufs b;
  b.tok = malloc((size_t)(per_rank * d->max_len + 1) * sizeof(int32_t));
  b.lab = malloc((size_t)(per_rank * d->max_len + 1) * sizeof(int32_t));
  b.px = malloc((size_t)(per_rank * d->max_images + 1) * img);
  b.len = malloc((size_t)per_rank * sizeof(int));
  b.n_img = malloc((size_t)per_rank * sizeof(int));
  if (!b.tok || !b.lab || !b.px || !b.len || !b.n_img) MPI_Abort(MPI_COMM_WORLD, 1);
  const double bytes =
      ((double)d->n_tokens * 8.0 + (double)d->n_images * (double)img) * (double)passes;
  if (g_rank == 0)
    printf("bench_dataload: %s: %ld samples, %ld tokens, %ld images of %dx%d (%.1f MB per pass); "
           "%d rank(s), global micro-batch %ld, %d repetitions of %d passes; open: independent "
           "%.4f s, collective %.4f s, per-sample %.4f s\n",
           data, d->n_samples, d->n_tokens, d->n_images, d->image_size, d->image_size,
           bytes / passes / 1e6, g_size, G, reps, passes, t_open[0], t_open[1], t_open[2]);

  data_order o;
  if (data_order_init(&o, d->n_samples, 1, 12345) != 0) MPI_Abort(MPI_COMM_WORLD, 1);
  long *order = malloc((size_t)passes * (size_t)d->n_samples * sizeof(long));
  double *times[NM];
  for (int m = 0; m < NM; m++)
    if (!(times[m] = malloc((size_t)reps * sizeof(double)))) MPI_Abort(MPI_COMM_WORLD, 1);
  if (!order) MPI_Abort(MPI_COMM_WORLD, 1);
  data_order_next(&o, order, (int)d->n_samples);
  for (int m = 0; m < NM; m++) /* warm-up: page cache, HDF5 metadata cache, MPI-IO setup */
    if (timed_passes(&ds[m], order, 1, G, &b) < 0) MPI_Abort(MPI_COMM_WORLD, 1);
  for (int r = 0; r < reps; r++) {
    for (int p = 0; p < passes; p++) /* the next epochs: a new shuffle each */
      data_order_next(&o, order + (size_t)p * d->n_samples, (int)d->n_samples);
    for (int k = 0; k < NM; k++) {
      const int m = (r + k) % NM; /* rotate which mode goes first */
      times[m][r] = timed_passes(&ds[m], order, passes, G, &b);
      if (times[m][r] < 0) MPI_Abort(MPI_COMM_WORLD, 1);
      if (g_rank == 0)
        printf("  rep %d %-11s %8.4f s  %8.1f MB/s  %8.1f samples/s\n", r, names[m], times[m][r],
               bytes / 1e6 / times[m][r], (double)d->n_samples * passes / times[m][r]);
    }
  }
  double med[NM];
  for (int m = 0; m < NM; m++) {
    qsort(times[m], (size_t)reps, sizeof(double), cmp_double);
    med[m] = reps % 2 ? times[m][reps / 2] : 0.5 * (times[m][reps / 2 - 1] + times[m][reps / 2]);
    if (g_rank == 0)
      printf("%-11s median %.4f s: %8.1f MB/s, %8.1f samples/s (min..max %.1f..%.1f MB/s)\n",
             names[m], med[m], bytes / 1e6 / med[m], (double)d->n_samples * passes / med[m],
             bytes / 1e6 / times[m][reps - 1], bytes / 1e6 / times[m][0]);
  }
  if (g_rank == 0) {
    printf("throughput ratios, medians (best): collective / independent %.2f (%.2f), "
           "independent / per-sample %.2f (%.2f)\n",
           med[0] / med[1], times[0][0] / times[1][0], med[2] / med[0], times[2][0] / times[0][0]);
    for (int m = 0; m < NM; m++)
      printf("RESULT ranks=%d image_size=%d mode=%s median_s=%.5f mb_s=%.1f samples_s=%.1f "
             "best_s=%.5f best_mb_s=%.1f best_samples_s=%.1f\n",
             g_size, d->image_size, names[m], med[m], bytes / 1e6 / med[m],
             (double)d->n_samples * passes / med[m], times[m][0], bytes / 1e6 / times[m][0],
             (double)d->n_samples * passes / times[m][0]);
    printf("RESULT ranks=%d image_size=%d ratio_collective_over_independent=%.3f "
           "best_ratio_collective_over_independent=%.3f ratio_independent_over_per_sample=%.3f\n",
           g_size, d->image_size, med[0] / med[1], times[0][0] / times[1][0], med[2] / med[0]);
  }
  long coll[2] = {ds[1].n_coll_reads, ds[1].n_coll_done};
  MPI_Allreduce(MPI_IN_PLACE, coll, 2, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  if (g_rank == 0)
    printf("collective mode: %ld of %ld H5Dread calls (all ranks) done collectively by HDF5\n",
           coll[1], coll[0]);
  data_order_free(&o);
  free(order);
  for (int m = 0; m < NM; m++) free(times[m]);
  free(b.tok), free(b.lab), free(b.px), free(b.len), free(b.n_img);
  for (int m = 0; m < NM; m++) dataset_close(&ds[m]);
  MPI_Finalize();
  return 0;
}
