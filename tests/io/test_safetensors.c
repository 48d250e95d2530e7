/* tests/io/test_safetensors.c: io/safetensors.c against files written
 * independently by tests/io/make_safetensors.py (in io/st/ under the working
 * directory): valid F32/BF16/F16/mixed files read back exactly (compared with
 * numpy's fp32 widening), every bad file rejected with a message that names
 * the file and the problem; then st_write: F32 round-trips bit-exactly, BF16
 * and F16 round to nearest even, the header is 8-byte aligned, no PATH.tmp is
 * left, failures leave nothing under PATH. The written files (io/st/w_*.safetensors)
 * are checked again by tests/io/verify_safetensors.py. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/vlm.h"
#include "io/config.h"
#include "io/safetensors.h"

static int n_pass, n_fail;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
  if (ok) n_pass++;
  else n_fail++;
  printf("%s ", ok ? "ok  " : "FAIL");
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  fflush(stdout);
}

static uint32_t bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static int same_value(float a, float b) { return bits(a) == bits(b) || (isnan(a) && isnan(b)); }

static int exists(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0;
}

/* Every tensor of `expect` (F32) is in `path` with the same shape and the
 * same fp32 values after st_read_f32. */
static int compare_with_expected(const char *path, const char *expect, char *why, size_t n) {
  st_file g, e;
  if (st_open(&g, path) != 0) {
    snprintf(why, n, "st_open(%s) failed: %s", path, vlm_last_error());
    return 0;
  }
  if (st_open(&e, expect) != 0) {
    st_close(&g);
    snprintf(why, n, "st_open(%s) failed", expect);
    return 0;
  }
  int ok = g.n == e.n;
  if (!ok) snprintf(why, n, "%d tensors, expected %d", g.n, e.n);
  long total = 0;
  for (int i = 0; ok && i < e.n; i++) {
    const st_tensor *te = &e.t[i];
    int j = st_find(&g, te->name);
    if (j < 0) {
      snprintf(why, n, "tensor %s missing", te->name);
      ok = 0;
      break;
    }
    const st_tensor *tg = &g.t[j];
    ok = tg->ndim == te->ndim && tg->numel == te->numel;
    for (int d = 0; ok && d < te->ndim; d++) ok = tg->shape[d] == te->shape[d];
    if (!ok) {
      snprintf(why, n, "tensor %s: shape differs", te->name);
      break;
    }
    float *a = malloc((size_t)(te->numel + 1) * 4), *b = malloc((size_t)(te->numel + 1) * 4);
    ok = st_read_f32(&g, j, a) == 0 && st_read_f32(&e, i, b) == 0;
    for (long k = 0; ok && k < te->numel; k++)
      if (!same_value(a[k], b[k])) {
        snprintf(why, n, "tensor %s[%ld]: %.9g (0x%08x), expected %.9g (0x%08x)", te->name, k, a[k],
                 bits(a[k]), b[k], bits(b[k]));
        ok = 0;
      }
    total += te->numel;
    free(a);
    free(b);
  }
  if (ok) snprintf(why, n, "%d tensors, %ld values", e.n, total);
  st_close(&g);
  st_close(&e);
  return ok;
}

static void test_valid_files(void) {
  const char *names[] = {"f32", "bf16", "f16", "mixed", "empty"};
  for (int i = 0; i < 5; i++) {
    char p[256], q[256], why[512];
    snprintf(p, sizeof p, "io/st/good_%s.safetensors", names[i]);
    snprintf(q, sizeof q, "io/st/good_%s.expect.safetensors", names[i]);
    int ok = compare_with_expected(p, q, why, sizeof why);
    check(ok, "%s reads back exactly (%s)", p, why);
  }
  st_file f;
  int ok = st_open(&f, "io/st/good_f32.safetensors") == 0;
  if (ok) {
    int b = st_find(&f, "b"), c = st_find(&f, "c"), d = st_find(&f, "d");
    float x = 0;
    ok = b >= 0 && c >= 0 && d >= 0 && f.t[b].ndim == 0 && f.t[b].numel == 1 &&
         st_read_f32(&f, b, &x) == 0 && x == 3.25f && f.t[c].numel == 0 && f.t[c].ndim == 2 &&
         f.t[d].ndim == 3 && f.t[d].shape[2] == 2 && f.t[b].dtype == ST_F32 &&
         st_find(&f, "__metadata__") < 0 && st_find(&f, "nope") < 0 &&
         f.data_start == 8 + f.header_len;
    st_close(&f);
  }
  check(ok, "scalar [] and empty [0, 5] tensors, __metadata__ is not a tensor, st_find");
  ok = st_open(&f, "io/st/good_mixed.safetensors") == 0;
  if (ok) {
    int z = st_find(&f, "z.first_in_header"), y = st_find(&f, "y.bf16"), x = st_find(&f, "x.f16");
    ok = z >= 0 && y >= 0 && x >= 0 && f.t[z].dtype == ST_F32 && f.t[y].dtype == ST_BF16 &&
         f.t[x].dtype == ST_F16 && f.t[x].begin == 0 && f.t[z].begin > f.t[y].begin;
    vlm_set_quiet_errors(1);
    float dummy;
    ok = ok && st_read_f32(&f, f.n, &dummy) != 0 && strstr(vlm_last_error(), "out of range");
    vlm_set_quiet_errors(0);
    st_close(&f);
  }
  check(ok, "mixed dtypes with data order different from header order; bad index rejected");
}

static void test_bad_files(void) {
  char *text = NULL;
  if (config_read_file("io/st/bad_cases.json", &text, NULL) != 0) {
    check(0, "io/st/bad_cases.json readable");
    return;
  }
  cJSON *cases = cJSON_Parse(text);
  free(text);
  const cJSON *c;
  int n = 0;
  vlm_set_quiet_errors(1);
  cJSON_ArrayForEach(c, cases) {
    const char *file = cJSON_GetObjectItem(c, "file")->valuestring;
    const char *expect = cJSON_GetObjectItem(c, "expect")->valuestring;
    char path[512];
    snprintf(path, sizeof path, "io/st/%s", file);
    st_file f;
    int rc = st_open(&f, path);
    const char *msg = vlm_last_error();
    int ok = rc != 0 && strstr(msg, expect) && strstr(msg, path) && f.fd == -1 && f.t == NULL;
    check(ok, "%s rejected", file);
    printf("       -> %s\n", rc ? msg : "(accepted!)");
    if (rc == 0) st_close(&f);
    n++;
  }
  vlm_set_quiet_errors(0);
  cJSON_Delete(cases);
  check(n >= 20, "%d bad files tried", n);
  vlm_set_quiet_errors(1);
  st_file f;
  int rc = st_open(&f, "io/st/no_such_file.safetensors");
  vlm_set_quiet_errors(0);
  check(rc != 0 && strstr(vlm_last_error(), "cannot open"), "a missing file is named");
}

/* ---- writer ---------------------------------------------------------------- */

#define NW 1000
static float g_w[NW];
static float g_spec[32];
static int g_nspec;

static void make_values(void) {
  for (int i = 0; i < NW; i++) g_w[i] = (float)((i - 500) * 0.0137);
  const float s[] = {0.0f, -0.0f, 1.0f, -1.0f, INFINITY, -INFINITY, NAN, FLT_MAX, -FLT_MAX,
                     1e-40f, -1e-45f, FLT_MIN,
                     1.0f + 0x1p-8f,          /* bf16 tie -> 1 (even) */
                     1.0f + 3 * 0x1p-8f,      /* bf16 tie -> 1 + 2^-6 */
                     1.0f + 0x1p-8f + 0x1p-20f, /* above the tie -> up */
                     1.0f + 0x1p-11f,         /* f16 tie -> 1 */
                     1.0f + 3 * 0x1p-11f,     /* f16 tie -> 1 + 2^-9 */
                     65504.0f, 65519.0f, 65520.0f, 70000.0f,
                     0x1p-25f,                /* f16: tie between 0 and 2^-24 -> 0 */
                     0x1.8p-25f,              /* -> 2^-24 */
                     0x1.8p-24f,              /* f16 subnormal tie -> 2^-23 (even) */
                     0x1p-14f, 0x1.ffcp-15f, 3.14159265f, -2.71828f, 1234.5678f};
  g_nspec = (int)(sizeof s / sizeof s[0]);
  memcpy(g_spec, s, sizeof s);
}

static float g_scalar = 0.5f;

static int write_set(const char *path, st_dtype dt) {
  st_write_item items[4] = {
      {.name = "w.a", .data = g_w, .ndim = 2, .shape = {10, 100}},
      {.name = "w.specials", .data = g_spec, .ndim = 1, .shape = {g_nspec}},
      {.name = "w.scalar", .data = &g_scalar, .ndim = 0},
      {.name = "we\"ird\\name/\xc3\xa9", .data = NULL, .ndim = 2, .shape = {0, 3}},
  };
  return st_write(path, items, 4, dt);
}

static float read_one(const char *path, const char *name, int k) {
  st_file f;
  float v = NAN;
  if (st_open(&f, path) != 0) return v;
  int i = st_find(&f, name);
  if (i >= 0) {
    float *x = malloc((size_t)(f.t[i].numel + 1) * 4);
    if (st_read_f32(&f, i, x) == 0) v = x[k];
    free(x);
  }
  st_close(&f);
  return v;
}

static void test_writer(void) {
  make_values();
  const char *paths[] = {"io/st/w_f32.safetensors", "io/st/w_bf16.safetensors",
                         "io/st/w_f16.safetensors"};
  st_dtype dts[] = {ST_F32, ST_BF16, ST_F16};
  for (int i = 0; i < 3; i++) {
    unlink(paths[i]);
    int rc = write_set(paths[i], dts[i]);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", paths[i]);
    st_file f;
    int ok = rc == 0 && !exists(tmp) && st_open(&f, paths[i]) == 0;
    if (ok) {
      ok = f.n == 4 && (8 + f.header_len) % 8 == 0 && f.t[0].dtype == dts[i] &&
           st_find(&f, "we\"ird\\name/\xc3\xa9") == 3 && f.t[2].ndim == 0;
      st_close(&f);
    }
    check(ok, "st_write %s: reads back, header 8-byte aligned, escaped name, no .tmp left",
          paths[i]);
  }
  /* F32 bit-exact */
  st_file f;
  int ok = st_open(&f, paths[0]) == 0;
  if (ok) {
    float a[NW], s[32];
    ok = st_read_f32(&f, st_find(&f, "w.a"), a) == 0 &&
         st_read_f32(&f, st_find(&f, "w.specials"), s) == 0;
    for (int i = 0; ok && i < NW; i++) ok = bits(a[i]) == bits(g_w[i]);
    for (int i = 0; ok && i < g_nspec; i++) ok = same_value(s[i], g_spec[i]);
    st_close(&f);
  }
  check(ok, "F32 round-trips bit-exactly (NaN, inf, -0, subnormals)");
  /* known roundings (all cases are checked against torch/numpy by verify_safetensors.py) */
  const char *b = paths[1], *h = paths[2];
  check(read_one(b, "w.specials", 12) == 1.0f && read_one(b, "w.specials", 13) == 1.0f + 0x1p-6f &&
            read_one(b, "w.specials", 14) == 1.0f + 0x1p-7f && isinf(read_one(b, "w.specials", 7)) &&
            isnan(read_one(b, "w.specials", 6)) && bits(read_one(b, "w.specials", 1)) == 0x80000000u,
        "BF16: ties to even, above-tie up, FLT_MAX -> inf, NaN stays NaN, -0 kept");
  check(read_one(h, "w.specials", 15) == 1.0f && read_one(h, "w.specials", 16) == 1.0f + 0x1p-9f &&
            read_one(h, "w.specials", 17) == 65504.0f && read_one(h, "w.specials", 18) == 65504.0f &&
            isinf(read_one(h, "w.specials", 19)) && read_one(h, "w.specials", 21) == 0.0f &&
            read_one(h, "w.specials", 22) == 0x1p-24f && read_one(h, "w.specials", 23) == 0x1p-23f &&
            read_one(h, "w.specials", 24) == 0x1p-14f,
        "F16: ties to even, 65519 -> 65504, 65520 -> inf, subnormal ties, 2^-25 -> 0");

  /* overwrite an existing file */
  g_scalar = 1.5f;
  check(write_set(paths[0], ST_F32) == 0 && read_one(paths[0], "w.scalar", 0) == 1.5f,
        "st_write replaces an existing file");
  g_scalar = 0.5f;
  write_set(paths[0], ST_F32);

  vlm_set_quiet_errors(1);
  int rc = write_set("io/st/no_such_dir/x.safetensors", ST_F32);
  check(rc != 0 && strstr(vlm_last_error(), "no_such_dir") &&
            !exists("io/st/no_such_dir/x.safetensors"),
        "writing into a missing directory fails, naming the path");
  mkdir("io/st/a_directory.safetensors", 0755);
  rc = write_set("io/st/a_directory.safetensors", ST_F32); /* rename onto a directory fails */
  check(rc != 0 && !exists("io/st/a_directory.safetensors.tmp"),
        "a failure after writing the data removes PATH.tmp (%s)", vlm_last_error());
  float one = 1;
  st_write_item dup[2] = {{.name = "x", .data = &one, .ndim = 0}, {.name = "x", .data = &one, .ndim = 0}};
  rc = st_write("io/st/dup.safetensors", dup, 2, ST_F32);
  check(rc != 0 && strstr(vlm_last_error(), "\"x\" given twice") && !exists("io/st/dup.safetensors"),
        "duplicate tensor names rejected before anything is written");
  char longname[300];
  memset(longname, 'n', 299);
  longname[299] = '\0';
  st_write_item lng = {.name = longname, .data = &one, .ndim = 0};
  rc = st_write("io/st/long.safetensors", &lng, 1, ST_F32);
  check(rc != 0 && strstr(vlm_last_error(), "longer than"), "over-long tensor name rejected");
  vlm_set_quiet_errors(0);
}

int main(void) {
  test_valid_files();
  test_bad_files();
  test_writer();
  printf("%d passed, %d failed\n", n_pass, n_fail);
  return n_fail ? 1 : 0;
}
