/* io/dataset.h: the vlmtrain dataset, format v1 (HDF5; docs/formats.md).
 *   /samples/tokens        int32 [n_tokens]      all samples' token ids, concatenated
 *   /samples/labels        int32 [n_tokens]      aligned with tokens; -100 ignored (HF: the loss shifts)
 *   /samples/offsets       int64 [n_samples+1]
 *   /samples/image_offsets int64 [n_samples+1]   sample i owns images image_offsets[i] ..< [i+1]
 *   /images/pixels         uint8 [n_images, S, S, 3]  RGB, already resized to image_size S
 *   root attributes: format = "vlmtrain-dataset", version = 1, image_size = S
 * Reading validates against the model config and names the file, sample and
 * position of anything wrong. */
#ifndef VLM_IO_DATASET_H
#define VLM_IO_DATASET_H

#include <mpi.h>
#include <stdint.h>
#include "io/config.h"

typedef struct {
  char path[1024];
  long long file;  /* hid_t */
  long n_samples, n_tokens, n_images;
  int image_size;
  int64_t *offsets;       /* n_samples + 1 (held in memory) */
  int64_t *image_offsets; /* n_samples + 1 */
  long max_len;           /* longest sample (tokens) */
  long max_images;        /* most images in one sample */
  const monkey_config *cfg;
  /* added with dataset_open_mpi (issue 4); dataset_open leaves mpi = 0 */
  int mpi;                 /* 1: opened by dataset_open_mpi; comm below is ours to free */
  int collective;          /* 1: MPI-IO driver, collective reads in dataset_read_samples */
  MPI_Comm comm;           /* a duplicate of the caller's communicator (when mpi) */
  int rank;                /* this process's rank in comm (0 when not mpi) */
  long long dsets[3];      /* hid_t of /samples/tokens, /samples/labels, /images/pixels,
                              held open (collective mode: opened collectively) */
  int last_io_mode[3];     /* per dataset above: H5Pget_mpio_actual_io_mode of the latest
                              collective read (H5D_mpio_actual_io_mode_t; 0 = none) */
  long n_coll_reads;       /* collective H5Dread calls made by dataset_read_samples */
  long n_coll_done;        /* of those, the ones HDF5 really did collectively */
  void *stage;             /* staging buffer of the collective reader */
  size_t stage_bytes;
} dataset;

/* Opens, checks format/version/image_size/shapes/offsets against the config. */
int dataset_open(dataset *d, const char *path, const monkey_config *c);
void dataset_close(dataset *d);
/* Reads sample i: tokens[len], labels[len], pixels[n_img * S*S*3]; checks token
 * ids < vocab, labels in vocab or -100, <img> count == n_img and each <img>
 * followed by exactly img_slots slots and </img>. Buffers must hold max_len and
 * max_images. */
int dataset_read_sample(dataset *d, long i, int32_t *tokens, int32_t *labels, int *len,
                        uint8_t *pixels, int *n_img);

/* Parallel reader (issue 4). Opens the dataset on every rank of comm (collective).
 * The checks of dataset_open run once, on rank 0, and their outcome, offsets and
 * sizes are broadcast: every rank returns the same status and, on failure, ends
 * with the same error message. collective = 0: each rank then opens the file with
 * HDF5's default driver (reads are independent, like dataset_open's);
 * collective = 1: every rank opens it with the MPI-IO driver on comm, with
 * collective metadata reads, and the three data sets once. dataset_close is then
 * collective over comm too. On a collectively opened dataset use
 * dataset_read_samples (dataset_read_sample refuses it). */
int dataset_open_mpi(dataset *d, const char *path, const monkey_config *c, MPI_Comm comm,
                     int collective);
/* Reads samples idx[0..n) (repeats allowed): tokens and labels of all of them
 * concatenated in the order of idx (sum of len[j] elements), len[j] and n_img[j]
 * per sample, pixels concatenated in the same order (sum of n_img[j] images).
 * Every sample is checked as by dataset_read_sample; errors name file, sample and
 * position. Buffers must hold n x max_len tokens and n x max_images images.
 * Collective mode: collective over comm, every rank calls it (n may be 0; n and
 * idx may differ per rank); one collective H5Dread per data set (tokens, labels,
 * pixels) over the union of this rank's samples; the status is agreed, so a bad
 * sample on one rank is the same error on every rank. d->last_io_mode records
 * what HDF5 did. Otherwise (independent mode): local to the rank, no MPI calls,
 * per-sample reads as dataset_read_sample does them, on the data sets held open
 * by dataset_open_mpi (or through dataset_read_sample after dataset_open). */
int dataset_read_samples(dataset *d, const long *idx, int n, int32_t *tokens, int32_t *labels,
                         int *len, uint8_t *pixels, int *n_img);

/* Writes a whole dataset (serial; PATH.tmp then rename). */
int dataset_write(const char *path, int image_size, long n_samples, const int64_t *offsets,
                  const int32_t *tokens, const int32_t *labels, const int64_t *image_offsets,
                  long n_images, const uint8_t *pixels);

/* Generates the learnable synthetic image-question-answer dataset (see
 * docs/formats.md, "synthetic"): each image shows one of K colour classes with
 * noise; the question is filler text; the answer is the class token and
 * <|endoftext|>. Written with dataset_write. */
int dataset_make_synthetic(const char *path, const monkey_config *c, long n_samples,
                           unsigned long seed);

/* Options of the synthetic dataset (added with dataset_make_synthetic_ex). */
typedef struct {
  int filler_min, filler_max; /* filler tokens per question, drawn in [min, max] (4, 12) */
  int multi_image_every;      /* every N-th sample (i % N == N-1) has 2 images; 0 = never (0) */
} synth_options;

/* The defaults above; dataset_make_synthetic(...) == _ex(..., defaults). */
void synth_options_default(synth_options *o);
/* Same as dataset_make_synthetic with options. Fails, before writing anything, when
 * the longest possible sample would exceed c->seq_length. */
int dataset_make_synthetic_ex(const char *path, const monkey_config *c, long n_samples,
                              unsigned long seed, const synth_options *o);

/* Parallel, appending writer (added with issue 6, `mkdata --json`): one file
 * written once by every rank of comm through parallel HDF5 (MPI-IO driver,
 * collective transfers). The datasets are chunked and grow with each append;
 * the file is PATH.tmp until dataset_pwriter_commit renames it. Every function
 * is collective over comm and returns the same status on every rank. */
typedef struct dataset_pwriter dataset_pwriter;

int dataset_pwriter_open(dataset_pwriter **w, const char *path, int image_size, MPI_Comm comm);
/* Appends this rank's n_samples samples: lengths[i] tokens and n_images[i]
 * images each; tokens/labels concatenated (sum of lengths), pixels concatenated
 * (sum of n_images x S x S x 3). In the file they follow everything appended
 * before, and within one call rank r's samples follow those of ranks < r
 * (offsets from MPI_Exscan). A rank may append 0 samples. */
int dataset_pwriter_append(dataset_pwriter *w, long n_samples, const int64_t *lengths,
                           const int32_t *n_images, const int32_t *tokens, const int32_t *labels,
                           const uint8_t *pixels);
/* Totals appended so far (the same on every rank). */
void dataset_pwriter_totals(const dataset_pwriter *w, long *n_samples, long *n_tokens,
                            long *n_images);
/* Writes the closing offsets, closes and renames PATH.tmp to PATH (needs at
 * least one sample); frees w either way. */
int dataset_pwriter_commit(dataset_pwriter *w);
/* Closes and removes PATH.tmp; frees w. */
void dataset_pwriter_abort(dataset_pwriter *w);

#endif
