/* io/dataset.c: the vlmtrain dataset, format v1 in HDF5 (io/dataset.h,
 * docs/formats.md): the strict reader, which checks the file against the model
 * config and names the file, dataset path, sample and token position of anything
 * wrong, and the HDF5 helpers the other parts share (io/dataset_internal.h). The
 * serial writer is io/dataset_write.c, the synthetic task io/synthetic.c, the
 * parallel writer io/dataset_pwrite.c and the parallel reader io/dataset_mpi.c.
 * None of them tokenizes text or decodes images: files hold token ids and
 * resized RGB pixels. */
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
 * HDF5 helpers: silence HDF5's own stack printing while we report errors our
 * way, and fetch the innermost HDF5 reason for a failed call. */

void ds_quiet_on(ds_quiet *q) {
  H5Eget_auto2(H5E_DEFAULT, &q->fn, &q->data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

void ds_quiet_off(const ds_quiet *q) { H5Eset_auto2(H5E_DEFAULT, q->fn, q->data); }

static herr_t h5_reason_cb(unsigned n, const H5E_error2_t *e, void *data) {
  if (n == 0 && e->desc) snprintf((char *)data, 200, "%s", e->desc);
  return 0;
}

/* The innermost message of the current HDF5 error stack; call it right after the
 * failing call (every HDF5 API call clears the stack). buf holds 200 bytes. */
const char *ds_h5_reason(char *buf) {
  buf[0] = '\0';
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, h5_reason_cb, buf);
  if (!buf[0]) snprintf(buf, 200, "no detail from HDF5");
  return buf;
}

void ds_close_id(hid_t *id, herr_t (*close_fn)(hid_t)) {
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
    VLM_FAIL("dataset %s: cannot open root attribute '%s': %s", fname, name, ds_h5_reason(why));
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
      ds_h5_reason(why);
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
  if (st < 0) ds_h5_reason(why);
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
  if (ds < 0) VLM_FAIL("dataset %s: %s is not a readable dataset: %s", fname, name, ds_h5_reason(why));
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
    ds_h5_reason(why);
    goto done;
  }
  fs = H5Dget_space(ds);
  if (fs < 0 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0) {
    ds_h5_reason(why);
    goto done;
  }
  ms = H5Screate_simple(rank, count, NULL);
  if (ms < 0) {
    ds_h5_reason(why);
    goto done;
  }
  st = H5Dread(ds, memtype, ms, fs, H5P_DEFAULT, buf);
  if (st < 0) ds_h5_reason(why);
done:
  ds_close_id(&ms, H5Sclose);
  ds_close_id(&fs, H5Sclose);
  ds_close_id(&ds, H5Dclose);
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
  if (d->file < 0) VLM_FAIL("dataset %s: cannot open as HDF5: %s", path, ds_h5_reason(why));
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
  ds_quiet q;
  ds_quiet_on(&q);
  VLM_CHECK_GOTO(open_body(d, path, c), fail);
  ds_quiet_off(&q);
  return 0;
fail:
  dataset_close(d);
  ds_quiet_off(&q);
  return -1;
}

void dataset_close(dataset *d) {
  ds_quiet q;
  ds_quiet_on(&q);
  if (d->mpi) /* dataset_open_mpi's data sets (collective mode: closed on every rank) */
    for (int k = 0; k < 3; k++) {
      if (d->dsets[k] >= 0) H5Dclose((hid_t)d->dsets[k]);
      d->dsets[k] = -1;
    }
  if (d->file > 0) H5Fclose((hid_t)d->file);
  ds_quiet_off(&q);
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
int ds_validate_sample(const dataset *d, long i, const int32_t *tok, const int32_t *lab,
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
  ds_quiet q;
  ds_quiet_on(&q);
  VLM_CHECK_GOTO(read_slab(d->path, f, "/samples/tokens", H5T_NATIVE_INT32, 1, t0, tn, tokens),
                 fail);
  VLM_CHECK_GOTO(read_slab(d->path, f, "/samples/labels", H5T_NATIVE_INT32, 1, t0, tn, labels),
                 fail);
  VLM_CHECK_GOTO(read_slab(d->path, f, "/images/pixels", H5T_NATIVE_UINT8, 4, p0, pn, pixels),
                 fail);
  ds_quiet_off(&q);
  *len = (int)tn[0];
  *n_img = (int)pn[0];
  VLM_CHECK(ds_validate_sample(d, i, tokens, labels, (long)tn[0], (long)pn[0]));
  return 0;
fail:
  ds_quiet_off(&q);
  return -1;
}
