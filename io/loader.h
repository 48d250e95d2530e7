/* io/loader.h: the order in which samples are visited. An epoch is a seeded
 * permutation of the sample indices (or file order when shuffle is off); the
 * position (epoch, cursor) is all the state, so a run can resume mid-epoch. */
#ifndef VLM_IO_LOADER_H
#define VLM_IO_LOADER_H

typedef struct {
  long n_samples;
  int shuffle;
  unsigned long seed;
  long epoch, cursor;
  long *order; /* n_samples */
} data_order;

int data_order_init(data_order *o, long n_samples, int shuffle, unsigned long seed);
/* The next n sample indices (wrapping to a new epoch as needed) into idx[n]. */
void data_order_next(data_order *o, long *idx, int n);
/* Moves to position (epoch, cursor), 0 <= cursor <= n_samples, rebuilding that
 * epoch's permutation: how a run resumes (added). */
int data_order_seek(data_order *o, long epoch, long cursor);
void data_order_free(data_order *o);

#endif
