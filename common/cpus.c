/* common/cpus.c: CPU masks of the process and of its OpenMP threads (see cpus.h).
 * Linux only (sched_getaffinity / sched_setaffinity, glibc's cpu_set_t); CPUs
 * numbered at or above CPU_SETSIZE (1024) are not seen. */
#define _GNU_SOURCE
#include "common/cpus.h"

#include <errno.h>
#include <omp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The union of all OpenMP places into *set; returns the number of places (0: none,
 * binding off). */
static int places_union(cpu_set_t *set) {
  CPU_ZERO(set);
  const int np = omp_get_num_places();
  for (int p = 0; p < np; p++) {
    int k = omp_get_place_num_procs(p);
    if (k <= 0) continue;
    int *ids = malloc((size_t)k * sizeof *ids);
    if (!ids) continue;
    omp_get_place_proc_ids(p, ids);
    for (int i = 0; i < k; i++)
      if (ids[i] >= 0 && ids[i] < CPU_SETSIZE) CPU_SET(ids[i], set);
    free(ids);
  }
  return np;
}

int vlm_cpus_restore_process_mask(void) {
  cpu_set_t set;
  if (places_union(&set) == 0 || CPU_COUNT(&set) == 0) return 0;
  return sched_setaffinity(0, sizeof set, &set) == 0 ? 0 : -1;
}

/* "0-3,8" into buf. */
static void cpu_list(const cpu_set_t *set, char *buf, size_t n) {
  size_t len = 0;
  buf[0] = '\0';
  for (int c = 0; c < CPU_SETSIZE && len < n; c++) {
    if (!CPU_ISSET(c, set)) continue;
    int e = c;
    while (e + 1 < CPU_SETSIZE && CPU_ISSET(e + 1, set)) e++;
    int w = e > c ? snprintf(buf + len, n - len, "%s%d-%d", len ? "," : "", c, e)
                  : snprintf(buf + len, n - len, "%s%d", len ? "," : "", c);
    if (w < 0) break;
    len += (size_t)w;
    c = e;
  }
}

static const char *bind_name(omp_proc_bind_t b) {
  switch (b) {
    case omp_proc_bind_true: return "true";
    case omp_proc_bind_master: return "primary";
    case omp_proc_bind_close: return "close";
    case omp_proc_bind_spread: return "spread";
    default: return "false";
  }
}

/* Threads listed one by one in the text, at most. */
#define LISTED_THREADS 8

int vlm_omp_placement(vlm_placement *p) {
  memset(p, 0, sizeof *p);
  const int max_t = omp_get_max_threads();
  cpu_set_t *mask = calloc((size_t)max_t, sizeof *mask);
  if (!mask) {
    snprintf(p->text, sizeof p->text, "(cannot allocate %d CPU masks)", max_t);
    return -1;
  }
  int nt = 1, failed = 0;
#pragma omp parallel
  {
#pragma omp single
    nt = omp_get_num_threads();
    if (sched_getaffinity(0, sizeof(cpu_set_t), &mask[omp_get_thread_num()]) != 0) {
#pragma omp atomic write
      failed = errno ? errno : 1;
    }
  }
  if (failed) {
    snprintf(p->text, sizeof p->text, "(cannot read a thread's CPU mask: %s)", strerror(failed));
    free(mask);
    return -1;
  }
  cpu_set_t used, allowed;
  CPU_ZERO(&used);
  for (int t = 0; t < nt; t++) CPU_OR(&used, &used, &mask[t]);
  if (places_union(&allowed) == 0) allowed = used; /* unbound: every thread has the process mask */
  p->threads = nt;
  p->cpus_used = CPU_COUNT(&used);
  p->cpus_allowed = CPU_COUNT(&allowed);
  p->bound = omp_get_proc_bind() != omp_proc_bind_false;

  char cpus[128];
  size_t len;
  if (!p->bound) {
    cpu_list(&used, cpus, sizeof cpus);
    snprintf(p->text, sizeof p->text, "%d thread%s, not bound, on CPUs %s", nt, nt == 1 ? "" : "s",
             cpus);
  } else {
    len = (size_t)snprintf(p->text, sizeof p->text, "%d thread%s, bound (%s):", nt,
                           nt == 1 ? "" : "s", bind_name(omp_get_proc_bind()));
    for (int t = 0; t < nt && t < LISTED_THREADS && len < sizeof p->text; t++) {
      cpu_list(&mask[t], cpus, sizeof cpus);
      len += (size_t)snprintf(p->text + len, sizeof p->text - len, "%s thread %d on CPU%s %s",
                              t ? "," : "", t, CPU_COUNT(&mask[t]) == 1 ? "" : "s", cpus);
    }
    if (nt > LISTED_THREADS && len < sizeof p->text)
      snprintf(p->text + len, sizeof p->text - len, ", ...");
  }
  free(mask);
  return 0;
}

const char *vlm_placement_warning(const vlm_placement *p, char *buf, size_t n) {
  if (p->threads <= p->cpus_used) return NULL;
  if (p->cpus_used < p->cpus_allowed)
    snprintf(buf, n,
             "%d OpenMP threads run on %d CPU(s) of the %d this process may use (%s): "
             "check OMP_PLACES and OMP_PROC_BIND\n",
             p->threads, p->cpus_used, p->cpus_allowed, p->text);
  else
    snprintf(buf, n,
             "%d OpenMP threads share %d CPU(s) (%s): set OMP_NUM_THREADS=%d, or give each "
             "rank more CPUs (srun --cpus-per-task, mpirun --map-by slot:PE=N)\n",
             p->threads, p->cpus_used, p->text, p->cpus_used);
  return buf;
}
