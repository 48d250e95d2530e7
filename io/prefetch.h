/* io/prefetch.h: reads the next micro-batch of a rank's samples in a
 * background thread while the current one computes (double buffering). The
 * thread makes HDF5 calls only between prefetch_start and prefetch_wait, and no
 * MPI calls at all, so the main thread must not touch HDF5 in between (Debian's
 * HDF5 is not thread-safe; the trainer waits before writing a checkpoint).
 * A dataset opened for collective reads makes MPI calls, which the thread may
 * not (MPI_THREAD_FUNNELED): then prefetch_start reads at once, in the caller. */
#ifndef VLM_IO_PREFETCH_H
#define VLM_IO_PREFETCH_H

#include <pthread.h>
#include <stdint.h>

#include "io/dataset.h"

typedef struct {
  int32_t *tokens, *labels;
  uint8_t *pixels;
  int *len, *n_img;
  long *idx;
  int n;  /* samples */
  int rc; /* 0 ok, -1 failed (reported by the thread) */
} sample_batch;

typedef struct {
  dataset *d;
  sample_batch buf[2];
  int ready;        /* buffer holding the batch prefetch_wait returns */
  int busy;         /* a read is in flight */
  int stop;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started;
  int synchronous; /* collective reads: no thread */
} prefetcher;

/* Buffers for up to max_samples samples of at most max_len tokens and
 * max_images images in all; starts the thread unless synchronous. */
int prefetch_init(prefetcher *p, dataset *d, int max_samples, long max_tokens, long max_images,
                  int synchronous);
/* Starts reading samples idx[0..n) into the free buffer. */
void prefetch_start(prefetcher *p, const long *idx, int n);
/* Waits for the read in flight and returns its buffer (valid until the next
 * prefetch_start after the following wait). */
sample_batch *prefetch_wait(prefetcher *p);
void prefetch_free(prefetcher *p);

#endif
