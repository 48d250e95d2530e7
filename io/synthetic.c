/* io/synthetic.c: the learnable synthetic image-question-answer dataset
 * (docs/formats.md, "The synthetic task"), written with the serial writer. */
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
  ds_writer w;
  int writer_open = 0;
  ds_quiet q;
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
  ds_quiet_on(&q);
  quiet = 1;
  writer_open = 1;
  VLM_CHECK_GOTO(ds_writer_create(&w, path, S, n, nt, ni), out);
  hsize_t z1[1] = {0}, ct[1] = {(hsize_t)nt}, co[1] = {(hsize_t)n + 1};
  VLM_CHECK_GOTO(ds_writer_put(&w, w.tokens, "/samples/tokens", H5T_NATIVE_INT32, 1, z1, ct, tok),
                 out);
  VLM_CHECK_GOTO(ds_writer_put(&w, w.labels, "/samples/labels", H5T_NATIVE_INT32, 1, z1, ct, lab),
                 out);
  VLM_CHECK_GOTO(ds_writer_put(&w, w.offsets, "/samples/offsets", H5T_NATIVE_INT64, 1, z1, co, off),
                 out);
  VLM_CHECK_GOTO(
      ds_writer_put(&w, w.image_offsets, "/samples/image_offsets", H5T_NATIVE_INT64, 1, z1, co, ioff),
      out);
  for (long j0 = 0; j0 < ni; j0 += block) {
    long nb = ni - j0 < block ? ni - j0 : block;
    for (long j = 0; j < nb; j++) {
      vlm_rng r;
      rng_seed(&r, mix_seed(seed, 1, (uint64_t)(j0 + j)));
      synth_image(px + (size_t)j * img_bytes, S, img_class[j0 + j], &r);
    }
    hsize_t p0[4] = {(hsize_t)j0, 0, 0, 0}, pn[4] = {(hsize_t)nb, (hsize_t)S, (hsize_t)S, 3};
    VLM_CHECK_GOTO(ds_writer_put(&w, w.pixels, "/images/pixels", H5T_NATIVE_UINT8, 4, p0, pn, px),
                   out);
  }
  VLM_CHECK_GOTO(ds_writer_commit(&w, path), out);
  writer_open = 0;
  rc = 0;
out:
  if (writer_open) ds_writer_abort(&w);
  if (quiet) ds_quiet_off(&q);
  vlm_free(px);
  vlm_free(img_class);
  vlm_free(lab);
  vlm_free(tok);
  vlm_free(ioff);
  vlm_free(off);
  return rc;
}
