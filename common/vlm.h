/* common/vlm.h: error reporting, checked allocation and timers shared by every
 * part of vlmtrain.
 *
 * Convention: a fallible function returns int, 0 on success and -1 on failure.
 * The place that detects a failure calls VLM_FAIL("what, where, expected, found"),
 * which prints "vlmtrain: error: ..." once with file:line; each caller on the way
 * up wraps the call in VLM_CHECK(...), which adds a "  from file:line (func)"
 * trace line and returns -1 in turn (PETSc-style unwinding). The program's main
 * turns -1 into a non-zero exit status. Kernels never fail and return void. */
#ifndef VLM_COMMON_H
#define VLM_COMMON_H

#include <stddef.h>
#include <stdint.h>

void vlm_error_at(const char *file, int line, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void vlm_trace_at(const char *file, int line, const char *func, const char *call);
/* When quiet is set (unit tests that expect failures) errors are counted but not printed. */
void vlm_set_quiet_errors(int quiet);
/* The last error message (for tests that check what an error says). */
const char *vlm_last_error(void);

#define VLM_FAIL(...)                                              \
  do {                                                             \
    vlm_error_at(__FILE__, __LINE__, __func__, __VA_ARGS__);       \
    return -1;                                                     \
  } while (0)

#define VLM_CHECK(call)                                            \
  do {                                                             \
    if ((call) != 0) {                                             \
      vlm_trace_at(__FILE__, __LINE__, __func__, #call);           \
      return -1;                                                   \
    }                                                              \
  } while (0)

/* Same as VLM_CHECK but jumps to a cleanup label instead of returning. */
#define VLM_CHECK_GOTO(call, label)                                \
  do {                                                             \
    if ((call) != 0) {                                             \
      vlm_trace_at(__FILE__, __LINE__, __func__, #call);           \
      goto label;                                                  \
    }                                                              \
  } while (0)

/* Allocation: 64-byte aligned, zeroed; NULL only on failure, which is reported. */
void *vlm_alloc_at(size_t bytes, const char *file, int line, const char *what);
#define vlm_alloc(bytes, what) vlm_alloc_at((bytes), __FILE__, __LINE__, (what))
void vlm_free(void *p);
/* At least `bytes` (rounded up to 64; 0 gives 64), 64-byte aligned, and from 8 MiB
 * on 2 MiB aligned and advised for transparent huge pages. Not zeroed; free() or
 * vlm_free() releases it. NULL when out of memory. */
void *vlm_big_alloc(size_t bytes);

/* Wall-clock seconds (monotonic). */
double vlm_now(void);

/* Informational output on stdout (rank 0 only once MPI is up; see vlm_set_rank). */
void vlm_set_rank(int rank);
int vlm_rank(void);
void vlm_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void vlm_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
