/* io/loader.c: the order in which samples are visited (io/loader.h). Epoch e is a
 * Fisher-Yates permutation drawn from an rng seeded with (seed, e), or file order
 * when shuffle is off; (epoch, cursor) is the whole state, so resuming rebuilds
 * the same permutation and continues where a run stopped. It does not read
 * samples or split the order between ranks: callers take their slice of idx. */
#include "io/loader.h"

#include <stdint.h>

#include "common/rng.h"
#include "common/vlm.h"

/* The rng seed of one epoch: a bijective mix of (seed, epoch), so nearby seeds and
 * epochs give unrelated streams. */
static uint64_t epoch_seed(unsigned long seed, long epoch) {
  uint64_t z = (uint64_t)seed * 0x9e3779b97f4a7c15ULL ^ ((uint64_t)epoch + 0x632be59bd9b4e019ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static void build_epoch(data_order *o) {
  for (long i = 0; i < o->n_samples; i++) o->order[i] = i;
  if (o->shuffle) {
    vlm_rng r;
    rng_seed(&r, epoch_seed(o->seed, o->epoch));
    rng_shuffle_long(&r, o->order, o->n_samples);
  }
}

int data_order_init(data_order *o, long n_samples, int shuffle, unsigned long seed) {
  o->order = NULL;
  if (n_samples < 1) VLM_FAIL("data order: need at least one sample, got %ld", n_samples);
  o->n_samples = n_samples;
  o->shuffle = shuffle != 0;
  o->seed = seed;
  o->epoch = 0;
  o->cursor = 0;
  o->order = vlm_alloc((size_t)n_samples * sizeof(long), "data order");
  if (!o->order) VLM_FAIL("data order: cannot allocate %ld indices", n_samples);
  build_epoch(o);
  return 0;
}

int data_order_seek(data_order *o, long epoch, long cursor) {
  if (epoch < 0 || cursor < 0 || cursor > o->n_samples)
    VLM_FAIL(
        "data order: cannot resume at epoch %ld, cursor %ld (expected epoch >= 0 and "
        "0 <= cursor <= %ld samples)",
        epoch, cursor, o->n_samples);
  o->epoch = epoch;
  o->cursor = cursor;
  build_epoch(o);
  return 0;
}

void data_order_next(data_order *o, long *idx, int n) {
  for (int k = 0; k < n; k++) {
    if (o->cursor >= o->n_samples) {
      o->epoch++;
      o->cursor = 0;
      build_epoch(o);
    }
    idx[k] = o->order[o->cursor++];
  }
}

void data_order_free(data_order *o) {
  vlm_free(o->order);
  o->order = NULL;
}
