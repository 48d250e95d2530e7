/* common/vlm.c: implementation of the error, allocation, timer and logging
 * helpers declared in common/vlm.h. */
#define _DEFAULT_SOURCE /* madvise, MADV_HUGEPAGE */
#define _POSIX_C_SOURCE 200809L
#include "common/vlm.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static int g_quiet;
static int g_rank;
static char g_last_error[4096];

void vlm_set_quiet_errors(int quiet) { g_quiet = quiet; }
const char *vlm_last_error(void) { return g_last_error; }
void vlm_set_rank(int rank) { g_rank = rank; }
int vlm_rank(void) { return g_rank; }

void vlm_error_at(const char *file, int line, const char *func, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_last_error, sizeof g_last_error, fmt, ap);
  va_end(ap);
  if (g_quiet) return;
  if (g_rank > 0)
    fprintf(stderr, "vlmtrain: error (rank %d): %s\n  at %s:%d (%s)\n", g_rank, g_last_error, file,
            line, func);
  else
    fprintf(stderr, "vlmtrain: error: %s\n  at %s:%d (%s)\n", g_last_error, file, line, func);
}

void vlm_trace_at(const char *file, int line, const char *func, const char *call) {
  (void)call;
  if (g_quiet) return;
  fprintf(stderr, "  from %s:%d (%s)\n", file, line, func);
}

/* Large buffers (the parameters, gradients, optimizer moments, activations) are
 * streamed through on every step; with 4 KiB pages that walks a page table entry
 * per 4 KiB. From VLM_HUGE_MIN bytes on, a buffer is aligned to 2 MiB and advised
 * for transparent huge pages (MADV_HUGEPAGE: used where the kernel's THP mode is
 * "madvise" or "always"; a no-op where it is "never" or madvise fails). */
#define VLM_HUGE 2097152u
#define VLM_HUGE_MIN (4u * VLM_HUGE)

void *vlm_big_alloc(size_t bytes) {
  if (bytes < VLM_HUGE_MIN) return aligned_alloc(64, bytes == 0 ? 64 : (bytes + 63) / 64 * 64);
  size_t rounded = (bytes + VLM_HUGE - 1) / VLM_HUGE * VLM_HUGE;
  void *p = aligned_alloc(VLM_HUGE, rounded);
  if (p) (void)madvise(p, rounded, MADV_HUGEPAGE);
  return p;
}

void *vlm_alloc_at(size_t bytes, const char *file, int line, const char *what) {
  void *p = vlm_big_alloc(bytes);
  if (!p) {
    vlm_error_at(file, line, "vlm_alloc", "out of memory allocating %zu bytes for %s", bytes, what);
    return NULL;
  }
  memset(p, 0, bytes);
  return p;
}

void vlm_free(void *p) { free(p); }

double vlm_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void vlm_log(const char *fmt, ...) {
  if (g_rank != 0) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stdout, fmt, ap);
  va_end(ap);
  fflush(stdout);
}

void vlm_warn(const char *fmt, ...) {
  if (g_rank != 0) return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "vlmtrain: warning: ");
  vfprintf(stderr, fmt, ap);
  va_end(ap);
}
