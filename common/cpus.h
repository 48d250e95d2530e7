/* common/cpus.h: which CPUs this process and its OpenMP threads may run on.
 *
 * Two uses. vlmtrain re-executes itself at start-up (app/main.c) and must hand the
 * new image the CPUs the process was given, not the one CPU libgomp has already
 * bound the initial thread to when OMP_PROC_BIND or OMP_PLACES is set
 * (vlm_cpus_restore_process_mask). And `vlmtrain train` reports where its threads
 * run and warns when they share fewer CPUs than there are threads
 * (vlm_omp_placement): the trap of srun without --cpus-per-task, or of an
 * MPI launcher that binds each rank to one core while OMP_NUM_THREADS > 1. */
#ifndef VLM_COMMON_CPUS_H
#define VLM_COMMON_CPUS_H

#include <stddef.h>

/* When OpenMP places exist (binding requested), sets the calling thread's CPU mask
 * to the union of all places: the CPUs libgomp found the process allowed to use
 * when it started. Returns 0 (also when there is nothing to do), -1 on failure. */
int vlm_cpus_restore_process_mask(void);

typedef struct {
  int threads;       /* OpenMP threads of the region that read the masks */
  int cpus_allowed;  /* CPUs the process may use (union of places, or its mask) */
  int cpus_used;     /* CPUs in the union of the threads' masks */
  int bound;         /* OpenMP binding on (OMP_PROC_BIND / OMP_PLACES) */
  char text[512];    /* e.g. "2 threads, bound (close): thread 0 on CPU 0, thread 1 on CPU 1" */
} vlm_placement;

/* Opens one parallel region in which every thread reads its own CPU mask. Returns
 * 0, or -1 when a mask cannot be read (text then says so). */
int vlm_omp_placement(vlm_placement *p);

/* A warning for the log, or NULL when the threads are not crowded: they share fewer
 * CPUs than there are threads. The text of p is quoted in it: n >= 1024. */
const char *vlm_placement_warning(const vlm_placement *p, char *buf, size_t n);

#endif
