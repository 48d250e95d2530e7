/* tests/kernels/test_backend_memory.c: the CPU backend's copy and zero, which
 * split large ranges over the OpenMP team, and its allocator. For sizes on both
 * sides of the split threshold (1 MiB) and odd float counts, at 1, 2 and 3
 * threads and from inside a parallel region: copy reproduces the source
 * exactly, zero clears exactly the range, and neither touches the floats just
 * before or after it. alloc returns zeroed memory, 2 MiB aligned from 8 MiB on
 * (vlm_big_alloc), 64-byte aligned below. Exit status 0 when all hold. */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/vlm.h"
#include "kernels/backend.h"

static int failures;

#define CHECK(cond, ...)                                        \
  do {                                                          \
    if (!(cond)) {                                              \
      failures++;                                               \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);      \
      fprintf(stderr, __VA_ARGS__);                             \
      fputc('\n', stderr);                                      \
    }                                                           \
  } while (0)

static const float GUARD = -7.25f;

/* One copy and one zero of n floats, starting `skew` floats into a buffer with a
 * guard float on either side. */
static void one_size(const vlm_backend *ops, long n, long skew, int threads) {
  float *src = malloc((size_t)(n + skew + 2) * sizeof(float));
  float *dst = malloc((size_t)(n + skew + 2) * sizeof(float));
  if (!src || !dst) {
    fprintf(stderr, "test_backend_memory: out of memory\n");
    exit(2);
  }
  for (long i = 0; i < n + skew + 2; i++) {
    src[i] = (float)(i % 9973) + 0.5f;
    dst[i] = GUARD;
  }
  float *s = src + skew + 1, *d = dst + skew + 1;
  ops->copy(d, s, (size_t)n * sizeof(float));
  long bad = -1;
  for (long i = 0; i < n && bad < 0; i++)
    if (d[i] != s[i]) bad = i;
  CHECK(bad < 0, "copy of %ld floats (skew %ld, %d threads): float %ld differs", n, skew, threads,
        bad);
  CHECK(d[-1] == GUARD && d[n] == GUARD, "copy of %ld floats (%d threads) wrote outside its range",
        n, threads);
  ops->zero(d, n);
  bad = -1;
  for (long i = 0; i < n && bad < 0; i++)
    if (d[i] != 0.0f) bad = i;
  CHECK(bad < 0, "zero of %ld floats (skew %ld, %d threads): float %ld not 0", n, skew, threads, bad);
  CHECK(d[-1] == GUARD && d[n] == GUARD, "zero of %ld floats (%d threads) wrote outside its range",
        n, threads);
  free(src);
  free(dst);
}

static void all_sizes(const vlm_backend *ops, int threads) {
  const long thr = (1L << 20) / (long)sizeof(float); /* the split threshold in floats */
  const long sizes[] = {0, 1, 17, thr - 1, thr, thr + 1, 3 * thr + 5, 5000011};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
    for (long skew = 0; skew < 3; skew++) one_size(ops, sizes[k], skew, threads);
}

int main(void) {
  const vlm_backend *ops = vlm_backend_cpu();
  for (int t = 1; t <= 3; t++) {
    omp_set_num_threads(t);
    all_sizes(ops, t);
  }
  /* from inside a team: each thread its own buffers, done on its own thread */
  omp_set_num_threads(2);
  int ran = 0;
#pragma omp parallel reduction(+ : ran)
  {
    one_size(ops, 3L << 18, omp_get_thread_num(), 2);
    ran = 1;
  }
  CHECK(ran >= 1, "no thread ran the in-team case");

  const size_t sizes[] = {64, 4096, (size_t)8 << 20, ((size_t)8 << 20) + 64, (size_t)20 << 20};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    unsigned char *p = ops->alloc(sizes[k], "test buffer");
    CHECK(p != NULL, "alloc of %zu bytes failed", sizes[k]);
    if (!p) continue;
    size_t align = sizes[k] >= ((size_t)8 << 20) ? ((size_t)2 << 20) : 64;
    CHECK((uintptr_t)p % align == 0, "alloc of %zu bytes: %p not %zu-byte aligned", sizes[k],
          (void *)p, align);
    size_t nz = 0;
    for (size_t i = 0; i < sizes[k]; i++) nz += p[i] != 0;
    CHECK(nz == 0, "alloc of %zu bytes: %zu bytes not zero", sizes[k], nz);
    ops->free(p);
  }
  if (failures) {
    fprintf(stderr, "test_backend_memory: %d failure(s)\n", failures);
    return 1;
  }
  printf("test_backend_memory: copy, zero and alloc correct at 1-3 threads, %s\n",
         "across the split threshold and inside a team");
  return 0;
}
