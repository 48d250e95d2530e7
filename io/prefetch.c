/* io/prefetch.c: see io/prefetch.h. */
#include "io/prefetch.h"

#include <stdlib.h>
#include <string.h>

#include "common/vlm.h"

static int read_batch(dataset *d, sample_batch *b) {
  return dataset_read_samples(d, b->idx, b->n, b->tokens, b->labels, b->len, b->pixels, b->n_img);
}

static void *worker(void *arg) {
  prefetcher *p = arg;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->busy && !p->stop) pthread_cond_wait(&p->cv, &p->mu);
    if (p->stop) break;
    sample_batch *b = &p->buf[1 - p->ready];
    pthread_mutex_unlock(&p->mu);
    b->rc = read_batch(p->d, b);
    pthread_mutex_lock(&p->mu);
    p->ready = 1 - p->ready;
    p->busy = 0;
    pthread_cond_broadcast(&p->cv);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

int prefetch_init(prefetcher *p, dataset *d, int max_samples, long max_tokens, long max_images,
                  int synchronous) {
  memset(p, 0, sizeof *p);
  p->d = d;
  p->synchronous = synchronous;
  const size_t img = (size_t)d->image_size * d->image_size * 3;
  for (int k = 0; k < 2; k++) {
    sample_batch *b = &p->buf[k];
    b->tokens = vlm_alloc((size_t)max_tokens * sizeof(int32_t), "batch tokens");
    b->labels = vlm_alloc((size_t)max_tokens * sizeof(int32_t), "batch labels");
    b->pixels = vlm_alloc((size_t)(max_images > 0 ? max_images : 1) * img, "batch pixels");
    b->len = vlm_alloc((size_t)max_samples * sizeof(int), "batch lengths");
    b->n_img = vlm_alloc((size_t)max_samples * sizeof(int), "batch image counts");
    b->idx = vlm_alloc((size_t)max_samples * sizeof(long), "batch indices");
    if (!b->tokens || !b->labels || !b->pixels || !b->len || !b->n_img || !b->idx) {
      prefetch_free(p);
      VLM_FAIL("cannot allocate the prefetch buffers");
    }
  }
  if (synchronous) return 0;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  if (pthread_create(&p->thread, NULL, worker, p) != 0) {
    prefetch_free(p);
    VLM_FAIL("cannot start the data prefetch thread");
  }
  p->started = 1;
  return 0;
}

void prefetch_start(prefetcher *p, const long *idx, int n) {
  if (p->synchronous) {
    sample_batch *b = &p->buf[1 - p->ready];
    memcpy(b->idx, idx, (size_t)n * sizeof(long));
    b->n = n;
    b->rc = read_batch(p->d, b);
    p->ready = 1 - p->ready;
    return;
  }
  pthread_mutex_lock(&p->mu);
  sample_batch *b = &p->buf[1 - p->ready];
  memcpy(b->idx, idx, (size_t)n * sizeof(long));
  b->n = n;
  p->busy = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

sample_batch *prefetch_wait(prefetcher *p) {
  if (p->synchronous) return &p->buf[p->ready];
  pthread_mutex_lock(&p->mu);
  while (p->busy) pthread_cond_wait(&p->cv, &p->mu);
  sample_batch *b = &p->buf[p->ready];
  pthread_mutex_unlock(&p->mu);
  return b;
}

void prefetch_free(prefetcher *p) {
  if (p->started) {
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
  }
  for (int k = 0; k < 2; k++) {
    sample_batch *b = &p->buf[k];
    vlm_free(b->tokens);
    vlm_free(b->labels);
    vlm_free(b->pixels);
    vlm_free(b->len);
    vlm_free(b->n_img);
    vlm_free(b->idx);
  }
  memset(p, 0, sizeof *p);
}
