/* common/vlm.c: implementation of the error, allocation, timer and logging
 * helpers declared in common/vlm.h. */
#define _POSIX_C_SOURCE 200809L
#include "common/vlm.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

void *vlm_alloc_at(size_t bytes, const char *file, int line, const char *what) {
  size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  void *p = aligned_alloc(64, rounded);
  if (!p) {
    vlm_error_at(file, line, "vlm_alloc", "out of memory allocating %zu bytes for %s", bytes, what);
    return NULL;
  }
  memset(p, 0, rounded);
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
