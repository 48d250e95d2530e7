/* io/dataset_mpi.c: the parallel reader (dataset_open_mpi, dataset_read_samples):
 * checks once on rank 0, then independent or collective reads. */
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
 * Parallel reader (issue 4): dataset_open_mpi checks the file once, on rank 0,
 * and broadcasts what it found; dataset_read_samples in collective mode reads a
 * rank's samples with one collective H5Dread per data set, over the union of the
 * samples' rows, sorted and de-duplicated (HDF5 walks a union in file order),
 * then copies them out in the order asked for. Every step that can fail on some
 * ranks only is agreed on before the next collective call, so no rank hangs. */

#define AGREE_MSG_LEN 4096

/* Agrees on a step that may have failed on some ranks (rc == -1 there, reported
 * with VLM_FAIL). 0 when it succeeded everywhere; otherwise -1 on every rank and
 * every rank ends with the same error message, that of the lowest failing rank
 * (the ranks that have not reported exactly that message report it now). */
static int mpi_agree(MPI_Comm comm, int rc) {
  int rank, mine, first;
  MPI_Comm_rank(comm, &rank);
  mine = rc ? rank : INT_MAX;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm);
  if (first == INT_MAX) return 0;
  char msg[AGREE_MSG_LEN];
  if (rank == first) snprintf(msg, sizeof msg, "%s", vlm_last_error());
  MPI_Bcast(msg, (int)sizeof msg, MPI_CHAR, first, comm);
  if (rc == 0 || strcmp(msg, vlm_last_error()) != 0) VLM_FAIL("%s", msg);
  return -1;
}

/* Broadcasts n int64 values from rank 0, in pieces whose count fits an int. */
static void bcast_i64(int64_t *v, long n, MPI_Comm comm) {
  const long piece = 1L << 26;
  for (long k = 0; k < n; k += piece)
    MPI_Bcast(v + k, (int)(n - k < piece ? n - k : piece), MPI_INT64_T, 0, comm);
}

static const char *const coll_names[3] = {"/samples/tokens", "/samples/labels", "/images/pixels"};

/* Every rank: the file with the MPI-IO driver on d->comm, collective metadata reads. */
static int open_mpio(dataset *d) {
  char why[200] = "";
  hid_t f = -1, fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl >= 0 && H5Pset_fapl_mpio(fapl, d->comm, MPI_INFO_NULL) >= 0 &&
      H5Pset_all_coll_metadata_ops(fapl, 1) >= 0)
    f = H5Fopen(d->path, H5F_ACC_RDONLY, fapl);
  if (f < 0) ds_h5_reason(why);
  ds_close_id(&fapl, H5Pclose);
  if (f < 0)
    VLM_FAIL("dataset %s: rank %d cannot open it with the MPI-IO driver: %s", d->path, d->rank,
             why);
  d->file = f;
  return 0;
}

/* The three data sets (in collective mode each rank makes the same three calls). */
static int open_held_dsets(dataset *d) {
  char why[200] = "";
  const char *bad = NULL;
  for (int k = 0; k < 3; k++) {
    d->dsets[k] = H5Dopen2((hid_t)d->file, coll_names[k], H5P_DEFAULT);
    if (d->dsets[k] < 0 && !bad) {
      bad = coll_names[k];
      ds_h5_reason(why);
    }
  }
  if (bad) VLM_FAIL("dataset %s: rank %d cannot open %s: %s", d->path, d->rank, bad, why);
  return 0;
}

int dataset_open_mpi(dataset *d, const char *path, const monkey_config *c, MPI_Comm comm,
                     int collective) {
  MPI_Comm own;
  MPI_Comm_dup(comm, &own);
  int rank;
  MPI_Comm_rank(own, &rank);
  memset(d, 0, sizeof *d);
  d->file = -1;
  /* the checks, once: rank 0 opens the file as dataset_open does */
  int rc = rank == 0 ? dataset_open(d, path, c) : 0;
  if (rank == 0 && rc == 0 && collective) {
    ds_quiet q;
    ds_quiet_on(&q);
    H5Fclose((hid_t)d->file); /* reopened below with the MPI-IO driver */
    ds_quiet_off(&q);
    d->file = -1;
  }
  d->cfg = c;
  snprintf(d->path, sizeof d->path, "%s", path);
  d->mpi = 1;
  d->comm = own;
  d->rank = rank;
  d->collective = collective ? 1 : 0;
  for (int k = 0; k < 3; k++) d->dsets[k] = -1;
  if (mpi_agree(own, rc) != 0) goto fail;

  /* what rank 0 found, to everyone */
  long long hdr[6] = {d->n_samples, d->n_tokens,  d->n_images,
                      d->image_size, d->max_len, d->max_images};
  MPI_Bcast(hdr, 6, MPI_LONG_LONG, 0, own);
  if (rank != 0) {
    d->n_samples = (long)hdr[0];
    d->n_tokens = (long)hdr[1];
    d->n_images = (long)hdr[2];
    d->image_size = (int)hdr[3];
    d->max_len = (long)hdr[4];
    d->max_images = (long)hdr[5];
    size_t bytes = (size_t)(d->n_samples + 1) * sizeof(int64_t);
    d->offsets = vlm_alloc(bytes, "dataset offsets");
    d->image_offsets = vlm_alloc(bytes, "dataset image offsets");
    rc = d->offsets && d->image_offsets ? 0 : -1;
  }
  if (mpi_agree(own, rc) != 0) goto fail;
  bcast_i64(d->offsets, d->n_samples + 1, own);
  bcast_i64(d->image_offsets, d->n_samples + 1, own);

  /* every rank's own handle */
  ds_quiet q;
  ds_quiet_on(&q);
  char why[200] = "";
  if (collective) {
    rc = open_mpio(d);
  } else if (rank != 0) {
    d->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (d->file < 0) {
      ds_h5_reason(why);
      vlm_error_at(__FILE__, __LINE__, __func__, "dataset %s: rank %d cannot open it: %s", path,
                   rank, why);
      rc = -1;
    }
  }
  ds_quiet_off(&q);
  if (mpi_agree(own, rc) != 0) goto fail;
  /* the three data sets, held open for dataset_read_samples (collectively
   * opened in collective mode: every rank makes the same calls) */
  ds_quiet_on(&q);
  rc = open_held_dsets(d);
  ds_quiet_off(&q);
  if (mpi_agree(own, rc) != 0) goto fail;
  return 0;
fail:
  dataset_close(d);
  return -1;
}

static int cmp_long(const void *a, const void *b) {
  long x = *(const long *)a, y = *(const long *)b;
  return (x > y) - (x < y);
}

/* What one rank reads in one collective call: its distinct samples in file
 * order, where each one lands in the read buffers, and those buffers. */
typedef struct {
  long *uniq;            /* distinct sample indices, ascending */
  int nu;
  long *tok_at, *img_at; /* per uniq sample: first token / image in the read buffers */
  long n_tok, n_img;     /* totals over uniq */
  int direct;            /* idx strictly ascending: read straight into the caller's buffers */
  int32_t *tok, *lab;    /* read buffers (the caller's or the staging buffer) */
  uint8_t *px;
} coll_plan;

static void coll_plan_free(coll_plan *p) {
  free(p->uniq);
  free(p->tok_at);
  free(p->img_at);
  memset(p, 0, sizeof *p);
}

static int coll_plan_make(dataset *d, const long *idx, int n, int32_t *tokens, int32_t *labels,
                          uint8_t *pixels, coll_plan *p) {
  memset(p, 0, sizeof *p);
  if (n < 0) VLM_FAIL("dataset %s: dataset_read_samples of %d samples", d->path, n);
  for (int j = 0; j < n; j++)
    if (idx[j] < 0 || idx[j] >= d->n_samples)
      VLM_FAIL("dataset %s: sample %ld does not exist (the file has %ld samples)", d->path,
               idx[j], d->n_samples);
  if (n == 0) return 0;
  p->uniq = malloc((size_t)n * sizeof *p->uniq);
  p->tok_at = malloc((size_t)n * sizeof *p->tok_at);
  p->img_at = malloc((size_t)n * sizeof *p->img_at);
  if (!p->uniq || !p->tok_at || !p->img_at)
    VLM_FAIL("dataset %s: out of memory planning a read of %d samples", d->path, n);
  memcpy(p->uniq, idx, (size_t)n * sizeof *idx);
  p->direct = 1;
  for (int j = 1; j < n; j++)
    if (idx[j] <= idx[j - 1]) p->direct = 0;
  if (!p->direct) qsort(p->uniq, (size_t)n, sizeof *p->uniq, cmp_long);
  for (int j = 0; j < n; j++)
    if (p->nu == 0 || p->uniq[j] != p->uniq[p->nu - 1]) p->uniq[p->nu++] = p->uniq[j];
  for (int u = 0; u < p->nu; u++) {
    const long s = p->uniq[u];
    p->tok_at[u] = p->n_tok;
    p->img_at[u] = p->n_img;
    p->n_tok += (long)(d->offsets[s + 1] - d->offsets[s]);
    p->n_img += (long)(d->image_offsets[s + 1] - d->image_offsets[s]);
  }
  const size_t img_bytes = (size_t)d->image_size * d->image_size * 3;
  if (p->direct) {
    p->tok = tokens;
    p->lab = labels;
    p->px = pixels;
    return 0;
  }
  const size_t tok_bytes = ((size_t)p->n_tok * sizeof(int32_t) + 63) / 64 * 64;
  const size_t need = 2 * tok_bytes + (size_t)p->n_img * img_bytes;
  if (need > d->stage_bytes) {
    vlm_free(d->stage);
    d->stage_bytes = 0;
    d->stage = vlm_alloc(need, "dataset read staging buffer");
    if (!d->stage) VLM_FAIL("dataset %s: cannot hold a staging buffer of %zu bytes", d->path, need);
    d->stage_bytes = need;
  }
  p->tok = (int32_t *)d->stage;
  p->lab = (int32_t *)((char *)d->stage + tok_bytes);
  p->px = (uint8_t *)d->stage + 2 * tok_bytes;
  return 0;
}

/* Selects in fs (a data set whose first dimension is indexed by off[]) the rows
 * off[s] ..< off[s+1] of every sample s of uniq[0..nu), adjacent samples merged
 * into one block; *rows gets their number. HDF5 iterates the union in file
 * order, which is uniq's order. */
static int select_rows(hid_t fs, const int64_t *off, const long *uniq, int nu, long *rows) {
  hsize_t dims[4] = {0, 0, 0, 0}, start[4] = {0, 0, 0, 0}, count[4];
  const int rank = H5Sget_simple_extent_dims(fs, dims, NULL);
  if (rank < 1 || rank > 4 || H5Sselect_none(fs) < 0) return -1;
  for (int r = 1; r < rank; r++) count[r] = dims[r];
  int first = 1;
  *rows = 0;
  for (int a = 0; a < nu;) {
    int b = a;
    while (b + 1 < nu && uniq[b + 1] == uniq[b] + 1) b++;
    const hsize_t r0 = (hsize_t)off[uniq[a]], r1 = (hsize_t)off[uniq[b] + 1];
    if (r1 > r0) {
      start[0] = r0;
      count[0] = r1 - r0;
      if (H5Sselect_hyperslab(fs, first ? H5S_SELECT_SET : H5S_SELECT_OR, start, NULL, count,
                              NULL) < 0)
        return -1;
      first = 0;
      *rows += (long)(r1 - r0);
    }
    a = b + 1;
  }
  return 0;
}

/* One collective H5Dread of data set k (0 tokens, 1 labels, 2 pixels) into buf.
 * With active = 0 (nothing to read, or a local failure) the rank takes part with
 * an empty selection. */
static int coll_read_one(dataset *d, int k, const coll_plan *p, int active, void *buf) {
  static const char dummy[8];
  const hid_t memtype = k == 2 ? H5T_NATIVE_UINT8 : H5T_NATIVE_INT32;
  const int64_t *off = k == 2 ? d->image_offsets : d->offsets;
  const hsize_t row = k == 2 ? (hsize_t)d->image_size * d->image_size * 3 : 1;
  char why[200] = "";
  const char *what = "setup";
  long rows = 0;
  herr_t st = -1;
  hid_t fs = H5Dget_space((hid_t)d->dsets[k]), ms = -1, dxpl = H5Pcreate(H5P_DATASET_XFER);
  int sel_ok = fs >= 0 && active && select_rows(fs, off, p->uniq, p->nu, &rows) == 0;
  if (fs >= 0 && active && !sel_ok) {
    ds_h5_reason(why);
    what = "selection";
  }
  /* a mismatch would make H5Dread fail here before its collective part, and the
   * other ranks wait for ever: take part with nothing instead, and report it */
  if (sel_ok && H5Sget_select_npoints(fs) != (hssize_t)((hsize_t)rows * row)) {
    snprintf(why, sizeof why, "the selection holds %lld elements, expected %llu",
             (long long)H5Sget_select_npoints(fs), (unsigned long long)((hsize_t)rows * row));
    what = "selection";
    sel_ok = 0;
  }
  const long asked = rows;
  if (!sel_ok) rows = 0;
  hsize_t elems = rows > 0 ? (hsize_t)rows * row : 1;
  ms = H5Screate_simple(1, &elems, NULL);
  if (fs >= 0 && ms >= 0 && dxpl >= 0 && H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE) >= 0) {
    if (rows == 0) {
      H5Sselect_none(fs);
      H5Sselect_none(ms);
    }
    st = H5Dread((hid_t)d->dsets[k], memtype, ms, fs, dxpl, rows > 0 ? buf : (void *)dummy);
    if (st < 0) {
      ds_h5_reason(why);
      what = "read";
    } else {
      H5D_mpio_actual_io_mode_t mode = H5D_MPIO_NO_COLLECTIVE;
      if (H5Pget_mpio_actual_io_mode(dxpl, &mode) < 0) mode = H5D_MPIO_NO_COLLECTIVE;
      d->last_io_mode[k] = (int)mode;
      d->n_coll_reads++;
      if (mode != H5D_MPIO_NO_COLLECTIVE) d->n_coll_done++;
    }
  } else {
    ds_h5_reason(why);
  }
  ds_close_id(&dxpl, H5Pclose);
  ds_close_id(&ms, H5Sclose);
  ds_close_id(&fs, H5Sclose);
  if (st < 0 || (active && !sel_ok))
    VLM_FAIL("dataset %s: %s: collective read of %ld rows of %d samples failed (%s): %s",
             d->path, coll_names[k], asked, p->nu, what, why);
  return 0;
}

/* After the reads: checks each distinct sample, then copies them out in idx's
 * order (unless they were read in place). */
static int coll_finish(dataset *d, const long *idx, int n, const coll_plan *p, int32_t *tokens,
                       int32_t *labels, int *len, uint8_t *pixels, int *n_img) {
  const size_t img_bytes = (size_t)d->image_size * d->image_size * 3;
  for (int u = 0; u < p->nu; u++) {
    const long s = p->uniq[u];
    const long nt = (long)(d->offsets[s + 1] - d->offsets[s]);
    const long ni = (long)(d->image_offsets[s + 1] - d->image_offsets[s]);
    VLM_CHECK(ds_validate_sample(d, s, p->tok + p->tok_at[u], p->lab + p->tok_at[u], nt, ni));
  }
  long t = 0, im = 0;
  for (int j = 0; j < n; j++) {
    const long s = idx[j];
    const long nt = (long)(d->offsets[s + 1] - d->offsets[s]);
    const long ni = (long)(d->image_offsets[s + 1] - d->image_offsets[s]);
    if (!p->direct) {
      const long *hit = bsearch(&idx[j], p->uniq, (size_t)p->nu, sizeof *p->uniq, cmp_long);
      const long u = hit - p->uniq;
      memcpy(tokens + t, p->tok + p->tok_at[u], (size_t)nt * sizeof(int32_t));
      memcpy(labels + t, p->lab + p->tok_at[u], (size_t)nt * sizeof(int32_t));
      memcpy(pixels + (size_t)im * img_bytes, p->px + (size_t)p->img_at[u] * img_bytes,
             (size_t)ni * img_bytes);
    }
    len[j] = (int)nt;
    n_img[j] = (int)ni;
    t += nt;
    im += ni;
  }
  return 0;
}

static int read_samples_collective(dataset *d, const long *idx, int n, int32_t *tokens,
                                   int32_t *labels, int *len, uint8_t *pixels, int *n_img) {
  coll_plan p;
  int rc = coll_plan_make(d, idx, n, tokens, labels, pixels, &p);
  /* the three collective reads happen on every rank, whatever happened above */
  ds_quiet q;
  ds_quiet_on(&q);
  void *bufs[3] = {p.tok, p.lab, p.px};
  for (int k = 0; k < 3; k++) {
    int r = coll_read_one(d, k, &p, rc == 0, bufs[k]);
    if (rc == 0) rc = r;
  }
  ds_quiet_off(&q);
  if (rc == 0) rc = coll_finish(d, idx, n, &p, tokens, labels, len, pixels, n_img);
  coll_plan_free(&p);
  return mpi_agree(d->comm, rc);
}

/* Independent mode: rows r0 ..< r0 + nrows of held data set k into buf, one
 * regular hyperslab, HDF5's default (independent) transfer. */
static int read_held_rows(dataset *d, int k, long sample, hsize_t r0, hsize_t nrows, void *buf) {
  if (nrows == 0) return 0;
  const hsize_t S = (hsize_t)d->image_size;
  hsize_t start[4] = {r0, 0, 0, 0}, count[4] = {nrows, S, S, 3};
  hsize_t elems = k == 2 ? nrows * S * S * 3 : nrows;
  char why[200] = "";
  herr_t st = -1;
  hid_t ms = -1, fs = H5Dget_space((hid_t)d->dsets[k]);
  if (fs >= 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) >= 0 &&
      (ms = H5Screate_simple(1, &elems, NULL)) >= 0)
    st = H5Dread((hid_t)d->dsets[k], k == 2 ? H5T_NATIVE_UINT8 : H5T_NATIVE_INT32, ms, fs,
                 H5P_DEFAULT, buf);
  if (st < 0) ds_h5_reason(why);
  ds_close_id(&ms, H5Sclose);
  ds_close_id(&fs, H5Sclose);
  if (st < 0)
    VLM_FAIL("dataset %s: %s: cannot read sample %ld (elements from %llu, %llu of them): %s",
             d->path, coll_names[k], sample, (unsigned long long)r0, (unsigned long long)nrows,
             why);
  return 0;
}

/* Independent mode of dataset_open_mpi: dataset_read_sample's reads and checks,
 * on the data sets held open (no open and close of each per sample). */
static int read_samples_held(dataset *d, const long *idx, int n, int32_t *tokens, int32_t *labels,
                             int *len, uint8_t *pixels, int *n_img) {
  const size_t img_bytes = (size_t)d->image_size * d->image_size * 3;
  long t = 0, im = 0;
  for (int j = 0; j < n; j++) {
    const long i = idx[j];
    if (i < 0 || i >= d->n_samples)
      VLM_FAIL("dataset %s: sample %ld does not exist (the file has %ld samples)", d->path, i,
               d->n_samples);
    const hsize_t t0 = (hsize_t)d->offsets[i], nt = (hsize_t)(d->offsets[i + 1] - d->offsets[i]);
    const hsize_t i0 = (hsize_t)d->image_offsets[i];
    const hsize_t ni = (hsize_t)(d->image_offsets[i + 1] - d->image_offsets[i]);
    uint8_t *px = pixels + (size_t)im * img_bytes;
    ds_quiet q;
    ds_quiet_on(&q);
    int rc = read_held_rows(d, 0, i, t0, nt, tokens + t);
    if (rc == 0) rc = read_held_rows(d, 1, i, t0, nt, labels + t);
    if (rc == 0) rc = read_held_rows(d, 2, i, i0, ni, px);
    ds_quiet_off(&q);
    VLM_CHECK(rc);
    VLM_CHECK(ds_validate_sample(d, i, tokens + t, labels + t, (long)nt, (long)ni));
    len[j] = (int)nt;
    n_img[j] = (int)ni;
    t += (long)nt;
    im += (long)ni;
  }
  return 0;
}

int dataset_read_samples(dataset *d, const long *idx, int n, int32_t *tokens, int32_t *labels,
                         int *len, uint8_t *pixels, int *n_img) {
  if (d->collective)
    return read_samples_collective(d, idx, n, tokens, labels, len, pixels, n_img);
  if (n < 0) VLM_FAIL("dataset %s: dataset_read_samples of %d samples", d->path, n);
  if (d->mpi && d->file > 0)
    return read_samples_held(d, idx, n, tokens, labels, len, pixels, n_img);
  /* a dataset from dataset_open: sample by sample */
  const size_t img_bytes = (size_t)d->image_size * d->image_size * 3;
  long t = 0, im = 0;
  for (int j = 0; j < n; j++) {
    VLM_CHECK(dataset_read_sample(d, idx[j], tokens + t, labels + t, &len[j],
                                  pixels + (size_t)im * img_bytes, &n_img[j]));
    t += len[j];
    im += n_img[j];
  }
  return 0;
}
