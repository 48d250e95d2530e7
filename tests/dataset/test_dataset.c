/* tests/dataset/test_dataset.c: unit test of io/dataset.c and io/loader.c on the
 * tiny config (argv[1]): the synthetic dataset (written, reopened, every sample
 * read and validated, label layout, determinism down to the file bytes), the
 * writer (round trip, no file left on failure), the per-sample validation errors,
 * and the sample order (permutations, epochs, file order, resume). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/vlm.h"
#include "io/config.h"
#include "io/dataset.h"
#include "io/loader.h"

static int g_pass, g_fail;

static void check(int ok, const char *name, const char *detail) {
  if (ok) {
    g_pass++;
    printf("PASS %s\n", name);
  } else {
    g_fail++;
    printf("FAIL %s%s%s\n", name, detail && detail[0] ? ": " : "", detail ? detail : "");
  }
}

/* ok when the last call failed and its message holds every needle (NULL-ended) */
static int error_says(int rc, const char *needle, const char *needle2) {
  const char *m = vlm_last_error();
  return rc != 0 && strstr(m, needle) && (!needle2 || strstr(m, needle2));
}

static long file_bytes(const char *path, unsigned char **buf) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  *buf = malloc((size_t)n + 1);
  if (fread(*buf, 1, (size_t)n, f) != (size_t)n) n = -1;
  fclose(f);
  return n;
}

static int same_file(const char *a, const char *b) {
  unsigned char *x = NULL, *y = NULL;
  long na = file_bytes(a, &x), nb = file_bytes(b, &y);
  int same = na > 0 && na == nb && memcmp(x, y, (size_t)na) == 0;
  free(x);
  free(y);
  return same;
}

static int exists(const char *p) { return access(p, F_OK) == 0; }

/* ---------------------------------------------------------------- synthetic */

static void test_synthetic(const monkey_config *c) {
  const char *pa = "dataset_unit_a.h5", *pb = "dataset_unit_b.h5", *pc = "dataset_unit_c.h5";
  const long n = 48;
  const int every = 5;
  synth_options o;
  synth_options_default(&o);
  o.multi_image_every = every;
  check(dataset_make_synthetic_ex(pa, c, n, 7, &o) == 0, "synthetic: write 48 samples",
        vlm_last_error());
  check(exists(pa) && !exists("dataset_unit_a.h5.tmp"), "synthetic: file in place, no .tmp left",
        "");

  dataset d;
  if (dataset_open(&d, pa, c) != 0) {
    check(0, "synthetic: reopen", vlm_last_error());
    return;
  }
  const long n_multi = n / every;
  const int slots = c->visual.img_slots, S = c->visual.image_size;
  char msg[256];
  snprintf(msg, sizeof msg, "n_samples %ld n_images %ld max_images %ld max_len %ld", d.n_samples,
           d.n_images, d.max_images, d.max_len);
  check(d.n_samples == n && d.n_images == n + n_multi && d.max_images == 2 &&
            d.max_len <= c->seq_length && d.max_len >= 2 * (slots + 2) + o.filler_min + 5,
        "synthetic: counts after reopen", msg);

  const int T = (c->vocab_size < c->eos_id ? c->vocab_size : c->eos_id) - 16;
  int32_t *tok = malloc((size_t)d.max_len * sizeof *tok),
          *lab = malloc((size_t)d.max_len * sizeof *lab);
  uint8_t *px = malloc((size_t)d.max_images * S * S * 3);
  int read_ok = 1, layout_ok = 1, classes_seen = 0;
  long images = 0;
  msg[0] = '\0';
  for (long i = 0; i < d.n_samples; i++) {
    int len, n_img;
    if (dataset_read_sample(&d, i, tok, lab, &len, px, &n_img) != 0) {
      read_ok = 0;
      snprintf(msg, sizeof msg, "%s", vlm_last_error());
      break;
    }
    images += n_img;
    int want_img = (i % every == every - 1) ? 2 : 1, n_labels = 0;
    for (int p = 0; p < len; p++) n_labels += lab[p] != -100;
    int ans = tok[len - 2];
    int ok = n_img == want_img && n_labels == 2 && lab[len - 1] == c->eos_id &&
             tok[len - 1] == c->eos_id && lab[len - 2] == ans && ans >= T && ans < T + 8 &&
             tok[len - 5] == T + 8 && tok[len - 4] == T + 9 && tok[len - 3] == T + 10 &&
             tok[0] == c->visual.image_start_id && tok[1] == c->img_pad_id &&
             tok[slots + 1] == c->img_end_id && len <= c->seq_length;
    if (!ok && layout_ok) {
      snprintf(msg, sizeof msg, "sample %ld: len %d n_img %d labels %d answer %d", i, len, n_img,
               n_labels, ans);
      layout_ok = 0;
    }
    classes_seen |= 1 << (ans - T);
  }
  check(read_ok, "synthetic: every sample reads and validates", msg);
  check(read_ok && images == d.n_images, "synthetic: image counts add up", "");
  check(read_ok && layout_ok, "synthetic: token layout, labels only on answer and eos", msg);
  check(classes_seen == 0xff, "synthetic: all 8 answer classes occur", "");
  free(tok);
  free(lab);
  free(px);
  dataset_close(&d);

  check(dataset_make_synthetic_ex(pb, c, n, 7, &o) == 0 && same_file(pa, pb),
        "synthetic: same seed gives a byte-identical file", "");
  check(dataset_make_synthetic_ex(pc, c, n, 8, &o) == 0 && !same_file(pa, pc),
        "synthetic: another seed gives another file", "");
  check(dataset_make_synthetic(pc, c, 10, 3) == 0, "synthetic: default options (1 image each)",
        vlm_last_error());

  /* too long for seq_length: refused before anything is written */
  synth_options big = o;
  big.filler_max = c->seq_length;
  unlink("dataset_unit_long.h5");
  int rc = dataset_make_synthetic_ex("dataset_unit_long.h5", c, 4, 1, &big);
  check(error_says(rc, "seq_length", NULL) && !exists("dataset_unit_long.h5") &&
            !exists("dataset_unit_long.h5.tmp"),
        "synthetic: over seq_length is an error, no file", vlm_last_error());
}

/* ------------------------------------------------------------------- writer */

/* A hand-made dataset of 3 samples for the tiny config: text only, one image, one image. */
typedef struct {
  int64_t off[4], ioff[4];
  int32_t tok[400], lab[400];
  uint8_t *px;
  long n_images;
} small_ds;

static void small_make(small_ds *s, const monkey_config *c) {
  const int slots = c->visual.img_slots, S = c->visual.image_size;
  long t = 0;
  s->off[0] = 0;
  s->ioff[0] = 0;
  for (int i = 0; i < 3; i++) {
    for (int k = 0; k < 5; k++) s->tok[t] = 10 + k + i, s->lab[t++] = -100;
    if (i > 0) {
      s->tok[t] = c->visual.image_start_id, s->lab[t++] = -100;
      for (int k = 0; k < slots; k++) s->tok[t] = c->img_pad_id, s->lab[t++] = -100;
      s->tok[t] = c->img_end_id, s->lab[t++] = -100;
    }
    s->tok[t] = 42, s->lab[t++] = 42;
    s->tok[t] = c->eos_id, s->lab[t++] = c->eos_id;
    s->off[i + 1] = t;
    s->ioff[i + 1] = s->ioff[i] + (i > 0);
  }
  s->n_images = 2;
  s->px = malloc((size_t)2 * S * S * 3);
  for (size_t k = 0; k < (size_t)2 * S * S * 3; k++) s->px[k] = (uint8_t)(k * 7 + 3);
}

static int small_write(const small_ds *s, const monkey_config *c, const char *path) {
  return dataset_write(path, c->visual.image_size, 3, s->off, s->tok, s->lab, s->ioff, s->n_images,
                       s->px);
}

/* Writes s to path, opens it and reads sample i; returns 0 when all of it worked. */
static int small_read(const small_ds *s, const monkey_config *c, const char *path, long i) {
  if (small_write(s, c, path) != 0) return -2;
  dataset d;
  if (dataset_open(&d, path, c) != 0) return -3;
  int32_t tok[400], lab[400];
  uint8_t *px = malloc((size_t)2 * c->visual.image_size * c->visual.image_size * 3);
  int len, n_img;
  int rc = dataset_read_sample(&d, i, tok, lab, &len, px, &n_img);
  free(px);
  dataset_close(&d);
  return rc;
}

static void test_writer(const monkey_config *c) {
  const int S = c->visual.image_size;
  const char *p = "dataset_unit_small.h5";
  small_ds s;
  small_make(&s, c);
  check(small_write(&s, c, p) == 0, "writer: hand-made dataset", vlm_last_error());
  dataset d;
  int ok = dataset_open(&d, p, c) == 0;
  check(ok && d.n_samples == 3 && d.n_images == 2 && d.max_images == 1 && d.n_tokens == s.off[3],
        "writer: reopen and counts", vlm_last_error());
  if (ok) {
    int32_t tok[400], lab[400];
    uint8_t *px = malloc((size_t)S * S * 3);
    int same = 1;
    for (long i = 0; i < 3 && same; i++) {
      int len, n_img;
      if (dataset_read_sample(&d, i, tok, lab, &len, px, &n_img) != 0) {
        same = 0;
        break;
      }
      same = len == s.off[i + 1] - s.off[i] && n_img == (i > 0) &&
             !memcmp(tok, s.tok + s.off[i], (size_t)len * 4) &&
             !memcmp(lab, s.lab + s.off[i], (size_t)len * 4) &&
             (n_img == 0 || !memcmp(px, s.px + (size_t)(i - 1) * S * S * 3, (size_t)S * S * 3));
    }
    check(same, "writer: round trip (tokens, labels, pixels; text-only sample)", vlm_last_error());
    int32_t t1[400], l1[400];
    int len, n_img;
    check(error_says(dataset_read_sample(&d, 3, t1, l1, &len, px, &n_img), "sample 3", "3 samples"),
          "reader: sample index out of range", vlm_last_error());
    free(px);
    dataset_close(&d);
  }

  int rc = small_write(&s, c, "dataset_no_such_dir/x.h5");
  check(error_says(rc, "dataset_no_such_dir/x.h5", NULL) && !exists("dataset_no_such_dir"),
        "writer: failure reported, nothing left", vlm_last_error());
  int64_t bad_off[4] = {0, 10, 5, s.off[3]};
  rc = dataset_write("dataset_unit_bad.h5", S, 3, bad_off, s.tok, s.lab, s.ioff, 2, s.px);
  check(error_says(rc, "non-decreasing", NULL) && !exists("dataset_unit_bad.h5.tmp"),
        "writer: refuses decreasing offsets", vlm_last_error());
  rc = dataset_open(&d, "dataset_unit_missing.h5", c);
  check(error_says(rc, "dataset_unit_missing.h5", "cannot open"), "reader: missing file named",
        vlm_last_error());
  monkey_config other = *c;
  other.visual.image_size = 2 * S;
  rc = dataset_open(&d, p, &other);
  check(error_says(rc, "image_size", p), "reader: image_size differs from the config",
        vlm_last_error());

  /* per-sample validation: each mutation of sample 1 (one image) must be named */
  const long b = s.off[1]; /* sample 1 starts here: 5 text tokens, then <img> */
  const int slots = c->visual.img_slots;
  small_ds m;
  char name[96];
  struct {
    const char *what, *needle;
    int pos, field, value; /* field 0: token, 1: label */
  } cases[] = {
      {"token id >= vocab", "outside the vocabulary", 2, 0, c->vocab_size},
      {"negative token id", "outside the vocabulary", 2, 0, -1},
      {"label out of range", "label", 3, 1, c->vocab_size + 5},
      {"slot count", "slot tokens", 5 + slots, 0, c->img_end_id}, /* 79 slots */
      {"</img> without <img>", "without an opening", 1, 0, c->img_end_id},
      {"<img> without </img>", "no closing", 6 + slots, 0, 7},
      {"image count", "<img> tokens but", 5, 0, 7}, /* no <img> at all */
  };
  for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
    m = s;
    if (cases[k].field == 0)
      m.tok[b + cases[k].pos] = cases[k].value;
    else
      m.lab[b + cases[k].pos] = cases[k].value;
    if (!strcmp(cases[k].what, "image count")) /* drop the whole image tag: slots stay pads */
      m.tok[b + 6 + slots] = 7;
    rc = small_read(&m, c, "dataset_unit_mut.h5", 1);
    snprintf(name, sizeof name, "validation: %s", cases[k].what);
    check(error_says(rc, cases[k].needle, "sample 1") &&
              strstr(vlm_last_error(), "dataset_unit_mut.h5"),
          name, vlm_last_error());
  }
  free(s.px);
}

/* --------------------------------------------------------------- data order */

static int is_perm(const long *a, long n) {
  char *seen = calloc((size_t)n, 1);
  int ok = 1;
  for (long i = 0; i < n && ok; i++) {
    ok = a[i] >= 0 && a[i] < n && !seen[a[i]];
    if (ok) seen[a[i]] = 1;
  }
  free(seen);
  return ok;
}

static void test_order(void) {
  const long n = 37;
  data_order o;
  long ep[3][37];
  int ok = data_order_init(&o, n, 1, 1234) == 0;
  for (int e = 0; e < 3 && ok; e++) data_order_next(&o, ep[e], (int)n);
  check(ok && is_perm(ep[0], n) && is_perm(ep[1], n) && is_perm(ep[2], n),
        "order: each epoch is a permutation", "");
  check(ok && memcmp(ep[0], ep[1], sizeof ep[0]) && memcmp(ep[1], ep[2], sizeof ep[0]),
        "order: epochs differ", "");
  int shuffled = 0;
  for (long i = 0; i < n; i++) shuffled |= ep[0][i] != i;
  check(shuffled, "order: shuffle is not file order", "");
  check(o.epoch == 2 && o.cursor == n, "order: position after 3 epochs is (2, n)", "");
  data_order_free(&o);

  /* same seed, same order; another seed, another order; chunking does not matter */
  long a[100], b[100];
  data_order_init(&o, n, 1, 1234);
  for (int k = 0; k < 100; k += 7) data_order_next(&o, a + k, k + 7 <= 100 ? 7 : 100 - k);
  data_order_free(&o);
  data_order_init(&o, n, 1, 1234);
  data_order_next(&o, b, 100);
  data_order_free(&o);
  check(!memcmp(a, b, sizeof a) && !memcmp(a, ep[0], sizeof ep[0]),
        "order: same seed gives the same stream, however it is chunked", "");
  data_order_init(&o, n, 1, 1235);
  data_order_next(&o, b, (int)n);
  data_order_free(&o);
  check(memcmp(ep[0], b, sizeof ep[0]) != 0, "order: another seed, another permutation", "");

  data_order_init(&o, 10, 0, 99);
  long f[25];
  data_order_next(&o, f, 25);
  int file_order = 1;
  for (int i = 0; i < 25; i++) file_order &= f[i] == i % 10;
  check(file_order && o.epoch == 2 && o.cursor == 5, "order: shuffle off is file order, wrapping",
        "");
  data_order_free(&o);

  /* resume: stop at any (epoch, cursor), seek a fresh order there, same continuation */
  long full[120], part[120];
  data_order_init(&o, n, 1, 77);
  data_order_next(&o, full, 120);
  data_order_free(&o);
  int resume_ok = 1;
  const int stops[] = {0, 1, 23, 36, 37, 38, 74, 100};
  for (size_t s = 0; s < sizeof stops / sizeof *stops; s++) {
    data_order_init(&o, n, 1, 77);
    data_order_next(&o, part, stops[s]);
    long e = o.epoch, cur = o.cursor;
    data_order_free(&o);
    data_order_init(&o, n, 1, 77);
    resume_ok &= data_order_seek(&o, e, cur) == 0;
    data_order_next(&o, part + stops[s], 120 - stops[s]);
    data_order_free(&o);
    resume_ok &= !memcmp(part, full, sizeof full);
  }
  check(resume_ok, "order: resume from (epoch, cursor) continues identically", "");

  data_order_init(&o, n, 1, 77);
  int rc = data_order_seek(&o, 0, n + 1);
  check(error_says(rc, "cursor", NULL), "order: seek past the epoch is an error", vlm_last_error());
  data_order_free(&o);
  check(error_says(data_order_init(&o, 0, 1, 1), "at least one sample", NULL),
        "order: zero samples is an error", vlm_last_error());
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CONFIG.json\n", argv[0]);
    return 2;
  }
  monkey_config c;
  if (monkey_config_load(&c, argv[1]) != 0) return 1;
  if (c.visual.img_slots > 100) { /* the hand-made samples of test_writer hold 400 tokens */
    fprintf(stderr, "%s: written for small configs (img_slots <= 100), got %d\n", argv[0],
            c.visual.img_slots);
    return 2;
  }
  vlm_set_quiet_errors(1);
  test_synthetic(&c);
  test_writer(&c);
  test_order();
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
