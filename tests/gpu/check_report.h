/* tests/gpu/check_report.h: the error measure and the pass/fail report shared by the
 * GPU check programs (check_kernels, check_backend). Header-only: each program gets its
 * own counters, printed at its end as "N passed, N failed". */
#ifndef VLM_TESTS_GPU_CHECK_REPORT_H
#define VLM_TESTS_GPU_CHECK_REPORT_H

#include <math.h>
#include <stdio.h>
#include <stddef.h>

static int n_pass, n_fail;

/* max|a - b| / max|b| over the elements where b is finite; infinite if a is
 * non-finite where b is finite. */
static double rel_err(const float *a, const float *b, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(a[i]) && isfinite(b[i])) return INFINITY;
    if (isfinite(b[i])) {
      num = fmax(num, fabs((double)a[i] - (double)b[i]));
      den = fmax(den, fabs((double)b[i]));
    }
  }
  return den > 0.0 ? num / den : num;
}

/* One line per check: ok/FAIL, the name, the error and the tolerance. */
static void report(int ok, const char *name, double err, double tol) {
  printf("%s %-58s err %.2e  tol %.0e\n", ok ? "ok  " : "FAIL", name, err, tol);
  fflush(stdout);
  if (ok)
    n_pass++;
  else
    n_fail++;
}

#endif
