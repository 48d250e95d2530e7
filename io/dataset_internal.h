/* io/dataset_internal.h: what the parts of the dataset code share (io/dataset.c
 * the reader, io/dataset_write.c the serial writer, io/synthetic.c the synthetic
 * task, io/dataset_pwrite.c the parallel writer, io/dataset_mpi.c the parallel
 * reader) and nothing else includes. */
#ifndef VLM_IO_DATASET_INTERNAL_H
#define VLM_IO_DATASET_INTERNAL_H

#include <hdf5.h>
#include <stdint.h>

#include "io/dataset.h"

#define FORMAT_NAME "vlmtrain-dataset"
#define FORMAT_VERSION 1
#define LABEL_IGNORE (-100)

/* Silences HDF5's own error-stack printing while we report errors our way. */
typedef struct {
  H5E_auto2_t fn;
  void *data;
} ds_quiet;

/* The serial writer: PATH.tmp with every dataset at full size, filled by
 * hyperslabs, then closed, fsynced and renamed to PATH. */
typedef struct {
  char tmp[1100];
  hid_t file, tokens, labels, offsets, image_offsets, pixels;
} ds_writer;

void ds_quiet_on(ds_quiet *q);
void ds_quiet_off(const ds_quiet *q);
const char *ds_h5_reason(char *buf);
void ds_close_id(hid_t *id, herr_t (*close_fn)(hid_t));
int ds_validate_sample(const dataset *d, long i, const int32_t *tok, const int32_t *lab, long len, long n_img);
int ds_write_attr(const char *tmp, hid_t file, const char *name, hid_t type, const void *v);
int ds_create_group(const char *tmp, hid_t file, const char *name);
int ds_create_dset(const char *tmp, hid_t file, const char *name, hid_t type, int rank, const hsize_t *dims, hid_t *out);
void ds_writer_abort(ds_writer *w);
int ds_writer_create(ds_writer *w, const char *path, int S, long n_samples, long n_tokens, long n_images);
int ds_writer_put(ds_writer *w, hid_t ds, const char *name, hid_t memtype, int rank, const hsize_t *start, const hsize_t *count, const void *buf);
int ds_writer_commit(ds_writer *w, const char *path);
int ds_fsync_path(const char *p, int dir);
int ds_fsync_path(const char *p, int dir);

#endif
