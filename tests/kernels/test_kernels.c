/* tests/kernels/test_kernels.c: the CPU kernels of kernels/kernels.h (all but attention)
 * against PyTorch.
 *
 * Reads the cases that gen_kernel_cases.py wrote into kernel_cases.h5 (argv[1], default
 * in the working directory), runs every kernel forward and backward and prints one line
 * per check with its relative error max|got - want| / max|want|. Tolerances: 1e-5 for
 * forwards, 1e-4 for gradients. Besides the values it checks the contract: backward
 * ACCUMULATES (gradients pre-filled with a pattern must come back as pattern + gradient)
 * and a NULL gradient is skipped (each gradient computed alone matches). Ends with
 * "P passed, F failed" and a non-zero exit status if anything failed. */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

#define TOL_FWD 1e-5
#define TOL_GRAD 1e-4

static int n_pass, n_fail;
static hid_t h5file = -1;

/* ---- bookkeeping: allocations of one case, freed together ---- */
#define MAX_TRACKED 64
static void *tracked[MAX_TRACKED];
static int n_tracked;

static void die(const char *what) {
  fprintf(stderr, "test_kernels: %s\n", what);
  exit(2);
}

static void *track(void *p) {
  if (!p) die("out of memory");
  if (n_tracked == MAX_TRACKED) die("too many buffers in one case (raise MAX_TRACKED)");
  tracked[n_tracked++] = p;
  return p;
}

static void free_case(void) {
  for (int i = 0; i < n_tracked; i++) free(tracked[i]);
  n_tracked = 0;
}

static float *fzeros(size_t n) { return track(calloc(n ? n : 1, sizeof(float))); }

static float *fcopy(const float *src, size_t n) {
  float *p = fzeros(n);
  memcpy(p, src, n * sizeof(float));
  return p;
}

/* A deterministic non-zero pattern for the accumulate checks. */
static float *fpattern(size_t n) {
  float *p = fzeros(n);
  for (size_t i = 0; i < n; i++) p[i] = 0.5f * sinf(0.37f * (float)i + 1.0f);
  return p;
}

/* ---- HDF5 access ---- */
static hid_t open_case(const char *name) {
  hid_t g = H5Gopen2(h5file, name, H5P_DEFAULT);
  if (g < 0) {
    fprintf(stderr, "test_kernels: case %s missing from the HDF5 file\n", name);
    exit(2);
  }
  return g;
}

static size_t ds_size(hid_t ds) {
  hid_t sp = H5Dget_space(ds);
  hssize_t n = H5Sget_simple_extent_npoints(sp);
  H5Sclose(sp);
  return (size_t)n;
}

static void *read_ds(hid_t g, const char *name, hid_t memtype, size_t elsize, size_t *n_out) {
  hid_t ds = H5Dopen2(g, name, H5P_DEFAULT);
  if (ds < 0) {
    fprintf(stderr, "test_kernels: dataset %s missing\n", name);
    exit(2);
  }
  size_t n = ds_size(ds);
  void *p = track(calloc(n ? n : 1, elsize));
  if (H5Dread(ds, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, p) < 0) die("H5Dread failed");
  H5Dclose(ds);
  if (n_out) *n_out = n;
  return p;
}

static float *rf(hid_t g, const char *name) {
  return read_ds(g, name, H5T_NATIVE_FLOAT, sizeof(float), NULL);
}
static int *ri(hid_t g, const char *name) {
  return read_ds(g, name, H5T_NATIVE_INT, sizeof(int), NULL);
}
static double *rd(hid_t g, const char *name) {
  return read_ds(g, name, H5T_NATIVE_DOUBLE, sizeof(double), NULL);
}

static void read_attr(hid_t g, const char *name, hid_t memtype, void *out) {
  hid_t a = H5Aopen(g, name, H5P_DEFAULT);
  if (a < 0 || H5Aread(a, memtype, out) < 0) {
    fprintf(stderr, "test_kernels: attribute %s missing\n", name);
    exit(2);
  }
  H5Aclose(a);
}
static int ai(hid_t g, const char *name) {
  long v;
  read_attr(g, name, H5T_NATIVE_LONG, &v);
  return (int)v;
}
static double ad(hid_t g, const char *name) {
  double v;
  read_attr(g, name, H5T_NATIVE_DOUBLE, &v);
  return v;
}

/* ---- comparisons ---- */
static double relerr(const float *got, const float *want, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)got[i] - (double)want[i]);
    if (!(d <= num)) num = d; /* NaN propagates */
    if (fabs((double)want[i]) > den) den = fabs((double)want[i]);
  }
  return den > 0.0 ? num / den : num;
}

static void report(const char *cs, const char *what, double err, double tol) {
  int ok = err <= tol; /* false for NaN */
  printf("%-4s %-28s %-26s err %.3e (tol %.0e)\n", ok ? "ok" : "FAIL", cs, what, err, tol);
  if (ok)
    n_pass++;
  else
    n_fail++;
}

static void check(const char *cs, const char *what, const float *got, const float *want, size_t n,
                  double tol) {
  report(cs, what, relerr(got, want, n), tol);
}

/* got must equal base + want (the backward added want into a buffer holding base). */
static void check_accum(const char *cs, const char *what, const float *got, const float *base,
                        const float *want, size_t n) {
  float *sum = fzeros(n);
  for (size_t i = 0; i < n; i++) sum[i] = base[i] + want[i];
  check(cs, what, got, sum, n, TOL_GRAD);
}

/* ---- dense layers ---- */
static void test_linear(const char *cs) {
  hid_t g = open_case(cs);
  int N = ai(g, "N"), I = ai(g, "I"), O = ai(g, "O");
  float *in = rf(g, "inp"), *W = rf(g, "W"), *b = rf(g, "b"), *dout = rf(g, "dout");
  float *out = fzeros((size_t)N * O);
  linear_forward(out, in, W, b, N, I, O);
  check(cs, "forward", out, rf(g, "out"), (size_t)N * O, TOL_FWD);
  linear_forward(out, in, W, NULL, N, I, O);
  check(cs, "forward (b NULL)", out, rf(g, "out_nobias"), (size_t)N * O, TOL_FWD);

  size_t nI = (size_t)N * I, nW = (size_t)O * I;
  float *e_din = rf(g, "din"), *e_dW = rf(g, "dW"), *e_db = rf(g, "db");
  float *din = fzeros(nI), *dW = fzeros(nW), *db = fzeros(O);
  linear_backward(din, dW, db, dout, in, W, N, I, O);
  check(cs, "din", din, e_din, nI, TOL_GRAD);
  check(cs, "dW", dW, e_dW, nW, TOL_GRAD);
  check(cs, "db", db, e_db, O, TOL_GRAD);

  float *bin = fpattern(nI), *bW = fpattern(nW), *bb = fpattern(O);
  float *ain = fcopy(bin, nI), *aW = fcopy(bW, nW), *ab = fcopy(bb, O);
  linear_backward(ain, aW, ab, dout, in, W, N, I, O);
  check_accum(cs, "din accumulates", ain, bin, e_din, nI);
  check_accum(cs, "dW accumulates", aW, bW, e_dW, nW);
  check_accum(cs, "db accumulates", ab, bb, e_db, O);

  float *d1 = fzeros(nI), *d2 = fzeros(nW), *d3 = fzeros(O);
  linear_backward(d1, NULL, NULL, dout, in, W, N, I, O);
  linear_backward(NULL, d2, NULL, dout, in, W, N, I, O);
  linear_backward(NULL, NULL, d3, dout, in, W, N, I, O);
  check(cs, "din alone (dW,db NULL)", d1, e_din, nI, TOL_GRAD);
  check(cs, "dW alone (din,db NULL)", d2, e_dW, nW, TOL_GRAD);
  check(cs, "db alone (din,dW NULL)", d3, e_db, O, TOL_GRAD);
  H5Gclose(g);
  free_case();
}

static void test_matmul(const char *cs) {
  hid_t g = open_case(cs);
  int N = ai(g, "N"), I = ai(g, "I"), O = ai(g, "O");
  float *in = rf(g, "inp"), *P = rf(g, "P"), *dout = rf(g, "dout");
  size_t nI = (size_t)N * I, nP = (size_t)I * O;
  float *out = fzeros((size_t)N * O);
  matmul_forward(out, in, P, N, I, O);
  check(cs, "forward", out, rf(g, "out"), (size_t)N * O, TOL_FWD);
  float *e_din = rf(g, "din"), *e_dP = rf(g, "dP");
  float *bin = fpattern(nI), *bP = fpattern(nP);
  float *ain = fcopy(bin, nI), *aP = fcopy(bP, nP);
  matmul_backward(ain, aP, dout, in, P, N, I, O);
  check_accum(cs, "din accumulates", ain, bin, e_din, nI);
  check_accum(cs, "dP accumulates", aP, bP, e_dP, nP);
  float *d1 = fzeros(nI), *d2 = fzeros(nP);
  matmul_backward(d1, NULL, dout, in, P, N, I, O);
  matmul_backward(NULL, d2, dout, in, P, N, I, O);
  check(cs, "din alone (dP NULL)", d1, e_din, nI, TOL_GRAD);
  check(cs, "dP alone (din NULL)", d2, e_dP, nP, TOL_GRAD);
  H5Gclose(g);
  free_case();
}

/* ---- normalisation ---- */
static void test_layernorm(const char *cs) {
  hid_t g = open_case(cs);
  int N = ai(g, "N"), C = ai(g, "C");
  float eps = (float)ad(g, "eps");
  size_t n = (size_t)N * C;
  float *in = rf(g, "inp"), *w = rf(g, "w"), *b = rf(g, "b"), *dout = rf(g, "dout");
  float *out = fzeros(n), *mean = fzeros(N), *rstd = fzeros(N);
  layernorm_forward(out, mean, rstd, in, w, b, N, C, eps);
  check(cs, "forward", out, rf(g, "out"), n, TOL_FWD);
  check(cs, "mean", mean, rf(g, "mean"), N, TOL_FWD);
  check(cs, "rstd", rstd, rf(g, "rstd"), N, TOL_FWD);
  float *e_din = rf(g, "din"), *e_dw = rf(g, "dw"), *e_db = rf(g, "db");
  float *din = fzeros(n), *dw = fzeros(C), *db = fzeros(C);
  layernorm_backward(din, dw, db, dout, in, w, mean, rstd, N, C);
  check(cs, "din", din, e_din, n, TOL_GRAD);
  check(cs, "dw", dw, e_dw, C, TOL_GRAD);
  check(cs, "db", db, e_db, C, TOL_GRAD);
  float *bin = fpattern(n), *bw = fpattern(C), *bb = fpattern(C);
  float *ain = fcopy(bin, n), *aw = fcopy(bw, C), *ab = fcopy(bb, C);
  layernorm_backward(ain, aw, ab, dout, in, w, mean, rstd, N, C);
  check_accum(cs, "din accumulates", ain, bin, e_din, n);
  check_accum(cs, "dw accumulates", aw, bw, e_dw, C);
  check_accum(cs, "db accumulates", ab, bb, e_db, C);
  float *d1 = fzeros(n), *d2 = fzeros(C), *d3 = fzeros(C);
  layernorm_backward(d1, NULL, NULL, dout, in, w, mean, rstd, N, C);
  layernorm_backward(NULL, d2, NULL, dout, in, w, mean, rstd, N, C);
  layernorm_backward(NULL, NULL, d3, dout, in, w, mean, rstd, N, C);
  check(cs, "din alone (dw,db NULL)", d1, e_din, n, TOL_GRAD);
  check(cs, "dw alone (din,db NULL)", d2, e_dw, C, TOL_GRAD);
  check(cs, "db alone (din,dw NULL)", d3, e_db, C, TOL_GRAD);
  H5Gclose(g);
  free_case();
}

static void test_rmsnorm(const char *cs) {
  hid_t g = open_case(cs);
  int N = ai(g, "N"), C = ai(g, "C");
  float eps = (float)ad(g, "eps");
  size_t n = (size_t)N * C;
  float *in = rf(g, "inp"), *w = rf(g, "w"), *dout = rf(g, "dout");
  float *out = fzeros(n), *rstd = fzeros(N);
  rmsnorm_forward(out, rstd, in, w, N, C, eps);
  check(cs, "forward", out, rf(g, "out"), n, TOL_FWD);
  check(cs, "rstd", rstd, rf(g, "rstd"), N, TOL_FWD);
  float *e_din = rf(g, "din"), *e_dw = rf(g, "dw");
  float *bin = fpattern(n), *bw = fpattern(C);
  float *ain = fcopy(bin, n), *aw = fcopy(bw, C);
  rmsnorm_backward(ain, aw, dout, in, w, rstd, N, C);
  check_accum(cs, "din accumulates", ain, bin, e_din, n);
  check_accum(cs, "dw accumulates", aw, bw, e_dw, C);
  float *d1 = fzeros(n), *d2 = fzeros(C);
  rmsnorm_backward(d1, NULL, dout, in, w, rstd, N, C);
  rmsnorm_backward(NULL, d2, dout, in, w, rstd, N, C);
  check(cs, "din alone (dw NULL)", d1, e_din, n, TOL_GRAD);
  check(cs, "dw alone (din NULL)", d2, e_dw, C, TOL_GRAD);
  H5Gclose(g);
  free_case();
}

/* ---- activations ---- */
static void test_gelu(const char *cs) {
  hid_t g = open_case(cs);
  long n = ai(g, "n");
  float *in = rf(g, "inp"), *dout = rf(g, "dout"), *out = fzeros(n);
  gelu_forward(out, in, n);
  check(cs, "forward", out, rf(g, "out"), n, TOL_FWD);
  float *e_din = rf(g, "din"), *din = fzeros(n), *base = fpattern(n), *acc = fcopy(base, n);
  gelu_backward(din, dout, in, n);
  check(cs, "din", din, e_din, n, TOL_GRAD);
  gelu_backward(acc, dout, in, n);
  check_accum(cs, "din accumulates", acc, base, e_din, n);
  H5Gclose(g);
  free_case();
}

static void test_swiglu(const char *cs) {
  hid_t g = open_case(cs);
  long n = ai(g, "n");
  float *a = rf(g, "a"), *gt = rf(g, "g"), *dout = rf(g, "dout"), *out = fzeros(n);
  swiglu_forward(out, a, gt, n);
  check(cs, "forward", out, rf(g, "out"), n, TOL_FWD);
  float *e_da = rf(g, "da"), *e_dg = rf(g, "dg");
  float *ba = fpattern(n), *bg = fpattern(n), *da = fcopy(ba, n), *dg = fcopy(bg, n);
  swiglu_backward(da, dg, dout, a, gt, n);
  check_accum(cs, "da accumulates", da, ba, e_da, n);
  check_accum(cs, "dg accumulates", dg, bg, e_dg, n);
  float *d1 = fzeros(n), *d2 = fzeros(n);
  swiglu_backward(d1, NULL, dout, a, gt, n);
  swiglu_backward(NULL, d2, dout, a, gt, n);
  check(cs, "da alone (dg NULL)", d1, e_da, n, TOL_GRAD);
  check(cs, "dg alone (da NULL)", d2, e_dg, n, TOL_GRAD);
  H5Gclose(g);
  free_case();
}

static void test_softmax(const char *cs) {
  hid_t g = open_case(cs);
  int N = ai(g, "N"), C = ai(g, "C");
  size_t n = (size_t)N * C;
  float *in = rf(g, "inp"), *dout = rf(g, "dout"), *e_out = rf(g, "out"), *out = fzeros(n);
  softmax_forward(out, in, N, C);
  check(cs, "forward", out, e_out, n, TOL_FWD);
  float *inplace = fcopy(in, n);
  softmax_forward(inplace, inplace, N, C);
  check(cs, "forward in place", inplace, e_out, n, TOL_FWD);
  float *e_din = rf(g, "din"), *base = fpattern(n), *acc = fcopy(base, n), *din = fzeros(n);
  softmax_backward(din, dout, out, N, C);
  check(cs, "din", din, e_din, n, TOL_GRAD);
  softmax_backward(acc, dout, out, N, C);
  check_accum(cs, "din accumulates", acc, base, e_din, n);
  H5Gclose(g);
  free_case();
}

/* ---- rotary embedding ---- */
static void test_rope(const char *cs) {
  hid_t g = open_case(cs);
  int T = ai(g, "T"), H = ai(g, "H"), D = ai(g, "D"), R = ai(g, "R"), ld = ai(g, "ld");
  float base = (float)ad(g, "base");
  size_t n = (size_t)T * ld;
  int *pos = ri(g, "pos");
  float *x = fcopy(rf(g, "inp"), n);
  rope_forward(x, pos, T, H, D, R, ld, base);
  check(cs, "forward (whole rows)", x, rf(g, "out"), n, TOL_FWD);
  float *dx = fcopy(rf(g, "dout"), n);
  rope_backward(dx, pos, T, H, D, R, ld, base);
  check(cs, "backward (whole rows)", dx, rf(g, "din"), n, TOL_GRAD);
  H5Gclose(g);
  free_case();
}

/* ---- loss ---- */
static void test_cross_entropy(const char *cs) {
  hid_t g = open_case(cs);
  int N = ai(g, "N"), V = ai(g, "V"), want_valid = ai(g, "n_valid");
  float scale = (float)ad(g, "grad_scale");
  double want_loss = ad(g, "loss");
  size_t n = (size_t)N * V;
  float *logits = rf(g, "logits"), *e_d = rf(g, "dlogits");
  int *tg = ri(g, "targets");
  float *d = fpattern(n); /* written, not accumulated: ignored rows must come back 0 */
  int nv = -1;
  double loss = cross_entropy_forward_backward(d, logits, tg, N, V, scale, &nv);
  report(cs, "loss (sum)", fabs(loss - want_loss) / fabs(want_loss), TOL_FWD);
  report(cs, "n_valid", nv == want_valid ? 0.0 : 1.0, 0.0);
  check(cs, "dlogits (written)", d, e_d, n, TOL_GRAD);
  float *alias = fcopy(logits, n);
  double loss2 = cross_entropy_forward_backward(alias, alias, tg, N, V, scale, &nv);
  report(cs, "loss, dlogits aliasing", fabs(loss2 - want_loss) / fabs(want_loss), TOL_FWD);
  check(cs, "dlogits aliasing logits", alias, e_d, n, TOL_GRAD);
  double loss3 = cross_entropy_forward_backward(NULL, logits, tg, N, V, scale, &nv);
  report(cs, "loss, dlogits NULL", fabs(loss3 - want_loss) / fabs(want_loss), TOL_FWD);
  H5Gclose(g);
  free_case();
}

/* ---- image ops ---- */
static void test_im2col(const char *cs) {
  hid_t g = open_case(cs);
  int Himg = ai(g, "Himg"), Wimg = ai(g, "Wimg"), y0 = ai(g, "y0"), x0 = ai(g, "x0");
  int win = ai(g, "win"), p = ai(g, "p"), width = ai(g, "width");
  int G = win / p, K = 3 * p * p;
  float *cols = fzeros((size_t)G * G * K), *conv = fzeros((size_t)G * G * width);
  patch_im2col(cols, rf(g, "img"), Himg, Wimg, y0, x0, win, p);
  check(cs, "cols (F.unfold)", cols, rf(g, "cols"), (size_t)G * G * K, 0.0);
  linear_forward(conv, cols, rf(g, "Wc"), NULL, G * G, K, width);
  check(cs, "conv1 as linear (F.conv2d)", conv, rf(g, "conv"), (size_t)G * G * width, TOL_FWD);
  H5Gclose(g);
  free_case();
}

static void test_bicubic_matrix(const char *cs) {
  hid_t g = open_case(cs);
  int out_n = ai(g, "out_n"), in_n = ai(g, "in_n");
  float *M = fzeros((size_t)out_n * in_n);
  bicubic_matrix(M, out_n, in_n);
  check(cs, "matrix", M, rf(g, "M"), (size_t)out_n * in_n, TOL_FWD);
  H5Gclose(g);
  free_case();
}

static void test_bicubic_resize(const char *cs) {
  hid_t g = open_case(cs);
  int Hi = ai(g, "Hi"), Wi = ai(g, "Wi"), Ho = ai(g, "Ho"), Wo = ai(g, "Wo"), C = ai(g, "C");
  size_t ni = (size_t)Hi * Wi * C, no = (size_t)Ho * Wo * C;
  float *tmp = fzeros((size_t)Ho * Wi * C), *out = fzeros(no);
  bicubic_resize_forward(out, rf(g, "inp"), Hi, Wi, Ho, Wo, C, tmp);
  check(cs, "forward", out, rf(g, "out"), no, TOL_FWD);
  float *dout = rf(g, "dout"), *e_din = rf(g, "din");
  float *din = fzeros(ni), *base = fpattern(ni), *acc = fcopy(base, ni);
  bicubic_resize_backward(din, dout, Hi, Wi, Ho, Wo, C, tmp);
  check(cs, "din", din, e_din, ni, TOL_GRAD);
  bicubic_resize_backward(acc, dout, Hi, Wi, Ho, Wo, C, tmp);
  check_accum(cs, "din accumulates", acc, base, e_din, ni);
  H5Gclose(g);
  free_case();
}

static void test_sincos(const char *cs) {
  hid_t g = open_case(cs);
  int G = ai(g, "G"), dim = ai(g, "dim");
  float *t = fzeros((size_t)G * G * dim);
  sincos_2d_table(t, G, dim);
  check(cs, "table", t, rf(g, "table"), (size_t)G * G * dim, TOL_FWD);
  H5Gclose(g);
  free_case();
}

/* ---- optimizer ---- */
static void test_adamw(const char *cs) {
  hid_t g = open_case(cs);
  long n = ai(g, "n");
  int steps = ai(g, "steps");
  float lr = (float)ad(g, "lr"), b1 = (float)ad(g, "beta1"), b2 = (float)ad(g, "beta2");
  float eps = (float)ad(g, "eps"), wd = (float)ad(g, "wd"), gscale = (float)ad(g, "gscale");
  float *p = fcopy(rf(g, "p0"), n), *grads = rf(g, "grads"), *e_p = rf(g, "p");
  float *m = fzeros(n), *v = fzeros(n), *prev = fzeros(n), *dg = fzeros(n), *de = fzeros(n);
  char what[64];
  for (int s = 0; s < steps; s++) {
    memcpy(prev, p, n * sizeof(float));
    const float *want = s == 0 ? rf(g, "p0") : e_p + (size_t)(s - 1) * n;
    adamw_step(p, grads + (size_t)s * n, m, v, n, lr, b1, b2, eps, wd, s + 1, gscale);
    snprintf(what, sizeof what, "step %d params", s + 1);
    check(cs, what, p, e_p + (size_t)s * n, n, TOL_FWD);
    for (long i = 0; i < n; i++) {
      dg[i] = p[i] - prev[i];
      de[i] = e_p[(size_t)s * n + i] - want[i];
    }
    snprintf(what, sizeof what, "step %d update", s + 1);
    check(cs, what, dg, de, n, TOL_GRAD);
  }
  check(cs, "exp_avg after 5", m, rf(g, "m"), n, TOL_FWD);
  check(cs, "exp_avg_sq after 5", v, rf(g, "v"), n, TOL_FWD);
  H5Gclose(g);
  free_case();
}

static void test_sum_squares_scale(const char *cs) {
  hid_t g = open_case(cs);
  long n = ai(g, "n");
  double want = ad(g, "ss");
  float *x = rf(g, "x");
  report(cs, "sum_squares", fabs(sum_squares(x, n) - want) / want, 1e-12);
  float *y = fcopy(x, n), *e = fzeros(n);
  scale_inplace(y, n, 0.3f);
  for (long i = 0; i < n; i++) e[i] = x[i] * 0.3f;
  check(cs, "scale_inplace", y, e, n, 0.0);
  H5Gclose(g);
  free_case();
}

static void test_lr(const char *cs) {
  hid_t g = open_case(cs);
  int warmup = ai(g, "warmup"), total = ai(g, "total"), nsteps = ai(g, "nsteps");
  double cycles = ad(g, "cycles"), err = 0.0;
  double *want = rd(g, "lr");
  for (int s = 0; s < nsteps; s++) {
    double e = fabs(lr_cosine_with_warmup(s, warmup, total, cycles) - want[s]);
    if (!(e <= err)) err = e;
  }
  report(cs, "multiplier, every step", err, 1e-12);
  H5Gclose(g);
  free_case();
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "kernel_cases.h5";
  h5file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (h5file < 0) {
    fprintf(stderr, "test_kernels: cannot open %s (run gen_kernel_cases.py first)\n", path);
    return 2;
  }
  test_linear("linear_small");
  test_linear("linear_large");
  test_linear("linear_wide");
  test_linear("linear_rows1");
  test_linear("linear_rows3");
  test_linear("linear_rows4");
  test_linear("linear_rows2_wide");
  test_matmul("matmul_small");
  test_matmul("matmul_large");
  test_layernorm("layernorm_small");
  test_layernorm("layernorm_large");
  test_rmsnorm("rmsnorm_small");
  test_rmsnorm("rmsnorm_large");
  test_gelu("gelu");
  test_swiglu("swiglu");
  test_softmax("softmax_small");
  test_softmax("softmax_large");
  test_rope("rope_partial");
  test_rope("rope_full");
  test_rope("rope_wide");
  test_cross_entropy("xent_small");
  test_cross_entropy("xent_large");
  test_im2col("im2col");
  test_bicubic_matrix("bicubic_matrix_16_32");
  test_bicubic_matrix("bicubic_matrix_4_7");
  test_bicubic_matrix("bicubic_matrix_40_20");
  test_bicubic_matrix("bicubic_matrix_37_13");
  test_bicubic_matrix("bicubic_matrix_16_16");
  test_bicubic_matrix("bicubic_matrix_5_1");
  test_bicubic_resize("bicubic_up_16_32");
  test_bicubic_resize("bicubic_up_4_7");
  test_bicubic_resize("bicubic_down_40_20");
  test_bicubic_resize("bicubic_down_37x29_13x17");
  test_sincos("sincos_5_16");
  test_sincos("sincos_7_36");
  test_sincos("sincos_16_64");
  test_adamw("adamw");
  test_adamw("adamw_clipped"); /* gradient scaled by the clipping coefficient in the step */
  test_sum_squares_scale("sum_squares");
  test_lr("lr_half_cycle");
  test_lr("lr_no_warmup");
  H5Fclose(h5file);
  printf("%d passed, %d failed\n", n_pass, n_fail);
  return n_fail ? 1 : 0;
}
