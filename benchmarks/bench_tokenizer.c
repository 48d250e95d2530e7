/* benchmarks/bench_tokenizer.c: single-threaded encoding speed of io/tokenizer.c.
 *
 *   bench_tokenizer RANKS TEXT [REPS (5)] [IDS_OUT]
 *
 * Loads RANKS (tiktoken format), reads TEXT (UTF-8) and encodes it as ordinary
 * text REPS times into a reused id buffer; prints the best and median time and
 * MB/s (MB = 10^6 bytes of input) on one line starting with "c:". IDS_OUT, when
 * given, receives the ids as one line of decimal numbers, for checking against
 * tiktoken. Driven by benchmarks/bench_tokenizer.py, which times tiktoken on
 * the same file. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/vlm.h"
#include "io/tokenizer.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static int run(int argc, char **argv) {
  const char *ranks = argv[1], *path = argv[2];
  int reps = argc > 3 ? atoi(argv[3]) : 5;
  if (reps < 1 || reps > 1000) VLM_FAIL("REPS must be 1..1000, got %s", argv[3]);
  FILE *f = fopen(path, "rb");
  if (!f) VLM_FAIL("cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *text = malloc((size_t)size + 1);
  if (!text || fread(text, 1, (size_t)size, f) != (size_t)size) {
    fclose(f);
    free(text);
    VLM_FAIL("cannot read %s", path);
  }
  fclose(f);
  tokenizer *t;
  double t0 = vlm_now();
  if (tokenizer_load(&t, ranks) != 0) {
    free(text);
    VLM_CHECK(-1);
  }
  double load_s = vlm_now() - t0;
  int32_t *ids = NULL;
  size_t n = 0, cap = 0;
  double *times = malloc((size_t)reps * sizeof *times);
  int rc = -1;
  if (!times) goto out;
  for (int r = 0; r < reps; r++) {
    n = 0;
    double a = vlm_now();
    VLM_CHECK_GOTO(tokenizer_encode(t, text, (size_t)size, &ids, &n, &cap), out);
    times[r] = vlm_now() - a;
  }
  qsort(times, (size_t)reps, sizeof *times, cmp_double);
  double mb = (double)size / 1e6;
  printf("c: %.2f MB, %zu ids, %d vocab, load %.3f s; best %.4f s = %.2f MB/s, median %.4f s = "
         "%.2f MB/s\n",
         mb, n, tokenizer_n_vocab(t), load_s, times[0], mb / times[0], times[reps / 2],
         mb / times[reps / 2]);
  if (argc > 4) {
    FILE *o = fopen(argv[4], "w");
    if (!o) {
      vlm_error_at(__FILE__, __LINE__, __func__, "cannot write %s", argv[4]);
      goto out;
    }
    for (size_t i = 0; i < n; i++) fprintf(o, i ? " %d" : "%d", (int)ids[i]);
    fprintf(o, "\n");
    fclose(o);
  }
  rc = 0;
out:
  free(times);
  free(ids);
  free(text);
  tokenizer_free(t);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: bench_tokenizer RANKS TEXT [REPS (5)] [IDS_OUT]\n");
    return 2;
  }
  return run(argc, argv) == 0 ? 0 : 1;
}
