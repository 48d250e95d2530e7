/* io/dataset_pwrite.c: the parallel appending writer of `mkdata --json`
 * (collective HDF5 writes at MPI_Exscan offsets). */
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
 * Parallel appending writer (mkdata --json): every rank of comm opens PATH.tmp
 * with the MPI-IO driver; the five datasets are chunked with unlimited first
 * dimension and grow with each collective append (H5Dset_extent); each rank
 * writes its hyperslab with a collective H5Dwrite at offsets from MPI_Exscan.
 * Commit writes the last element of both offset arrays, closes, and rank 0
 * renames PATH.tmp to PATH. */

struct dataset_pwriter {
  char path[1024], tmp[1100];
  MPI_Comm comm;
  int rank, image_size;
  hid_t file, dxpl, tokens, labels, offsets, image_offsets, pixels;
  long long n_samples, n_tokens, n_images; /* totals appended so far */
};

/* 1 on every rank when ok is 1 on every rank. */
static int pw_all(MPI_Comm comm, int ok) {
  int all = 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm);
  return all;
}

static int pw_create_dset(dataset_pwriter *w, const char *name, hid_t type, int rank,
                          const hsize_t *chunk, hid_t *out) {
  char why[200] = "";
  hsize_t dims[4] = {0, 0, 0, 0}, maxd[4];
  for (int r = 0; r < rank; r++) {
    dims[r] = r == 0 ? 0 : chunk[r];
    maxd[r] = r == 0 ? H5S_UNLIMITED : chunk[r];
  }
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  hid_t sp = H5Screate_simple(rank, dims, maxd);
  *out = -1;
  if (dcpl >= 0 && sp >= 0 && H5Pset_chunk(dcpl, rank, chunk) >= 0 &&
      H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) >= 0 && H5Pset_obj_track_times(dcpl, 0) >= 0)
    *out = H5Dcreate2(w->file, name, type, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  if (*out < 0) ds_h5_reason(why);
  ds_close_id(&sp, H5Sclose);
  ds_close_id(&dcpl, H5Pclose);
  if (*out < 0) VLM_FAIL("dataset %s: cannot create %s: %s", w->tmp, name, why);
  return 0;
}

static void pw_close_all(dataset_pwriter *w) {
  ds_close_id(&w->tokens, H5Dclose);
  ds_close_id(&w->labels, H5Dclose);
  ds_close_id(&w->offsets, H5Dclose);
  ds_close_id(&w->image_offsets, H5Dclose);
  ds_close_id(&w->pixels, H5Dclose);
  ds_close_id(&w->dxpl, H5Pclose);
  ds_close_id(&w->file, H5Fclose);
}

static int pw_open_body(dataset_pwriter *w) {
  char why[200] = "";
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl >= 0 && H5Pset_fapl_mpio(fapl, w->comm, MPI_INFO_NULL) >= 0)
    w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  if (w->file < 0) ds_h5_reason(why);
  ds_close_id(&fapl, H5Pclose);
  if (w->file < 0)
    VLM_FAIL("dataset %s: cannot create %s (parallel HDF5): %s", w->path, w->tmp, why);
  w->dxpl = H5Pcreate(H5P_DATASET_XFER);
  if (w->dxpl < 0 || H5Pset_dxpl_mpio(w->dxpl, H5FD_MPIO_COLLECTIVE) < 0)
    VLM_FAIL("dataset %s: cannot set up collective transfers: %s", w->tmp, ds_h5_reason(why));
  hid_t st = H5Tcopy(H5T_C_S1);
  H5Tset_size(st, H5T_VARIABLE);
  H5Tset_cset(st, H5T_CSET_UTF8);
  const char *fmt = FORMAT_NAME;
  int rc = ds_write_attr(w->tmp, w->file, "format", st, &fmt);
  H5Tclose(st);
  VLM_CHECK(rc);
  long long version = FORMAT_VERSION, size = w->image_size;
  VLM_CHECK(ds_write_attr(w->tmp, w->file, "version", H5T_STD_I64LE, &version));
  VLM_CHECK(ds_write_attr(w->tmp, w->file, "image_size", H5T_STD_I64LE, &size));
  VLM_CHECK(ds_create_group(w->tmp, w->file, "/samples"));
  VLM_CHECK(ds_create_group(w->tmp, w->file, "/images"));
  const hsize_t S = (hsize_t)w->image_size;
  hsize_t ct[1] = {1 << 16}, co[1] = {1 << 13}, cp[4] = {1, S, S, 3};
  VLM_CHECK(pw_create_dset(w, "/samples/tokens", H5T_STD_I32LE, 1, ct, &w->tokens));
  VLM_CHECK(pw_create_dset(w, "/samples/labels", H5T_STD_I32LE, 1, ct, &w->labels));
  VLM_CHECK(pw_create_dset(w, "/samples/offsets", H5T_STD_I64LE, 1, co, &w->offsets));
  VLM_CHECK(pw_create_dset(w, "/samples/image_offsets", H5T_STD_I64LE, 1, co, &w->image_offsets));
  VLM_CHECK(pw_create_dset(w, "/images/pixels", H5T_STD_U8LE, 4, cp, &w->pixels));
  return 0;
}

int dataset_pwriter_open(dataset_pwriter **out, const char *path, int image_size, MPI_Comm comm) {
  *out = NULL;
  if (strlen(path) >= 1024)
    VLM_FAIL("dataset path too long (%zu characters): %s", strlen(path), path);
  if (image_size < 1) VLM_FAIL("dataset %s: image_size must be >= 1, got %d", path, image_size);
  dataset_pwriter *w = calloc(1, sizeof *w);
  int ok = w != NULL;
  if (!pw_all(comm, ok)) {
    free(w);
    if (!ok) VLM_FAIL("dataset %s: out of memory for the writer", path);
    return -1;
  }
  snprintf(w->path, sizeof w->path, "%s", path);
  snprintf(w->tmp, sizeof w->tmp, "%s.tmp", path);
  w->comm = comm;
  MPI_Comm_rank(comm, &w->rank);
  w->image_size = image_size;
  w->file = w->dxpl = w->tokens = w->labels = w->offsets = w->image_offsets = w->pixels = -1;
  ds_quiet q;
  ds_quiet_on(&q);
  int rc = pw_open_body(w);
  ds_quiet_off(&q);
  if (!pw_all(comm, rc == 0)) {
    dataset_pwriter_abort(w);
    if (rc) VLM_CHECK(rc);
    return -1;
  }
  *out = w;
  return 0;
}

/* Collective write of count[] at start[] of ds (count may be all zero on a rank). */
static int pw_put(dataset_pwriter *w, hid_t ds, const char *name, hid_t memtype, int rank,
                  const hsize_t *start, const hsize_t *count, const void *buf) {
  hsize_t total = 1;
  for (int r = 0; r < rank; r++) total *= count[r];
  static const char dummy[8];
  char why[200] = "";
  herr_t st = -1;
  hid_t ms = -1, fs = H5Dget_space(ds);
  if (fs >= 0) {
    if (total == 0) {
      hsize_t one = 1;
      ms = H5Screate_simple(1, &one, NULL);
      if (ms >= 0 && H5Sselect_none(ms) >= 0 && H5Sselect_none(fs) >= 0)
        st = H5Dwrite(ds, memtype, ms, fs, w->dxpl, dummy);
    } else if (H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) >= 0 &&
               (ms = H5Screate_simple(rank, count, NULL)) >= 0) {
      st = H5Dwrite(ds, memtype, ms, fs, w->dxpl, buf);
    }
  }
  if (st < 0) ds_h5_reason(why);
  ds_close_id(&ms, H5Sclose);
  ds_close_id(&fs, H5Sclose);
  if (st < 0)
    VLM_FAIL("dataset %s: cannot write %s (elements %llu + %llu): %s", w->tmp, name,
             (unsigned long long)start[0], (unsigned long long)count[0], why);
  return 0;
}

static int pw_extend(dataset_pwriter *w, hid_t ds, const char *name, hsize_t n0) {
  const hsize_t S = (hsize_t)w->image_size;
  hsize_t dims[4] = {n0, S, S, 3};
  char why[200];
  if (H5Dset_extent(ds, dims) < 0)
    VLM_FAIL("dataset %s: cannot grow %s to %llu: %s", w->tmp, name, (unsigned long long)n0,
             ds_h5_reason(why));
  return 0;
}

static int pw_append_body(dataset_pwriter *w, long n, const int64_t *lengths, const int32_t *n_img,
                          const int32_t *tokens, const int32_t *labels, const uint8_t *pixels,
                          int64_t *offs, int64_t *ioffs) {
  long long mine[3] = {n, 0, 0}, before[3] = {0, 0, 0}, total[3] = {0, 0, 0};
  for (long i = 0; i < n; i++) {
    offs[i] = mine[1];
    ioffs[i] = mine[2];
    mine[1] += lengths[i];
    mine[2] += n_img[i];
  }
  MPI_Exscan(mine, before, 3, MPI_LONG_LONG, MPI_SUM, w->comm);
  if (w->rank == 0) before[0] = before[1] = before[2] = 0; /* Exscan leaves rank 0's undefined */
  MPI_Allreduce(mine, total, 3, MPI_LONG_LONG, MPI_SUM, w->comm);
  const long long s0 = w->n_samples + before[0], t0 = w->n_tokens + before[1],
                  i0 = w->n_images + before[2];
  for (long i = 0; i < n; i++) {
    offs[i] += t0;
    ioffs[i] += i0;
  }
  VLM_CHECK(pw_extend(w, w->tokens, "/samples/tokens", (hsize_t)(w->n_tokens + total[1])));
  VLM_CHECK(pw_extend(w, w->labels, "/samples/labels", (hsize_t)(w->n_tokens + total[1])));
  VLM_CHECK(pw_extend(w, w->offsets, "/samples/offsets", (hsize_t)(w->n_samples + total[0])));
  VLM_CHECK(
      pw_extend(w, w->image_offsets, "/samples/image_offsets", (hsize_t)(w->n_samples + total[0])));
  VLM_CHECK(pw_extend(w, w->pixels, "/images/pixels", (hsize_t)(w->n_images + total[2])));
  const hsize_t S = (hsize_t)w->image_size;
  hsize_t ts[1] = {(hsize_t)t0}, tc[1] = {(hsize_t)mine[1]};
  hsize_t ss[1] = {(hsize_t)s0}, sc[1] = {(hsize_t)n};
  hsize_t ps[4] = {(hsize_t)i0, 0, 0, 0}, pc[4] = {(hsize_t)mine[2], S, S, 3};
  VLM_CHECK(pw_put(w, w->tokens, "/samples/tokens", H5T_NATIVE_INT32, 1, ts, tc, tokens));
  VLM_CHECK(pw_put(w, w->labels, "/samples/labels", H5T_NATIVE_INT32, 1, ts, tc, labels));
  VLM_CHECK(pw_put(w, w->offsets, "/samples/offsets", H5T_NATIVE_INT64, 1, ss, sc, offs));
  VLM_CHECK(
      pw_put(w, w->image_offsets, "/samples/image_offsets", H5T_NATIVE_INT64, 1, ss, sc, ioffs));
  VLM_CHECK(pw_put(w, w->pixels, "/images/pixels", H5T_NATIVE_UINT8, 4, ps, pc, pixels));
  w->n_samples += total[0];
  w->n_tokens += total[1];
  w->n_images += total[2];
  return 0;
}

int dataset_pwriter_append(dataset_pwriter *w, long n_samples, const int64_t *lengths,
                           const int32_t *n_images, const int32_t *tokens, const int32_t *labels,
                           const uint8_t *pixels) {
  int64_t *offs = malloc(((size_t)n_samples + 1) * sizeof *offs);
  int64_t *ioffs = malloc(((size_t)n_samples + 1) * sizeof *ioffs);
  int ok = n_samples >= 0 && offs && ioffs;
  if (!pw_all(w->comm, ok)) {
    free(offs);
    free(ioffs);
    if (!ok)
      VLM_FAIL("dataset %s: out of memory (or a negative count) appending %ld samples", w->tmp,
               n_samples);
    return -1;
  }
  ds_quiet q;
  ds_quiet_on(&q);
  int rc = pw_append_body(w, n_samples, lengths, n_images, tokens, labels, pixels, offs, ioffs);
  ds_quiet_off(&q);
  free(offs);
  free(ioffs);
  if (!pw_all(w->comm, rc == 0)) {
    if (rc) VLM_CHECK(rc);
    return -1;
  }
  return 0;
}

void dataset_pwriter_totals(const dataset_pwriter *w, long *n_samples, long *n_tokens,
                            long *n_images) {
  if (n_samples) *n_samples = (long)w->n_samples;
  if (n_tokens) *n_tokens = (long)w->n_tokens;
  if (n_images) *n_images = (long)w->n_images;
}

static int pw_commit_body(dataset_pwriter *w) {
  if (w->n_samples < 1)
    VLM_FAIL("dataset %s: no samples to write (a dataset needs at least one)", w->path);
  VLM_CHECK(pw_extend(w, w->offsets, "/samples/offsets", (hsize_t)(w->n_samples + 1)));
  VLM_CHECK(pw_extend(w, w->image_offsets, "/samples/image_offsets", (hsize_t)(w->n_samples + 1)));
  int64_t last_t = w->n_tokens, last_i = w->n_images;
  hsize_t at[1] = {(hsize_t)w->n_samples}, one[1] = {w->rank == 0 ? 1u : 0u};
  VLM_CHECK(pw_put(w, w->offsets, "/samples/offsets", H5T_NATIVE_INT64, 1, at, one, &last_t));
  VLM_CHECK(
      pw_put(w, w->image_offsets, "/samples/image_offsets", H5T_NATIVE_INT64, 1, at, one, &last_i));
  return 0;
}

int dataset_pwriter_commit(dataset_pwriter *w) {
  ds_quiet q;
  ds_quiet_on(&q);
  int rc = pw_commit_body(w);
  if (!pw_all(w->comm, rc == 0)) {
    ds_quiet_off(&q);
    dataset_pwriter_abort(w);
    if (rc) VLM_CHECK(rc);
    return -1;
  }
  char why[200] = "";
  ds_close_id(&w->tokens, H5Dclose);
  ds_close_id(&w->labels, H5Dclose);
  ds_close_id(&w->offsets, H5Dclose);
  ds_close_id(&w->image_offsets, H5Dclose);
  ds_close_id(&w->pixels, H5Dclose);
  ds_close_id(&w->dxpl, H5Pclose);
  herr_t st = H5Fclose(w->file);
  w->file = -1;
  if (st < 0) ds_h5_reason(why);
  ds_quiet_off(&q);
  int ok = st >= 0;
  if (!pw_all(w->comm, ok)) {
    if (w->rank == 0) unlink(w->tmp);
    char p[1024];
    snprintf(p, sizeof p, "%s", w->path);
    free(w);
    if (!ok) VLM_FAIL("dataset %s: closing the parallel file failed: %s", p, why);
    return -1;
  }
  /* rank 0 makes it durable and renames; the others wait for the outcome */
  int renamed = 0;
  if (w->rank == 0) {
    if (ds_fsync_path(w->tmp, 0) != 0)
      snprintf(why, sizeof why, "fsync of PATH.tmp failed: %s", strerror(errno));
    else if (rename(w->tmp, w->path) != 0)
      snprintf(why, sizeof why, "rename of PATH.tmp to PATH failed: %s", strerror(errno));
    else
      renamed = 1;
    if (!renamed) unlink(w->tmp);
    if (renamed) {
      char dir[1100];
      snprintf(dir, sizeof dir, "%s", w->path);
      char *slash = strrchr(dir, '/');
      if (slash == dir)
        dir[1] = '\0';
      else if (slash)
        *slash = '\0';
      else
        snprintf(dir, sizeof dir, ".");
      (void)ds_fsync_path(dir, 1);
    }
  }
  MPI_Bcast(&renamed, 1, MPI_INT, 0, w->comm);
  int rank = w->rank;
  char p[1024];
  snprintf(p, sizeof p, "%s", w->path);
  free(w);
  if (!renamed) {
    if (rank == 0) VLM_FAIL("dataset %s: %s", p, why);
    return -1;
  }
  return 0;
}

void dataset_pwriter_abort(dataset_pwriter *w) {
  if (!w) return;
  ds_quiet q;
  ds_quiet_on(&q);
  pw_close_all(w);
  ds_quiet_off(&q);
  MPI_Barrier(w->comm);
  if (w->rank == 0) unlink(w->tmp);
  free(w);
}
