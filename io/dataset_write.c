/* io/dataset_write.c: the atomic serial writer of dataset v1 (dataset_write):
 * PATH.tmp, every dataset at its full size, fsync, rename; a failure leaves no
 * PATH.tmp and never a half file under PATH. */
#define _POSIX_C_SOURCE 200809L
#include "io/dataset.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/rng.h"
#include "common/vlm.h"
#include "io/dataset_internal.h"



/* ------------------------------------------------------------------------------
 * Writer: creates PATH.tmp with every dataset at its full size, takes the data in
 * one or more hyperslabs, then closes, fsyncs and renames it to PATH. A failure
 * removes PATH.tmp; PATH is never a half-written file. */

int ds_write_attr(const char *tmp, hid_t file, const char *name, hid_t type, const void *v) {
  char why[200] = "";
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = sp >= 0 ? H5Acreate2(file, name, type, sp, H5P_DEFAULT, H5P_DEFAULT) : -1;
  herr_t st = a >= 0 ? H5Awrite(a, type, v) : -1;
  if (st < 0) ds_h5_reason(why);
  ds_close_id(&a, H5Aclose);
  ds_close_id(&sp, H5Sclose);
  if (st < 0) VLM_FAIL("dataset %s: cannot write root attribute '%s': %s", tmp, name, why);
  return 0;
}

int ds_create_dset(const char *tmp, hid_t file, const char *name, hid_t type, int rank,
                       const hsize_t *dims, hid_t *out) {
  char why[200] = "";
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  hid_t sp = H5Screate_simple(rank, dims, NULL);
  *out = -1;
  if (dcpl >= 0 && sp >= 0 && H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) >= 0 &&
      H5Pset_obj_track_times(dcpl, 0) >= 0) /* no timestamps: same data, same bytes */
    *out = H5Dcreate2(file, name, type, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  if (*out < 0) ds_h5_reason(why);
  ds_close_id(&sp, H5Sclose);
  ds_close_id(&dcpl, H5Pclose);
  if (*out < 0) VLM_FAIL("dataset %s: cannot create %s: %s", tmp, name, why);
  return 0;
}

int ds_create_group(const char *tmp, hid_t file, const char *name) {
  char why[200] = "";
  hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
  hid_t g = -1;
  if (gcpl >= 0 && H5Pset_obj_track_times(gcpl, 0) >= 0)
    g = H5Gcreate2(file, name, H5P_DEFAULT, gcpl, H5P_DEFAULT);
  if (g < 0) ds_h5_reason(why);
  ds_close_id(&g, H5Gclose);
  ds_close_id(&gcpl, H5Pclose);
  if (why[0]) VLM_FAIL("dataset %s: cannot create group %s: %s", tmp, name, why);
  return 0;
}

void ds_writer_abort(ds_writer *w) {
  ds_close_id(&w->tokens, H5Dclose);
  ds_close_id(&w->labels, H5Dclose);
  ds_close_id(&w->offsets, H5Dclose);
  ds_close_id(&w->image_offsets, H5Dclose);
  ds_close_id(&w->pixels, H5Dclose);
  ds_close_id(&w->file, H5Fclose);
  if (w->tmp[0]) unlink(w->tmp);
  w->tmp[0] = '\0';
}

/* Call with HDF5 quiet; on failure the caller calls ds_writer_abort. */
int ds_writer_create(ds_writer *w, const char *path, int S, long n_samples, long n_tokens,
                          long n_images) {
  w->file = w->tokens = w->labels = w->offsets = w->image_offsets = w->pixels = -1;
  w->tmp[0] = '\0';
  if (strlen(path) + 5 > sizeof w->tmp) VLM_FAIL("dataset path too long: %s", path);
  snprintf(w->tmp, sizeof w->tmp, "%s.tmp", path);
  char why[200];
  hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
  w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
  if (w->file < 0) ds_h5_reason(why);
  if (fcpl >= 0) H5Pclose(fcpl);
  if (w->file < 0) {
    w->tmp[0] = '\0'; /* nothing of ours to remove */
    VLM_FAIL("dataset %s: cannot create %s.tmp: %s", path, path, why);
  }
  /* format: a variable-length UTF-8 string, what h5py writes for a Python str */
  hid_t st = H5Tcopy(H5T_C_S1);
  H5Tset_size(st, H5T_VARIABLE);
  H5Tset_cset(st, H5T_CSET_UTF8);
  const char *fmt = FORMAT_NAME;
  int rc = ds_write_attr(w->tmp, w->file, "format", st, &fmt);
  H5Tclose(st);
  VLM_CHECK(rc);
  long long version = FORMAT_VERSION, size = S;
  VLM_CHECK(ds_write_attr(w->tmp, w->file, "version", H5T_STD_I64LE, &version));
  VLM_CHECK(ds_write_attr(w->tmp, w->file, "image_size", H5T_STD_I64LE, &size));
  VLM_CHECK(ds_create_group(w->tmp, w->file, "/samples"));
  VLM_CHECK(ds_create_group(w->tmp, w->file, "/images"));
  hsize_t dt[1] = {(hsize_t)n_tokens}, dof[1] = {(hsize_t)n_samples + 1};
  hsize_t dp[4] = {(hsize_t)n_images, (hsize_t)S, (hsize_t)S, 3};
  VLM_CHECK(ds_create_dset(w->tmp, w->file, "/samples/tokens", H5T_STD_I32LE, 1, dt, &w->tokens));
  VLM_CHECK(ds_create_dset(w->tmp, w->file, "/samples/labels", H5T_STD_I32LE, 1, dt, &w->labels));
  VLM_CHECK(ds_create_dset(w->tmp, w->file, "/samples/offsets", H5T_STD_I64LE, 1, dof, &w->offsets));
  VLM_CHECK(ds_create_dset(w->tmp, w->file, "/samples/image_offsets", H5T_STD_I64LE, 1, dof,
                        &w->image_offsets));
  VLM_CHECK(ds_create_dset(w->tmp, w->file, "/images/pixels", H5T_STD_U8LE, 4, dp, &w->pixels));
  return 0;
}

/* Writes buf to the hyperslab start/count of ds (an open dataset of w). */
int ds_writer_put(ds_writer *w, hid_t ds, const char *name, hid_t memtype, int rank,
                       const hsize_t *start, const hsize_t *count, const void *buf) {
  hsize_t total = 1;
  for (int r = 0; r < rank; r++) total *= count[r];
  if (total == 0) return 0;
  char why[200] = "";
  herr_t st = -1;
  hid_t ms = -1, fs = H5Dget_space(ds);
  if (fs >= 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) >= 0 &&
      (ms = H5Screate_simple(rank, count, NULL)) >= 0)
    st = H5Dwrite(ds, memtype, ms, fs, H5P_DEFAULT, buf);
  if (st < 0) ds_h5_reason(why);
  ds_close_id(&ms, H5Sclose);
  ds_close_id(&fs, H5Sclose);
  if (st < 0) VLM_FAIL("dataset %s: cannot write %s: %s", w->tmp, name, why);
  return 0;
}

int ds_fsync_path(const char *p, int dir) {
  int fd = open(p, O_RDONLY | (dir ? O_DIRECTORY : 0));
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

/* Closes PATH.tmp, makes it durable and renames it to PATH. */
int ds_writer_commit(ds_writer *w, const char *path) {
  char why[200] = "";
  ds_close_id(&w->tokens, H5Dclose);
  ds_close_id(&w->labels, H5Dclose);
  ds_close_id(&w->offsets, H5Dclose);
  ds_close_id(&w->image_offsets, H5Dclose);
  ds_close_id(&w->pixels, H5Dclose);
  herr_t st = H5Fclose(w->file);
  w->file = -1;
  if (st < 0) VLM_FAIL("dataset %s: closing %s failed: %s", path, w->tmp, ds_h5_reason(why));
  if (ds_fsync_path(w->tmp, 0) != 0)
    VLM_FAIL("dataset %s: fsync of %s failed: %s", path, w->tmp, strerror(errno));
  if (rename(w->tmp, path) != 0)
    VLM_FAIL("dataset %s: rename of %s to it failed: %s", path, w->tmp, strerror(errno));
  w->tmp[0] = '\0';
  /* make the rename durable too (best effort: some file systems refuse fsync on a directory) */
  char dir[1100];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash == dir)
    dir[1] = '\0';
  else if (slash)
    *slash = '\0';
  else
    snprintf(dir, sizeof dir, ".");
  (void)ds_fsync_path(dir, 1);
  return 0;
}

static int check_write_args(const char *path, int S, long n, const int64_t *off,
                            const int64_t *ioff, long n_images) {
  if (S < 1) VLM_FAIL("dataset %s: image_size must be >= 1, got %d", path, S);
  if (n < 1) VLM_FAIL("dataset %s: need at least one sample, got %ld", path, n);
  if (n_images < 0) VLM_FAIL("dataset %s: n_images must be >= 0, got %ld", path, n_images);
  if (off[0] != 0) VLM_FAIL("dataset %s: offsets[0] must be 0, got %lld", path, (long long)off[0]);
  if (ioff[0] != 0)
    VLM_FAIL("dataset %s: image_offsets[0] must be 0, got %lld", path, (long long)ioff[0]);
  for (long i = 0; i < n; i++) {
    if (off[i + 1] < off[i])
      VLM_FAIL("dataset %s: offsets must be non-decreasing (sample %ld: %lld > %lld)", path, i,
               (long long)off[i], (long long)off[i + 1]);
    if (ioff[i + 1] < ioff[i])
      VLM_FAIL("dataset %s: image_offsets must be non-decreasing (sample %ld: %lld > %lld)", path,
               i, (long long)ioff[i], (long long)ioff[i + 1]);
  }
  if (ioff[n] != n_images)
    VLM_FAIL("dataset %s: image_offsets[%ld] = %lld must equal n_images = %ld", path, n,
             (long long)ioff[n], n_images);
  return 0;
}

int dataset_write(const char *path, int image_size, long n_samples, const int64_t *offsets,
                  const int32_t *tokens, const int32_t *labels, const int64_t *image_offsets,
                  long n_images, const uint8_t *pixels) {
  VLM_CHECK(check_write_args(path, image_size, n_samples, offsets, image_offsets, n_images));
  const long n_tokens = (long)offsets[n_samples];
  const hsize_t S = (hsize_t)image_size;
  hsize_t z1[1] = {0}, z4[4] = {0, 0, 0, 0};
  hsize_t ct[1] = {(hsize_t)n_tokens}, co[1] = {(hsize_t)n_samples + 1};
  hsize_t cp[4] = {(hsize_t)n_images, S, S, 3};
  ds_writer w;
  ds_quiet q;
  ds_quiet_on(&q);
  VLM_CHECK_GOTO(ds_writer_create(&w, path, image_size, n_samples, n_tokens, n_images), fail);
  VLM_CHECK_GOTO(ds_writer_put(&w, w.tokens, "/samples/tokens", H5T_NATIVE_INT32, 1, z1, ct, tokens),
                 fail);
  VLM_CHECK_GOTO(ds_writer_put(&w, w.labels, "/samples/labels", H5T_NATIVE_INT32, 1, z1, ct, labels),
                 fail);
  VLM_CHECK_GOTO(
      ds_writer_put(&w, w.offsets, "/samples/offsets", H5T_NATIVE_INT64, 1, z1, co, offsets), fail);
  VLM_CHECK_GOTO(ds_writer_put(&w, w.image_offsets, "/samples/image_offsets", H5T_NATIVE_INT64, 1, z1,
                             co, image_offsets),
                 fail);
  VLM_CHECK_GOTO(ds_writer_put(&w, w.pixels, "/images/pixels", H5T_NATIVE_UINT8, 4, z4, cp, pixels),
                 fail);
  VLM_CHECK_GOTO(ds_writer_commit(&w, path), fail);
  ds_quiet_off(&q);
  return 0;
fail:
  ds_writer_abort(&w);
  ds_quiet_off(&q);
  return -1;
}
