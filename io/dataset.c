/* io/dataset.c: the vlmtrain dataset, format v1 in HDF5 (io/dataset.h,
 * docs/formats.md): a strict reader that checks the file against the model
 * config and names the file, dataset path, sample and token position of anything
 * wrong; an atomic serial writer (PATH.tmp, fsync, rename); and the learnable
 * synthetic image-question-answer dataset; the parallel appending writer of
 * `mkdata --json`; and the parallel reader (dataset_open_mpi, checks once on rank
 * 0, then independent per-sample reads or one collective H5Dread per data set
 * and micro-batch; benchmarks/README-dataload.md). It does not tokenize text or
 * decode images: files hold token ids and resized RGB pixels. */
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

#define FORMAT_NAME "vlmtrain-dataset"
#define FORMAT_VERSION 1
#define LABEL_IGNORE (-100)

/* ------------------------------------------------------------------------------
 * HDF5 helpers: silence HDF5's own stack printing while we report errors our
 * way, and fetch the innermost HDF5 reason for a failed call. */

typedef struct {
  H5E_auto2_t fn;
  void *data;
} h5_quiet;

static void h5_quiet_on(h5_quiet *q) {
  H5Eget_auto2(H5E_DEFAULT, &q->fn, &q->data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static void h5_quiet_off(const h5_quiet *q) { H5Eset_auto2(H5E_DEFAULT, q->fn, q->data); }

static herr_t h5_reason_cb(unsigned n, const H5E_error2_t *e, void *data) {
  if (n == 0 && e->desc) snprintf((char *)data, 200, "%s", e->desc);
  return 0;
}

/* The innermost message of the current HDF5 error stack; call it right after the
 * failing call (every HDF5 API call clears the stack). buf holds 200 bytes. */
static const char *h5_reason(char *buf) {
  buf[0] = '\0';
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, h5_reason_cb, buf);
  if (!buf[0]) snprintf(buf, 200, "no detail from HDF5");
  return buf;
}

static void h5_close_id(hid_t *id, herr_t (*close_fn)(hid_t)) {
  if (*id >= 0) close_fn(*id);
  *id = -1;
}

/* "int32", "uint8", "float64", "string", ...: what a reader found. */
static void type_desc(hid_t t, char *buf, size_t n) {
  H5T_class_t c = H5Tget_class(t);
  size_t bits = H5Tget_size(t) * 8;
  if (c == H5T_INTEGER)
    snprintf(buf, n, "%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", bits);
  else if (c == H5T_FLOAT)
    snprintf(buf, n, "float%zu", bits);
  else if (c == H5T_STRING)
    snprintf(buf, n, "string");
  else if (c == H5T_ENUM)
    snprintf(buf, n, "enum (e.g. bool)");
  else
    snprintf(buf, n, "HDF5 type class %d", (int)c);
}

static void dims_desc(int rank, const hsize_t *d, char *buf, size_t n) {
  size_t k = (size_t)snprintf(buf, n, "[");
  for (int r = 0; r < rank && k < n; r++)
    k += (size_t)snprintf(buf + k, n - k, "%s%llu", r ? ", " : "", (unsigned long long)d[r]);
  if (k < n) snprintf(buf + k, n - k, "]");
}

/* ------------------------------------------------------------------------------
 * Reader: attributes and datasets, each checked with a message that names the
 * file, the object and what was expected and found. */

static int attr_open(const char *fname, hid_t file, const char *name, hid_t *attr) {
  htri_t ex = H5Aexists(file, name);
  if (ex <= 0)
    VLM_FAIL(
        "dataset %s: root attribute '%s' is missing (format v1 needs format = \"%s\", "
        "version = %d, image_size)",
        fname, name, FORMAT_NAME, FORMAT_VERSION);
  char why[200];
  *attr = H5Aopen(file, name, H5P_DEFAULT);
  if (*attr < 0)
    VLM_FAIL("dataset %s: cannot open root attribute '%s': %s", fname, name, h5_reason(why));
  hid_t sp = H5Aget_space(*attr);
  hssize_t npts = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
  if (sp >= 0) H5Sclose(sp);
  if (npts != 1) {
    H5Aclose(*attr);
    VLM_FAIL("dataset %s: root attribute '%s' must hold one value, found %lld", fname, name,
             (long long)npts);
  }
  return 0;
}

/* Reads a string attribute (variable-length, as h5py writes str, or fixed-length). */
static int attr_read_string(const char *fname, hid_t file, const char *name, char *out, size_t n) {
  hid_t a;
  VLM_CHECK(attr_open(fname, file, name, &a));
  hid_t ft = H5Aget_type(a);
  char found[64], why[200];
  if (ft < 0 || H5Tget_class(ft) != H5T_STRING) {
    if (ft >= 0)
      type_desc(ft, found, sizeof found);
    else
      snprintf(found, sizeof found, "?");
    if (ft >= 0) H5Tclose(ft);
    H5Aclose(a);
    VLM_FAIL("dataset %s: root attribute '%s': expected a string, found %s", fname, name, found);
  }
  int rc = 0;
  out[0] = '\0';
  if (H5Tis_variable_str(ft) > 0) {
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5Tset_size(mt, H5T_VARIABLE);
    H5Tset_cset(mt, H5Tget_cset(ft));
    char *s = NULL;
    if (H5Aread(a, mt, &s) < 0) {
      h5_reason(why);
      rc = -1;
    } else {
      snprintf(out, n, "%s", s ? s : "");
      H5free_memory(s);
    }
    H5Tclose(mt);
  } else {
    size_t sz = H5Tget_size(ft);
    char *buf = calloc(sz + 1, 1);
    if (!buf || H5Aread(a, ft, buf) < 0) {
      snprintf(why, sizeof why, "%s", buf ? "read failed" : "out of memory");
      rc = -1;
    } else {
      size_t len = strnlen(buf, sz);
      while (len > 0 && buf[len - 1] == ' ') len--; /* space-padded strings */
      snprintf(out, n, "%.*s", (int)len, buf);
    }
    free(buf);
  }
  H5Tclose(ft);
  H5Aclose(a);
  if (rc) VLM_FAIL("dataset %s: cannot read root attribute '%s': %s", fname, name, why);
  return 0;
}

static int attr_read_int(const char *fname, hid_t file, const char *name, long long *v) {
  hid_t a;
  VLM_CHECK(attr_open(fname, file, name, &a));
  hid_t ft = H5Aget_type(a);
  char found[64], why[200];
  if (ft < 0 || H5Tget_class(ft) != H5T_INTEGER) {
    if (ft >= 0)
      type_desc(ft, found, sizeof found);
    else
      snprintf(found, sizeof found, "?");
    if (ft >= 0) H5Tclose(ft);
    H5Aclose(a);
    VLM_FAIL("dataset %s: root attribute '%s': expected an integer, found %s", fname, name, found);
  }
  H5Tclose(ft);
  herr_t st = H5Aread(a, H5T_NATIVE_LLONG, v);
  if (st < 0) h5_reason(why);
  H5Aclose(a);
  if (st < 0) VLM_FAIL("dataset %s: cannot read root attribute '%s': %s", fname, name, why);
  return 0;
}

/* Opens dataset `name` and checks that it is an integer of `bytes` bytes with the
 * given signedness and `rank` dimensions; returns its dims. The dataset is closed. */
static int dset_check(const char *fname, hid_t file, const char *name, int is_signed, size_t bytes,
                      int rank, hsize_t *dims) {
  const char *expect_t = is_signed ? (bytes == 4 ? "int32" : "int64") : "uint8";
  /* each group on the way must exist before H5Lexists can be asked about the link */
  char part[256];
  for (const char *s = strchr(name + 1, '/');; s = strchr(s + 1, '/')) {
    size_t len = s ? (size_t)(s - name) : strlen(name);
    snprintf(part, sizeof part, "%.*s", (int)len, name);
    if (H5Lexists(file, part, H5P_DEFAULT) <= 0)
      VLM_FAIL("dataset %s: %s is missing (expected %s, rank %d)", fname, s ? part : name, expect_t,
               rank);
    if (!s) break;
  }
  char why[200], found[64];
  hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
  if (ds < 0) VLM_FAIL("dataset %s: %s is not a readable dataset: %s", fname, name, h5_reason(why));
  hid_t ft = H5Dget_type(ds), sp = H5Dget_space(ds);
  int ok_type = ft >= 0 && H5Tget_class(ft) == H5T_INTEGER && H5Tget_size(ft) == bytes &&
                (H5Tget_sign(ft) == H5T_SGN_2) == (is_signed != 0);
  if (ft >= 0)
    type_desc(ft, found, sizeof found);
  else
    snprintf(found, sizeof found, "?");
  int found_rank = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
  if (ok_type && found_rank == rank) H5Sget_simple_extent_dims(sp, dims, NULL);
  if (ft >= 0) H5Tclose(ft);
  if (sp >= 0) H5Sclose(sp);
  H5Dclose(ds);
  if (!ok_type)
    VLM_FAIL("dataset %s: %s: expected element type %s, found %s", fname, name, expect_t, found);
  if (found_rank != rank)
    VLM_FAIL("dataset %s: %s: expected rank %d, found rank %d", fname, name, rank, found_rank);
  return 0;
}

/* Reads the hyperslab start[rank], count[rank] of dataset `name` into buf. */
static int read_slab(const char *fname, hid_t file, const char *name, hid_t memtype, int rank,
                     const hsize_t *start, const hsize_t *count, void *buf) {
  hsize_t total = 1;
  for (int r = 0; r < rank; r++) total *= count[r];
  if (total == 0) return 0;
  char why[200] = "";
  herr_t st = -1;
  hid_t fs = -1, ms = -1;
  hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
  if (ds < 0) {
    h5_reason(why);
    goto done;
  }
  fs = H5Dget_space(ds);
  if (fs < 0 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0) {
    h5_reason(why);
    goto done;
  }
  ms = H5Screate_simple(rank, count, NULL);
  if (ms < 0) {
    h5_reason(why);
    goto done;
  }
  st = H5Dread(ds, memtype, ms, fs, H5P_DEFAULT, buf);
  if (st < 0) h5_reason(why);
done:
  h5_close_id(&ms, H5Sclose);
  h5_close_id(&fs, H5Sclose);
  h5_close_id(&ds, H5Dclose);
  if (st < 0)
    VLM_FAIL("dataset %s: %s: cannot read elements from %llu (%llu of them): %s", fname, name,
             (unsigned long long)start[0], (unsigned long long)count[0], why);
  return 0;
}

/* offsets-like array: o[0] == 0, non-decreasing, o[n] == end. */
static int check_offsets(const char *fname, const char *name, const int64_t *o, long n, long end,
                         const char *end_what) {
  if (o[0] != 0) VLM_FAIL("dataset %s: %s[0] must be 0, found %lld", fname, name, (long long)o[0]);
  for (long i = 0; i < n; i++)
    if (o[i + 1] < o[i])
      VLM_FAIL(
          "dataset %s: %s must be non-decreasing, but %s[%ld] = %lld > %s[%ld] = %lld (sample "
          "%ld)",
          fname, name, name, i, (long long)o[i], name, i + 1, (long long)o[i + 1], i);
  if (o[n] != end)
    VLM_FAIL("dataset %s: %s[%ld] (the last) must equal %s = %ld, found %lld", fname, name, n,
             end_what, end, (long long)o[n]);
  return 0;
}

static int open_body(dataset *d, const char *path, const monkey_config *c) {
  char why[200];
  if (access(path, R_OK) != 0) VLM_FAIL("dataset %s: cannot open: %s", path, strerror(errno));
  if (H5Fis_hdf5(path) <= 0) VLM_FAIL("dataset %s: not an HDF5 file", path);
  d->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (d->file < 0) VLM_FAIL("dataset %s: cannot open as HDF5: %s", path, h5_reason(why));
  hid_t f = (hid_t)d->file;

  char fmt[128];
  VLM_CHECK(attr_read_string(path, f, "format", fmt, sizeof fmt));
  if (strcmp(fmt, FORMAT_NAME) != 0)
    VLM_FAIL("dataset %s: root attribute 'format': expected \"%s\", found \"%s\"", path,
             FORMAT_NAME, fmt);
  long long version, size;
  VLM_CHECK(attr_read_int(path, f, "version", &version));
  if (version != FORMAT_VERSION)
    VLM_FAIL(
        "dataset %s: root attribute 'version': this vlmtrain reads format version %d, found "
        "version %lld",
        path, FORMAT_VERSION, version);
  VLM_CHECK(attr_read_int(path, f, "image_size", &size));
  if (size != c->visual.image_size)
    VLM_FAIL(
        "dataset %s: root attribute 'image_size' is %lld, but the model config's "
        "visual.image_size is %d (images must be stored resized to the model's size)",
        path, size, c->visual.image_size);
  d->image_size = (int)size;

  hsize_t dt[1], dl[1], dof[1], dio[1], dp[4];
  VLM_CHECK(dset_check(path, f, "/samples/tokens", 1, 4, 1, dt));
  VLM_CHECK(dset_check(path, f, "/samples/labels", 1, 4, 1, dl));
  if (dl[0] != dt[0])
    VLM_FAIL(
        "dataset %s: /samples/labels has %llu elements, expected %llu (the length of "
        "/samples/tokens)",
        path, (unsigned long long)dl[0], (unsigned long long)dt[0]);
  VLM_CHECK(dset_check(path, f, "/samples/offsets", 1, 8, 1, dof));
  if (dof[0] < 2)
    VLM_FAIL(
        "dataset %s: /samples/offsets has %llu elements, expected n_samples + 1 >= 2 (a "
        "dataset needs at least one sample)",
        path, (unsigned long long)dof[0]);
  VLM_CHECK(dset_check(path, f, "/samples/image_offsets", 1, 8, 1, dio));
  if (dio[0] != dof[0])
    VLM_FAIL(
        "dataset %s: /samples/image_offsets has %llu elements, expected n_samples + 1 = %llu "
        "(the length of /samples/offsets)",
        path, (unsigned long long)dio[0], (unsigned long long)dof[0]);
  VLM_CHECK(dset_check(path, f, "/images/pixels", 0, 1, 4, dp));
  hsize_t S = (hsize_t)d->image_size;
  if (dp[1] != S || dp[2] != S || dp[3] != 3) {
    char found[96];
    dims_desc(4, dp, found, sizeof found);
    VLM_FAIL(
        "dataset %s: /images/pixels: expected shape [n_images, %d, %d, 3] (RGB at "
        "image_size), found %s",
        path, d->image_size, d->image_size, found);
  }
  if (dt[0] > (hsize_t)LONG_MAX || dp[0] > (hsize_t)LONG_MAX || dof[0] > (hsize_t)LONG_MAX / 8)
    VLM_FAIL("dataset %s: too large for this build", path);
  d->n_tokens = (long)dt[0];
  d->n_images = (long)dp[0];
  d->n_samples = (long)dof[0] - 1;

  size_t bytes = (size_t)(d->n_samples + 1) * sizeof(int64_t);
  d->offsets = vlm_alloc(bytes, "dataset offsets");
  d->image_offsets = vlm_alloc(bytes, "dataset image offsets");
  if (!d->offsets || !d->image_offsets) VLM_FAIL("dataset %s: cannot hold the offsets", path);
  hsize_t zero[1] = {0};
  VLM_CHECK(read_slab(path, f, "/samples/offsets", H5T_NATIVE_INT64, 1, zero, dof, d->offsets));
  VLM_CHECK(read_slab(path, f, "/samples/image_offsets", H5T_NATIVE_INT64, 1, zero, dio,
                      d->image_offsets));
  VLM_CHECK(check_offsets(path, "/samples/offsets", d->offsets, d->n_samples, d->n_tokens,
                          "n_tokens (the length of /samples/tokens)"));
  VLM_CHECK(check_offsets(path, "/samples/image_offsets", d->image_offsets, d->n_samples,
                          d->n_images, "n_images (the first dimension of /images/pixels)"));
  d->max_len = 0;
  d->max_images = 0;
  for (long i = 0; i < d->n_samples; i++) {
    long len = (long)(d->offsets[i + 1] - d->offsets[i]);
    long ni = (long)(d->image_offsets[i + 1] - d->image_offsets[i]);
    if (len > d->max_len) d->max_len = len;
    if (ni > d->max_images) d->max_images = ni;
  }
  if (d->max_len > INT_MAX)
    VLM_FAIL("dataset %s: a sample has %ld tokens, too many", path, d->max_len);
  if (d->max_len > c->seq_length)
    vlm_warn(
        "dataset %s: its longest sample has %ld tokens, more than the config's seq_length %d\n",
        path, d->max_len, c->seq_length);
  return 0;
}

int dataset_open(dataset *d, const char *path, const monkey_config *c) {
  memset(d, 0, sizeof *d);
  d->file = -1;
  d->cfg = c;
  if (strlen(path) >= sizeof d->path)
    VLM_FAIL("dataset path too long (%zu characters): %s", strlen(path), path);
  snprintf(d->path, sizeof d->path, "%s", path);
  h5_quiet q;
  h5_quiet_on(&q);
  VLM_CHECK_GOTO(open_body(d, path, c), fail);
  h5_quiet_off(&q);
  return 0;
fail:
  dataset_close(d);
  h5_quiet_off(&q);
  return -1;
}

void dataset_close(dataset *d) {
  h5_quiet q;
  h5_quiet_on(&q);
  if (d->mpi) /* dataset_open_mpi's data sets (collective mode: closed on every rank) */
    for (int k = 0; k < 3; k++) {
      if (d->dsets[k] >= 0) H5Dclose((hid_t)d->dsets[k]);
      d->dsets[k] = -1;
    }
  if (d->file > 0) H5Fclose((hid_t)d->file);
  h5_quiet_off(&q);
  d->file = -1;
  vlm_free(d->offsets);
  vlm_free(d->image_offsets);
  d->offsets = d->image_offsets = NULL;
  vlm_free(d->stage);
  d->stage = NULL;
  d->stage_bytes = 0;
  if (d->mpi) MPI_Comm_free(&d->comm);
  d->mpi = d->collective = 0;
}

/* The per-sample rules: ids in the vocabulary, labels in it or -100, and each
 * <img> followed by exactly img_slots tokens and </img>, one per image. */
static int validate_sample(const dataset *d, long i, const int32_t *tok, const int32_t *lab,
                           long len, long n_img) {
  const monkey_config *c = d->cfg;
  const int vocab = c->vocab_size, open_id = c->visual.image_start_id, close_id = c->img_end_id;
  const long slots = c->visual.img_slots;
  long images = 0, expect_close = -1;
  for (long p = 0; p < len; p++) {
    int32_t t = tok[p], l = lab[p];
    if (t < 0 || t >= vocab)
      VLM_FAIL(
          "dataset %s: sample %ld, token position %ld: token id %d is outside the vocabulary "
          "[0, %d)",
          d->path, i, p, (int)t, vocab);
    if (l != LABEL_IGNORE && (l < 0 || l >= vocab))
      VLM_FAIL(
          "dataset %s: sample %ld, token position %ld: label %d is neither -100 nor inside the "
          "vocabulary [0, %d)",
          d->path, i, p, (int)l, vocab);
    if (t == open_id) {
      long q = p + 1;
      while (q < len && tok[q] != open_id && tok[q] != close_id) q++;
      if (q >= len)
        VLM_FAIL(
            "dataset %s: sample %ld, token position %ld: <img> (id %d) has no closing </img> "
            "(id %d)",
            d->path, i, p, open_id, close_id);
      if (tok[q] == open_id)
        VLM_FAIL(
            "dataset %s: sample %ld, token position %ld: <img> is followed by another <img> "
            "at position %ld before its </img>",
            d->path, i, p, q);
      if (q - p - 1 != slots)
        VLM_FAIL(
            "dataset %s: sample %ld, token position %ld: <img> is followed by %ld slot tokens "
            "before </img> at position %ld, expected img_slots = %ld ((n_windows + 1) x "
            "n_queries)",
            d->path, i, p, q - p - 1, q, slots);
      expect_close = q;
      images++;
    } else if (t == close_id && p != expect_close) {
      VLM_FAIL(
          "dataset %s: sample %ld, token position %ld: </img> (id %d) without an opening <img>",
          d->path, i, p, close_id);
    }
  }
  if (images != n_img)
    VLM_FAIL(
        "dataset %s: sample %ld has %ld <img> tokens but %ld images (image_offsets[%ld] - "
        "image_offsets[%ld])",
        d->path, i, images, n_img, i + 1, i);
  return 0;
}

int dataset_read_sample(dataset *d, long i, int32_t *tokens, int32_t *labels, int *len,
                        uint8_t *pixels, int *n_img) {
  if (d->file <= 0)
    VLM_FAIL("dataset %s: read of sample %ld from a dataset that is not open", d->path, i);
  if (d->collective)
    VLM_FAIL(
        "dataset %s: read of sample %ld: the dataset was opened for collective reads "
        "(dataset_open_mpi with collective = 1); read it with dataset_read_samples on every rank",
        d->path, i);
  if (i < 0 || i >= d->n_samples)
    VLM_FAIL("dataset %s: sample %ld does not exist (the file has %ld samples)", d->path, i,
             d->n_samples);
  hid_t f = (hid_t)d->file;
  hsize_t t0[1] = {(hsize_t)d->offsets[i]}, tn[1] = {(hsize_t)(d->offsets[i + 1] - d->offsets[i])};
  const hsize_t S = (hsize_t)d->image_size;
  hsize_t p0[4] = {(hsize_t)d->image_offsets[i], 0, 0, 0};
  hsize_t pn[4] = {(hsize_t)(d->image_offsets[i + 1] - d->image_offsets[i]), S, S, 3};
  h5_quiet q;
  h5_quiet_on(&q);
  VLM_CHECK_GOTO(read_slab(d->path, f, "/samples/tokens", H5T_NATIVE_INT32, 1, t0, tn, tokens),
                 fail);
  VLM_CHECK_GOTO(read_slab(d->path, f, "/samples/labels", H5T_NATIVE_INT32, 1, t0, tn, labels),
                 fail);
  VLM_CHECK_GOTO(read_slab(d->path, f, "/images/pixels", H5T_NATIVE_UINT8, 4, p0, pn, pixels),
                 fail);
  h5_quiet_off(&q);
  *len = (int)tn[0];
  *n_img = (int)pn[0];
  VLM_CHECK(validate_sample(d, i, tokens, labels, (long)tn[0], (long)pn[0]));
  return 0;
fail:
  h5_quiet_off(&q);
  return -1;
}

/* ------------------------------------------------------------------------------
 * Writer: creates PATH.tmp with every dataset at its full size, takes the data in
 * one or more hyperslabs, then closes, fsyncs and renames it to PATH. A failure
 * removes PATH.tmp; PATH is never a half-written file. */

typedef struct {
  char tmp[1100];
  hid_t file, tokens, labels, offsets, image_offsets, pixels;
} dwriter;

static int write_attr(const char *tmp, hid_t file, const char *name, hid_t type, const void *v) {
  char why[200] = "";
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = sp >= 0 ? H5Acreate2(file, name, type, sp, H5P_DEFAULT, H5P_DEFAULT) : -1;
  herr_t st = a >= 0 ? H5Awrite(a, type, v) : -1;
  if (st < 0) h5_reason(why);
  h5_close_id(&a, H5Aclose);
  h5_close_id(&sp, H5Sclose);
  if (st < 0) VLM_FAIL("dataset %s: cannot write root attribute '%s': %s", tmp, name, why);
  return 0;
}

static int create_dset(const char *tmp, hid_t file, const char *name, hid_t type, int rank,
                       const hsize_t *dims, hid_t *out) {
  char why[200] = "";
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  hid_t sp = H5Screate_simple(rank, dims, NULL);
  *out = -1;
  if (dcpl >= 0 && sp >= 0 && H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) >= 0 &&
      H5Pset_obj_track_times(dcpl, 0) >= 0) /* no timestamps: same data, same bytes */
    *out = H5Dcreate2(file, name, type, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  if (*out < 0) h5_reason(why);
  h5_close_id(&sp, H5Sclose);
  h5_close_id(&dcpl, H5Pclose);
  if (*out < 0) VLM_FAIL("dataset %s: cannot create %s: %s", tmp, name, why);
  return 0;
}

static int create_group(const char *tmp, hid_t file, const char *name) {
  char why[200] = "";
  hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
  hid_t g = -1;
  if (gcpl >= 0 && H5Pset_obj_track_times(gcpl, 0) >= 0)
    g = H5Gcreate2(file, name, H5P_DEFAULT, gcpl, H5P_DEFAULT);
  if (g < 0) h5_reason(why);
  h5_close_id(&g, H5Gclose);
  h5_close_id(&gcpl, H5Pclose);
  if (why[0]) VLM_FAIL("dataset %s: cannot create group %s: %s", tmp, name, why);
  return 0;
}

static void dwriter_abort(dwriter *w) {
  h5_close_id(&w->tokens, H5Dclose);
  h5_close_id(&w->labels, H5Dclose);
  h5_close_id(&w->offsets, H5Dclose);
  h5_close_id(&w->image_offsets, H5Dclose);
  h5_close_id(&w->pixels, H5Dclose);
  h5_close_id(&w->file, H5Fclose);
  if (w->tmp[0]) unlink(w->tmp);
  w->tmp[0] = '\0';
}

/* Call with HDF5 quiet; on failure the caller calls dwriter_abort. */
static int dwriter_create(dwriter *w, const char *path, int S, long n_samples, long n_tokens,
                          long n_images) {
  w->file = w->tokens = w->labels = w->offsets = w->image_offsets = w->pixels = -1;
  w->tmp[0] = '\0';
  if (strlen(path) + 5 > sizeof w->tmp) VLM_FAIL("dataset path too long: %s", path);
  snprintf(w->tmp, sizeof w->tmp, "%s.tmp", path);
  char why[200];
  hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
  w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
  if (w->file < 0) h5_reason(why);
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
  int rc = write_attr(w->tmp, w->file, "format", st, &fmt);
  H5Tclose(st);
  VLM_CHECK(rc);
  long long version = FORMAT_VERSION, size = S;
  VLM_CHECK(write_attr(w->tmp, w->file, "version", H5T_STD_I64LE, &version));
  VLM_CHECK(write_attr(w->tmp, w->file, "image_size", H5T_STD_I64LE, &size));
  VLM_CHECK(create_group(w->tmp, w->file, "/samples"));
  VLM_CHECK(create_group(w->tmp, w->file, "/images"));
  hsize_t dt[1] = {(hsize_t)n_tokens}, dof[1] = {(hsize_t)n_samples + 1};
  hsize_t dp[4] = {(hsize_t)n_images, (hsize_t)S, (hsize_t)S, 3};
  VLM_CHECK(create_dset(w->tmp, w->file, "/samples/tokens", H5T_STD_I32LE, 1, dt, &w->tokens));
  VLM_CHECK(create_dset(w->tmp, w->file, "/samples/labels", H5T_STD_I32LE, 1, dt, &w->labels));
  VLM_CHECK(create_dset(w->tmp, w->file, "/samples/offsets", H5T_STD_I64LE, 1, dof, &w->offsets));
  VLM_CHECK(create_dset(w->tmp, w->file, "/samples/image_offsets", H5T_STD_I64LE, 1, dof,
                        &w->image_offsets));
  VLM_CHECK(create_dset(w->tmp, w->file, "/images/pixels", H5T_STD_U8LE, 4, dp, &w->pixels));
  return 0;
}

/* Writes buf to the hyperslab start/count of ds (an open dataset of w). */
static int dwriter_put(dwriter *w, hid_t ds, const char *name, hid_t memtype, int rank,
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
  if (st < 0) h5_reason(why);
  h5_close_id(&ms, H5Sclose);
  h5_close_id(&fs, H5Sclose);
  if (st < 0) VLM_FAIL("dataset %s: cannot write %s: %s", w->tmp, name, why);
  return 0;
}

static int fsync_path(const char *p, int dir) {
  int fd = open(p, O_RDONLY | (dir ? O_DIRECTORY : 0));
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

/* Closes PATH.tmp, makes it durable and renames it to PATH. */
static int dwriter_commit(dwriter *w, const char *path) {
  char why[200] = "";
  h5_close_id(&w->tokens, H5Dclose);
  h5_close_id(&w->labels, H5Dclose);
  h5_close_id(&w->offsets, H5Dclose);
  h5_close_id(&w->image_offsets, H5Dclose);
  h5_close_id(&w->pixels, H5Dclose);
  herr_t st = H5Fclose(w->file);
  w->file = -1;
  if (st < 0) VLM_FAIL("dataset %s: closing %s failed: %s", path, w->tmp, h5_reason(why));
  if (fsync_path(w->tmp, 0) != 0)
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
  (void)fsync_path(dir, 1);
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
  dwriter w;
  h5_quiet q;
  h5_quiet_on(&q);
  VLM_CHECK_GOTO(dwriter_create(&w, path, image_size, n_samples, n_tokens, n_images), fail);
  VLM_CHECK_GOTO(dwriter_put(&w, w.tokens, "/samples/tokens", H5T_NATIVE_INT32, 1, z1, ct, tokens),
                 fail);
  VLM_CHECK_GOTO(dwriter_put(&w, w.labels, "/samples/labels", H5T_NATIVE_INT32, 1, z1, ct, labels),
                 fail);
  VLM_CHECK_GOTO(
      dwriter_put(&w, w.offsets, "/samples/offsets", H5T_NATIVE_INT64, 1, z1, co, offsets), fail);
  VLM_CHECK_GOTO(dwriter_put(&w, w.image_offsets, "/samples/image_offsets", H5T_NATIVE_INT64, 1, z1,
                             co, image_offsets),
                 fail);
  VLM_CHECK_GOTO(dwriter_put(&w, w.pixels, "/images/pixels", H5T_NATIVE_UINT8, 4, z4, cp, pixels),
                 fail);
  VLM_CHECK_GOTO(dwriter_commit(&w, path), fail);
  h5_quiet_off(&q);
  return 0;
fail:
  dwriter_abort(&w);
  h5_quiet_off(&q);
  return -1;
}

/* ------------------------------------------------------------------------------
 * The synthetic dataset (docs/formats.md, "The synthetic task"). Class k in
 * [0, 8) is the colour whose channel c is 215 when bit c of k is set, else 40;
 * the image is that colour plus a brightness shift in [-20, 20], per-channel
 * noise in [-24, 24], and a rectangle (sides S/8..S/4) of another class colour.
 * Tokens: per image <img> <imgpad> x img_slots </img>; then F filler ids in
 * [0, T); the prompt T+8, T+9, T+10; the answer T+k (k of the first image); eos.
 * T = min(vocab, image_start_id, eos_id) - 16. Labels are -100 except on the
 * answer and eos. Sample i and image j draw from their own rng streams, so the
 * content does not depend on how the work is split. */

#define SYN_CLASSES 8
#define SYN_RESERVED 16 /* ids T..T+15: 8 answers, 3 prompt tokens, 5 unused */
#define SYN_PROMPT_LEN 3

void synth_options_default(synth_options *o) {
  o->filler_min = 4;
  o->filler_max = 12;
  o->multi_image_every = 0;
}

static uint64_t mix_seed(uint64_t seed, uint64_t stream, uint64_t i) {
  uint64_t z = seed * 0x9e3779b97f4a7c15ULL ^ (stream << 56) ^ (i + 0x632be59bd9b4e019ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static int synth_text_top(const monkey_config *c) {
  int t = c->vocab_size;
  if (c->visual.image_start_id < t) t = c->visual.image_start_id;
  if (c->eos_id < t) t = c->eos_id;
  return t - SYN_RESERVED;
}

static uint8_t clamp_u8(int v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }

static void synth_image(uint8_t *px, int S, int k, vlm_rng *r) {
  int bright = (int)rng_below(r, 41) - 20;
  int side_min = S / 8 > 0 ? S / 8 : 1, side_max = S / 4 > side_min ? S / 4 : side_min;
  int rw = side_min + (int)rng_below(r, side_max - side_min + 1);
  int rh = side_min + (int)rng_below(r, side_max - side_min + 1);
  int rx = (int)rng_below(r, S - rw + 1), ry = (int)rng_below(r, S - rh + 1);
  int other = (k + 1 + (int)rng_below(r, SYN_CLASSES - 1)) % SYN_CLASSES;
  for (int y = 0; y < S; y++)
    for (int x = 0; x < S; x++) {
      int cls = (y >= ry && y < ry + rh && x >= rx && x < rx + rw) ? other : k;
      uint8_t *p = px + ((size_t)y * S + x) * 3;
      for (int ch = 0; ch < 3; ch++) {
        int base = ((cls >> ch) & 1) ? 215 : 40;
        p[ch] = clamp_u8(base + bright + (int)rng_below(r, 49) - 24);
      }
    }
}

int dataset_make_synthetic(const char *path, const monkey_config *c, long n_samples,
                           unsigned long seed) {
  synth_options o;
  synth_options_default(&o);
  VLM_CHECK(dataset_make_synthetic_ex(path, c, n_samples, seed, &o));
  return 0;
}

/* Checks the options against the config; returns the longest sample's length. */
static int synth_check(const char *path, const monkey_config *c, long n, const synth_options *o,
                       long *longest) {
  const int T = synth_text_top(c), slots = c->visual.img_slots;
  if (n < 1) VLM_FAIL("synthetic dataset %s: need at least one sample, got %ld", path, n);
  if (o->filler_min < 0 || o->filler_max < o->filler_min)
    VLM_FAIL(
        "synthetic dataset %s: filler lengths must satisfy 0 <= filler_min <= filler_max, got "
        "%d..%d",
        path, o->filler_min, o->filler_max);
  if (o->multi_image_every < 0)
    VLM_FAIL("synthetic dataset %s: multi_image_every must be >= 0 (0 = never), got %d", path,
             o->multi_image_every);
  if (T < 1)
    VLM_FAIL(
        "synthetic dataset %s: the vocabulary is too small: min(vocab_size %d, image_start_id "
        "%d, eos_id %d) must exceed %d",
        path, c->vocab_size, c->visual.image_start_id, c->eos_id, SYN_RESERVED);
  if (c->img_pad_id >= c->vocab_size || c->eos_id < 0 || c->eos_id >= c->vocab_size)
    VLM_FAIL(
        "synthetic dataset %s: <imgpad> (%d) and eos (%d) must lie inside the vocabulary "
        "[0, %d)",
        path, c->img_pad_id, c->eos_id, c->vocab_size);
  if (c->visual.image_size < 1 || slots < 1)
    VLM_FAIL("synthetic dataset %s: config has image_size %d and img_slots %d", path,
             c->visual.image_size, slots);
  int max_img = (o->multi_image_every > 0 && n >= o->multi_image_every) ? 2 : 1;
  *longest = (long)max_img * (slots + 2) + o->filler_max + SYN_PROMPT_LEN + 2;
  if ((size_t)n > SIZE_MAX / 8 / (size_t)*longest)
    VLM_FAIL("synthetic dataset %s: %ld samples of up to %ld tokens do not fit in memory", path, n,
             *longest);
  if (*longest > c->seq_length) {
    long fixed = (long)max_img * (slots + 2) + SYN_PROMPT_LEN + 2, room = c->seq_length - fixed;
    char hint[128];
    if (room >= o->filler_min)
      snprintf(hint, sizeof hint, "lower the filler maximum to %ld or less", room);
    else if (max_img > 1)
      snprintf(hint, sizeof hint, "two images do not fit: turn multi-image samples off");
    else
      snprintf(hint, sizeof hint, "the config cannot hold one image and the prompt");
    VLM_FAIL(
        "synthetic dataset %s: a sample can be %ld tokens long (%d image(s) x (%d slots + 2) + "
        "%d filler + %d prompt + answer + eos), more than the config's seq_length %d; %s",
        path, *longest, max_img, slots, o->filler_max, SYN_PROMPT_LEN, c->seq_length, hint);
  }
  return 0;
}

int dataset_make_synthetic_ex(const char *path, const monkey_config *c, long n_samples,
                              unsigned long seed, const synth_options *o) {
  long longest;
  VLM_CHECK(synth_check(path, c, n_samples, o, &longest));
  const int T = synth_text_top(c), slots = c->visual.img_slots, S = c->visual.image_size;
  const long n = n_samples;
  const long every = o->multi_image_every;

  /* pass 1: token sequences and each image's class (small) */
  int rc = -1;
  int64_t *off = vlm_alloc((size_t)(n + 1) * sizeof(int64_t), "synthetic offsets");
  int64_t *ioff = vlm_alloc((size_t)(n + 1) * sizeof(int64_t), "synthetic image offsets");
  int32_t *tok = vlm_alloc((size_t)n * (size_t)longest * sizeof(int32_t), "synthetic tokens");
  int32_t *lab = vlm_alloc((size_t)n * (size_t)longest * sizeof(int32_t), "synthetic labels");
  int *img_class = vlm_alloc((size_t)n * 2 * sizeof(int), "synthetic classes");
  uint8_t *px = NULL;
  dwriter w;
  int writer_open = 0;
  h5_quiet q;
  int quiet = 0;
  if (!off || !ioff || !tok || !lab || !img_class) goto out;
  long nt = 0, ni = 0;
  for (long i = 0; i < n; i++) {
    vlm_rng r;
    rng_seed(&r, mix_seed(seed, 0, (uint64_t)i));
    int m = (every > 0 && i % every == every - 1) ? 2 : 1;
    int k = 0;
    off[i] = nt;
    ioff[i] = ni;
    for (int j = 0; j < m; j++) {
      int cls = (int)rng_below(&r, SYN_CLASSES);
      if (j == 0) k = cls;
      img_class[ni++] = cls;
      tok[nt] = c->visual.image_start_id, lab[nt++] = LABEL_IGNORE;
      for (int s = 0; s < slots; s++) tok[nt] = c->img_pad_id, lab[nt++] = LABEL_IGNORE;
      tok[nt] = c->img_end_id, lab[nt++] = LABEL_IGNORE;
    }
    int f = o->filler_min + (int)rng_below(&r, o->filler_max - o->filler_min + 1);
    for (int s = 0; s < f; s++) tok[nt] = (int32_t)rng_below(&r, T), lab[nt++] = LABEL_IGNORE;
    for (int s = 0; s < SYN_PROMPT_LEN; s++)
      tok[nt] = T + SYN_CLASSES + s, lab[nt++] = LABEL_IGNORE;
    tok[nt] = T + k, lab[nt] = T + k, nt++;
    tok[nt] = c->eos_id, lab[nt] = c->eos_id, nt++;
  }
  off[n] = nt;
  ioff[n] = ni;

  /* pass 2: write; pixels go in blocks of about 64 MiB */
  const size_t img_bytes = (size_t)S * S * 3;
  long block = (long)((64u << 20) / img_bytes);
  if (block < 1) block = 1;
  if (block > ni) block = ni > 0 ? ni : 1;
  px = vlm_alloc((size_t)block * img_bytes, "synthetic pixels");
  if (!px) goto out;
  h5_quiet_on(&q);
  quiet = 1;
  writer_open = 1;
  VLM_CHECK_GOTO(dwriter_create(&w, path, S, n, nt, ni), out);
  hsize_t z1[1] = {0}, ct[1] = {(hsize_t)nt}, co[1] = {(hsize_t)n + 1};
  VLM_CHECK_GOTO(dwriter_put(&w, w.tokens, "/samples/tokens", H5T_NATIVE_INT32, 1, z1, ct, tok),
                 out);
  VLM_CHECK_GOTO(dwriter_put(&w, w.labels, "/samples/labels", H5T_NATIVE_INT32, 1, z1, ct, lab),
                 out);
  VLM_CHECK_GOTO(dwriter_put(&w, w.offsets, "/samples/offsets", H5T_NATIVE_INT64, 1, z1, co, off),
                 out);
  VLM_CHECK_GOTO(
      dwriter_put(&w, w.image_offsets, "/samples/image_offsets", H5T_NATIVE_INT64, 1, z1, co, ioff),
      out);
  for (long j0 = 0; j0 < ni; j0 += block) {
    long nb = ni - j0 < block ? ni - j0 : block;
    for (long j = 0; j < nb; j++) {
      vlm_rng r;
      rng_seed(&r, mix_seed(seed, 1, (uint64_t)(j0 + j)));
      synth_image(px + (size_t)j * img_bytes, S, img_class[j0 + j], &r);
    }
    hsize_t p0[4] = {(hsize_t)j0, 0, 0, 0}, pn[4] = {(hsize_t)nb, (hsize_t)S, (hsize_t)S, 3};
    VLM_CHECK_GOTO(dwriter_put(&w, w.pixels, "/images/pixels", H5T_NATIVE_UINT8, 4, p0, pn, px),
                   out);
  }
  VLM_CHECK_GOTO(dwriter_commit(&w, path), out);
  writer_open = 0;
  rc = 0;
out:
  if (writer_open) dwriter_abort(&w);
  if (quiet) h5_quiet_off(&q);
  vlm_free(px);
  vlm_free(img_class);
  vlm_free(lab);
  vlm_free(tok);
  vlm_free(ioff);
  vlm_free(off);
  return rc;
}

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
  if (*out < 0) h5_reason(why);
  h5_close_id(&sp, H5Sclose);
  h5_close_id(&dcpl, H5Pclose);
  if (*out < 0) VLM_FAIL("dataset %s: cannot create %s: %s", w->tmp, name, why);
  return 0;
}

static void pw_close_all(dataset_pwriter *w) {
  h5_close_id(&w->tokens, H5Dclose);
  h5_close_id(&w->labels, H5Dclose);
  h5_close_id(&w->offsets, H5Dclose);
  h5_close_id(&w->image_offsets, H5Dclose);
  h5_close_id(&w->pixels, H5Dclose);
  h5_close_id(&w->dxpl, H5Pclose);
  h5_close_id(&w->file, H5Fclose);
}

static int pw_open_body(dataset_pwriter *w) {
  char why[200] = "";
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl >= 0 && H5Pset_fapl_mpio(fapl, w->comm, MPI_INFO_NULL) >= 0)
    w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  if (w->file < 0) h5_reason(why);
  h5_close_id(&fapl, H5Pclose);
  if (w->file < 0)
    VLM_FAIL("dataset %s: cannot create %s (parallel HDF5): %s", w->path, w->tmp, why);
  w->dxpl = H5Pcreate(H5P_DATASET_XFER);
  if (w->dxpl < 0 || H5Pset_dxpl_mpio(w->dxpl, H5FD_MPIO_COLLECTIVE) < 0)
    VLM_FAIL("dataset %s: cannot set up collective transfers: %s", w->tmp, h5_reason(why));
  hid_t st = H5Tcopy(H5T_C_S1);
  H5Tset_size(st, H5T_VARIABLE);
  H5Tset_cset(st, H5T_CSET_UTF8);
  const char *fmt = FORMAT_NAME;
  int rc = write_attr(w->tmp, w->file, "format", st, &fmt);
  H5Tclose(st);
  VLM_CHECK(rc);
  long long version = FORMAT_VERSION, size = w->image_size;
  VLM_CHECK(write_attr(w->tmp, w->file, "version", H5T_STD_I64LE, &version));
  VLM_CHECK(write_attr(w->tmp, w->file, "image_size", H5T_STD_I64LE, &size));
  VLM_CHECK(create_group(w->tmp, w->file, "/samples"));
  VLM_CHECK(create_group(w->tmp, w->file, "/images"));
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
  h5_quiet q;
  h5_quiet_on(&q);
  int rc = pw_open_body(w);
  h5_quiet_off(&q);
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
  if (st < 0) h5_reason(why);
  h5_close_id(&ms, H5Sclose);
  h5_close_id(&fs, H5Sclose);
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
             h5_reason(why));
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
  h5_quiet q;
  h5_quiet_on(&q);
  int rc = pw_append_body(w, n_samples, lengths, n_images, tokens, labels, pixels, offs, ioffs);
  h5_quiet_off(&q);
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
  h5_quiet q;
  h5_quiet_on(&q);
  int rc = pw_commit_body(w);
  if (!pw_all(w->comm, rc == 0)) {
    h5_quiet_off(&q);
    dataset_pwriter_abort(w);
    if (rc) VLM_CHECK(rc);
    return -1;
  }
  char why[200] = "";
  h5_close_id(&w->tokens, H5Dclose);
  h5_close_id(&w->labels, H5Dclose);
  h5_close_id(&w->offsets, H5Dclose);
  h5_close_id(&w->image_offsets, H5Dclose);
  h5_close_id(&w->pixels, H5Dclose);
  h5_close_id(&w->dxpl, H5Pclose);
  herr_t st = H5Fclose(w->file);
  w->file = -1;
  if (st < 0) h5_reason(why);
  h5_quiet_off(&q);
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
    if (fsync_path(w->tmp, 0) != 0)
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
      (void)fsync_path(dir, 1);
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
  h5_quiet q;
  h5_quiet_on(&q);
  pw_close_all(w);
  h5_quiet_off(&q);
  MPI_Barrier(w->comm);
  if (w->rank == 0) unlink(w->tmp);
  free(w);
}

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
  if (f < 0) h5_reason(why);
  h5_close_id(&fapl, H5Pclose);
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
      h5_reason(why);
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
    h5_quiet q;
    h5_quiet_on(&q);
    H5Fclose((hid_t)d->file); /* reopened below with the MPI-IO driver */
    h5_quiet_off(&q);
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
  h5_quiet q;
  h5_quiet_on(&q);
  char why[200] = "";
  if (collective) {
    rc = open_mpio(d);
  } else if (rank != 0) {
    d->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (d->file < 0) {
      h5_reason(why);
      vlm_error_at(__FILE__, __LINE__, __func__, "dataset %s: rank %d cannot open it: %s", path,
                   rank, why);
      rc = -1;
    }
  }
  h5_quiet_off(&q);
  if (mpi_agree(own, rc) != 0) goto fail;
  /* the three data sets, held open for dataset_read_samples (collectively
   * opened in collective mode: every rank makes the same calls) */
  h5_quiet_on(&q);
  rc = open_held_dsets(d);
  h5_quiet_off(&q);
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
    h5_reason(why);
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
      h5_reason(why);
      what = "read";
    } else {
      H5D_mpio_actual_io_mode_t mode = H5D_MPIO_NO_COLLECTIVE;
      if (H5Pget_mpio_actual_io_mode(dxpl, &mode) < 0) mode = H5D_MPIO_NO_COLLECTIVE;
      d->last_io_mode[k] = (int)mode;
      d->n_coll_reads++;
      if (mode != H5D_MPIO_NO_COLLECTIVE) d->n_coll_done++;
    }
  } else {
    h5_reason(why);
  }
  h5_close_id(&dxpl, H5Pclose);
  h5_close_id(&ms, H5Sclose);
  h5_close_id(&fs, H5Sclose);
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
    VLM_CHECK(validate_sample(d, s, p->tok + p->tok_at[u], p->lab + p->tok_at[u], nt, ni));
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
  h5_quiet q;
  h5_quiet_on(&q);
  void *bufs[3] = {p.tok, p.lab, p.px};
  for (int k = 0; k < 3; k++) {
    int r = coll_read_one(d, k, &p, rc == 0, bufs[k]);
    if (rc == 0) rc = r;
  }
  h5_quiet_off(&q);
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
  if (st < 0) h5_reason(why);
  h5_close_id(&ms, H5Sclose);
  h5_close_id(&fs, H5Sclose);
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
    h5_quiet q;
    h5_quiet_on(&q);
    int rc = read_held_rows(d, 0, i, t0, nt, tokens + t);
    if (rc == 0) rc = read_held_rows(d, 1, i, t0, nt, labels + t);
    if (rc == 0) rc = read_held_rows(d, 2, i, i0, ni, px);
    h5_quiet_off(&q);
    VLM_CHECK(rc);
    VLM_CHECK(validate_sample(d, i, tokens + t, labels + t, (long)nt, (long)ni));
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
