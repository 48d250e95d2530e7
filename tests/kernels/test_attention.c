/* tests/kernels/test_attention.c: checks attention_forward/attention_backward
 * (kernels/cpu/attention.c) against PyTorch.
 *
 * Reads the cases written by gen_attention_cases.py (argv[1], default
 * attention_cases.h5 in the working directory): ViT per-head fused, LLM fused
 * causal and cross-attention layouts. Per case: the forward (out and lse), and
 * the backward run with the environment's thread count and with 7 threads (so
 * that heads < threads sends query-block groups through the partial dK/dV
 * buffers). Then: gradients accumulate onto non-zero buffers, and a NULL dk
 * leaves its part untouched. Scratch is filled with NaN before every call, so
 * reading scratch that was never written shows up as a failure.
 * Tolerance: max|a-b| / max|b| <= 1e-5 forward, <= 1e-4 gradients. */
#include "kernels/kernels.h"

#include <hdf5.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL_FWD 1e-5
#define TOL_BWD 1e-4
#define THREADS_MANY 7

enum { LAYOUT_VIT = 0, LAYOUT_LLM = 1, LAYOUT_CROSS = 2 };

static int n_pass, n_fail;

static void report(int ok, const char *what, const char *detail) {
  printf("%s: %s  %s\n", ok ? "ok  " : "FAIL", what, detail);
  if (ok)
    n_pass++;
  else
    n_fail++;
}

/* ---- HDF5 reading --------------------------------------------------------- */

static int read_int_attr(hid_t obj, const char *name, int *val) {
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  if (a < 0) return -1;
  herr_t e = H5Aread(a, H5T_NATIVE_INT, val);
  H5Aclose(a);
  return e < 0 ? -1 : 0;
}

static int read_float_attr(hid_t obj, const char *name, float *val) {
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  if (a < 0) return -1;
  herr_t e = H5Aread(a, H5T_NATIVE_FLOAT, val);
  H5Aclose(a);
  return e < 0 ? -1 : 0;
}

/* Reads dataset `name` of group g, which must hold exactly n floats; NULL on error. */
static float *read_floats(hid_t g, const char *name, size_t n) {
  hid_t d = H5Dopen2(g, name, H5P_DEFAULT);
  if (d < 0) {
    fprintf(stderr, "test_attention: dataset %s missing\n", name);
    return NULL;
  }
  hid_t sp = H5Dget_space(d);
  hssize_t np = H5Sget_simple_extent_npoints(sp);
  H5Sclose(sp);
  float *x = NULL;
  if (np != (hssize_t)n) {
    fprintf(stderr, "test_attention: dataset %s has %lld floats, expected %zu\n", name,
            (long long)np, n);
  } else {
    x = malloc(n * sizeof(float));
    if (x && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) < 0) {
      free(x);
      x = NULL;
    }
  }
  H5Dclose(d);
  return x;
}

/* ---- one case -------------------------------------------------------------- */

typedef struct {
  char name[96];
  int layout;
  attn_shape s;
  /* inputs: one fused buffer (qkv) or three (q, k, v); q/k/v point into them */
  float *qkv, *qx, *kx, *vx;
  const float *q, *k, *v;
  size_t nq, nk, nv; /* floats in the q, k, v buffers (nk = nv = 0 when fused) */
  float *dout, *out_ref, *lse_ref;
  float *dqkv_ref, *dq_ref, *dk_ref, *dv_ref;
  /* offsets of q, k, v inside a fused buffer (0 for separate buffers) */
  size_t off_q, off_k, off_v;
} attn_case;

static void free_case(attn_case *c) {
  float *bufs[] = {c->qkv, c->qx, c->kx, c->vx, c->dout, c->out_ref,
                   c->lse_ref, c->dqkv_ref, c->dq_ref, c->dk_ref, c->dv_ref};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
  memset(c, 0, sizeof *c);
}

static int load_case(hid_t file, int idx, attn_case *c) {
  memset(c, 0, sizeof *c);
  char gname[32];
  snprintf(gname, sizeof gname, "case%02d", idx);
  hid_t g = H5Gopen2(file, gname, H5P_DEFAULT);
  if (g < 0) return -1;
  int Tq, Tk, H, D, causal;
  float scale;
  int bad = read_int_attr(g, "layout", &c->layout) || read_int_attr(g, "Tq", &Tq) ||
            read_int_attr(g, "Tk", &Tk) || read_int_attr(g, "H", &H) ||
            read_int_attr(g, "D", &D) || read_int_attr(g, "causal", &causal) ||
            read_float_attr(g, "scale", &scale);
  if (bad || c->layout < LAYOUT_VIT || c->layout > LAYOUT_CROSS) {
    H5Gclose(g);
    return -1;
  }
  const int HD = H * D;
  static const char *lname[] = {"vit", "llm", "cross"};
  snprintf(c->name, sizeof c->name, "%s Tq=%d Tk=%d H=%d D=%d%s", lname[c->layout], Tq, Tk,
           H, D, causal ? " causal" : "");
  attn_shape s = {.Tq = Tq, .Tk = Tk, .H = H, .D = D, .causal = causal, .scale = scale};
  if (c->layout == LAYOUT_VIT || c->layout == LAYOUT_LLM) {
    c->nq = (size_t)Tq * 3 * HD;
    c->qkv = read_floats(g, "qkv", c->nq);
    c->dqkv_ref = read_floats(g, "dqkv", c->nq);
    bad = !c->qkv || !c->dqkv_ref;
    s.ldq = s.ldk = s.ldv = 3 * HD;
    if (c->layout == LAYOUT_VIT) { /* per head [q_h | k_h | v_h] */
      s.hsq = s.hsk = s.hsv = 3 * D;
      c->off_q = 0, c->off_k = D, c->off_v = 2 * (size_t)D;
    } else { /* [q | k | v] */
      s.hsq = s.hsk = s.hsv = D;
      c->off_q = 0, c->off_k = HD, c->off_v = 2 * (size_t)HD;
    }
    if (!bad) c->q = c->qkv + c->off_q, c->k = c->qkv + c->off_k, c->v = c->qkv + c->off_v;
  } else {
    c->nq = (size_t)Tq * HD, c->nk = c->nv = (size_t)Tk * HD;
    c->qx = read_floats(g, "q", c->nq);
    c->kx = read_floats(g, "k", c->nk);
    c->vx = read_floats(g, "v", c->nv);
    c->dq_ref = read_floats(g, "dq", c->nq);
    c->dk_ref = read_floats(g, "dk", c->nk);
    c->dv_ref = read_floats(g, "dv", c->nv);
    bad = !c->qx || !c->kx || !c->vx || !c->dq_ref || !c->dk_ref || !c->dv_ref;
    s.ldq = s.ldk = s.ldv = HD;
    s.hsq = s.hsk = s.hsv = D;
    c->q = c->qx, c->k = c->kx, c->v = c->vx;
  }
  c->dout = read_floats(g, "dout", (size_t)Tq * HD);
  c->out_ref = read_floats(g, "out", (size_t)Tq * HD);
  c->lse_ref = read_floats(g, "lse", (size_t)H * Tq);
  H5Gclose(g);
  c->s = s;
  if (bad || !c->dout || !c->out_ref || !c->lse_ref) {
    free_case(c);
    return -1;
  }
  return 0;
}

/* ---- comparisons ------------------------------------------------------------ */

/* max|a-b| / max|b| over elements (t, h, d) at x[t*ld + h*hs + d] of both. */
static double rel_err(const float *a, const float *b, int T, int H, int D, int ld, int hs) {
  double num = 0.0, den = 0.0;
  for (int t = 0; t < T; t++)
    for (int h = 0; h < H; h++)
      for (int d = 0; d < D; d++) {
        size_t i = (size_t)t * ld + (size_t)h * hs + d;
        double diff = fabs((double)a[i] - (double)b[i]);
        if (!(diff == diff)) diff = INFINITY; /* NaN fails */
        if (diff > num) num = diff;
        if (fabs((double)b[i]) > den) den = fabs((double)b[i]);
      }
  return den > 0 ? num / den : num;
}

/* Max |x| over the (t, h, d) elements of a strided tensor. */
static double max_abs(const float *x, int T, int H, int D, int ld, int hs) {
  double m = 0.0;
  for (int t = 0; t < T; t++)
    for (int h = 0; h < H; h++)
      for (int d = 0; d < D; d++) {
        double a = fabs((double)x[(size_t)t * ld + (size_t)h * hs + d]);
        if (!(a == a)) return INFINITY;
        if (a > m) m = a;
      }
  return m;
}

/* Scratch of attention_scratch_floats() floats, all NaN, followed by GUARD
 * floats of a sentinel that scratch_overrun() checks after the call (OpenBLAS
 * writes are not seen by the sanitizers). */
#define GUARD 256
#define SENTINEL 12345.0f

static float *nan_scratch(const attn_shape *s, size_t *n) {
  *n = attention_scratch_floats(s, omp_get_max_threads());
  float *w = malloc((*n + GUARD) * sizeof(float));
  if (w) {
    for (size_t i = 0; i < *n; i++) w[i] = NAN;
    for (size_t i = 0; i < GUARD; i++) w[*n + i] = SENTINEL;
  }
  return w;
}

static int scratch_overrun(const float *w, size_t n) {
  for (size_t i = 0; i < GUARD; i++)
    if (w[n + i] != SENTINEL) {
      fprintf(stderr, "test_attention: scratch overrun (%zu floats sized)\n", n);
      return 1;
    }
  return 0;
}

/* Gradient buffers of one run, laid out as the inputs. */
typedef struct {
  float *buf[3]; /* fused: buf[0] only; cross: dq, dk, dv */
  float *dq, *dk, *dv;
} grads;

static int alloc_grads(const attn_case *c, grads *g) {
  memset(g, 0, sizeof *g);
  if (c->qkv) {
    g->buf[0] = calloc(c->nq, sizeof(float));
    if (!g->buf[0]) return -1;
    g->dq = g->buf[0] + c->off_q, g->dk = g->buf[0] + c->off_k, g->dv = g->buf[0] + c->off_v;
  } else {
    g->buf[0] = calloc(c->nq, sizeof(float));
    g->buf[1] = calloc(c->nk, sizeof(float));
    g->buf[2] = calloc(c->nv, sizeof(float));
    if (!g->buf[0] || !g->buf[1] || !g->buf[2]) return -1;
    g->dq = g->buf[0], g->dk = g->buf[1], g->dv = g->buf[2];
  }
  return 0;
}

static void free_grads(grads *g) {
  for (int i = 0; i < 3; i++) free(g->buf[i]);
}

/* Expected gradients, by role, with the same offsets as grads. */
static void expected_grads(const attn_case *c, const float **eq, const float **ek,
                           const float **ev) {
  if (c->qkv) {
    *eq = c->dqkv_ref + c->off_q, *ek = c->dqkv_ref + c->off_k, *ev = c->dqkv_ref + c->off_v;
  } else {
    *eq = c->dq_ref, *ek = c->dk_ref, *ev = c->dv_ref;
  }
}

/* Errors of dq, dk, dv of g against the reference (plus base, if non-NULL,
 * which holds what the buffers held before the backward). */
static double grad_err(const attn_case *c, const grads *g, const grads *base, double e[3]) {
  const attn_shape *s = &c->s;
  const float *ex[3];
  expected_grads(c, &ex[0], &ex[1], &ex[2]);
  const float *got[3] = {g->dq, g->dk, g->dv};
  const int T[3] = {s->Tq, s->Tk, s->Tk}, ld[3] = {s->ldq, s->ldk, s->ldv},
            hs[3] = {s->hsq, s->hsk, s->hsv};
  double worst = 0.0;
  for (int r = 0; r < 3; r++) {
    if (!base) {
      e[r] = rel_err(got[r], ex[r], T[r], s->H, s->D, ld[r], hs[r]);
    } else {
      /* compare got - base with expected, element by element */
      const float *b0 = r == 0 ? base->dq : r == 1 ? base->dk : base->dv;
      double num = 0.0, den = max_abs(ex[r], T[r], s->H, s->D, ld[r], hs[r]);
      for (int t = 0; t < T[r]; t++)
        for (int h = 0; h < s->H; h++)
          for (int d = 0; d < s->D; d++) {
            size_t i = (size_t)t * ld[r] + (size_t)h * hs[r] + d;
            double diff = fabs((double)got[r][i] - (double)b0[i] - (double)ex[r][i]);
            if (!(diff == diff)) diff = INFINITY;
            if (diff > num) num = diff;
          }
      e[r] = den > 0 ? num / den : num;
    }
    if (e[r] > worst || !(e[r] == e[r])) worst = e[r];
  }
  return worst;
}

/* Forward into out/lse with the current thread count; -1 on no memory or a
 * scratch overrun. */
static int run_forward(const attn_case *c, float *out, float *lse) {
  size_t n;
  float *w = nan_scratch(&c->s, &n);
  if (!w) return -1;
  attention_forward(out, lse, c->q, c->k, c->v, &c->s, w);
  int bad = scratch_overrun(w, n);
  free(w);
  return bad ? -1 : 0;
}

static int run_backward(const attn_case *c, const grads *g, float *dk, const float *out,
                        const float *lse) {
  size_t n;
  float *w = nan_scratch(&c->s, &n);
  if (!w) return -1;
  attention_backward(g->dq, dk, g->dv, c->dout, out, lse, c->q, c->k, c->v, &c->s, w);
  int bad = scratch_overrun(w, n);
  free(w);
  return bad ? -1 : 0;
}

/* The forward and backward checks of one case. Leaves out/lse filled. */
static void check_case(const attn_case *c, float *out, float *lse, int threads_env) {
  const attn_shape *s = &c->s;
  char what[160], detail[256];
  omp_set_num_threads(threads_env);
  /* NaN in the outputs: every element must be written */
  for (size_t i = 0; i < (size_t)s->Tq * s->H * s->D; i++) out[i] = NAN;
  for (size_t i = 0; i < (size_t)s->H * s->Tq; i++) lse[i] = NAN;
  if (run_forward(c, out, lse) != 0) {
    snprintf(what, sizeof what, "%s forward", c->name);
    report(0, what, "out of memory or scratch overrun");
    return;
  }
  double e_out = rel_err(out, c->out_ref, s->Tq, 1, s->H * s->D, s->H * s->D, 0);
  double e_lse = rel_err(lse, c->lse_ref, s->H, 1, s->Tq, s->Tq, 0);
  snprintf(what, sizeof what, "%s forward", c->name);
  snprintf(detail, sizeof detail, "(out %.2e, lse %.2e; tol %.0e)", e_out, e_lse, TOL_FWD);
  report(e_out <= TOL_FWD && e_lse <= TOL_FWD, what, detail);

  /* backward: same threads, then THREADS_MANY threads */
  const int threads[2] = {threads_env, THREADS_MANY};
  double e[2][3], worst = 0.0;
  int ok = 1;
  for (int i = 0; i < 2; i++) {
    grads g;
    omp_set_num_threads(threads[i]);
    if (alloc_grads(c, &g) != 0 || run_backward(c, &g, g.dk, out, lse) != 0) {
      ok = 0;
      free_grads(&g);
      break;
    }
    double w = grad_err(c, &g, NULL, e[i]);
    if (!(w <= TOL_BWD)) ok = 0;
    if (w > worst) worst = w;
    free_grads(&g);
  }
  omp_set_num_threads(threads_env);
  snprintf(what, sizeof what, "%s backward", c->name);
  if (ok)
    snprintf(detail, sizeof detail,
             "(%d threads: dq %.2e dk %.2e dv %.2e; %d threads: dq %.2e dk %.2e dv %.2e; tol %.0e)",
             threads[0], e[0][0], e[0][1], e[0][2], threads[1], e[1][0], e[1][1], e[1][2],
             TOL_BWD);
  else
    snprintf(detail, sizeof detail, "(worst %.2e; tol %.0e)", worst, TOL_BWD);
  report(ok, what, detail);
}

/* Backward onto buffers already holding random values: must add, not overwrite. */
static void check_accumulate(const attn_case *c, const float *out, const float *lse) {
  grads g, base;
  char detail[200];
  memset(&g, 0, sizeof g);
  memset(&base, 0, sizeof base);
  if (alloc_grads(c, &g) || alloc_grads(c, &base)) {
    report(0, "accumulate", "out of memory");
    free_grads(&g);
    free_grads(&base);
    return;
  }
  unsigned x = 12345u;
  for (int b = 0; b < 3; b++) {
    size_t n = b == 0 ? c->nq : b == 1 ? c->nk : c->nv;
    for (size_t i = 0; g.buf[b] && i < n; i++) {
      x = x * 1664525u + 1013904223u;
      float r = (float)((x >> 8) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
      g.buf[b][i] = base.buf[b][i] = r;
    }
  }
  double e[3] = {INFINITY, INFINITY, INFINITY};
  double w = run_backward(c, &g, g.dk, out, lse) == 0 ? grad_err(c, &g, &base, e) : INFINITY;
  snprintf(detail, sizeof detail, "(dq %.2e dk %.2e dv %.2e; tol %.0e)", e[0], e[1], e[2],
           TOL_BWD);
  char what[160];
  snprintf(what, sizeof what, "%s accumulates onto non-zero gradients", c->name);
  report(w <= TOL_BWD, what, detail);
  free_grads(&g);
  free_grads(&base);
}

/* dk = NULL: dq and dv still right, the dk part of the buffer never written. */
static void check_null_dk(const attn_case *c, const float *out, const float *lse) {
  const attn_shape *s = &c->s;
  grads g;
  char what[160], detail[200];
  snprintf(what, sizeof what, "%s with dk = NULL", c->name);
  if (alloc_grads(c, &g) != 0) {
    report(0, what, "out of memory");
    free_grads(&g);
    return;
  }
  if (run_backward(c, &g, NULL, out, lse) != 0) {
    report(0, what, "out of memory or scratch overrun");
    free_grads(&g);
    return;
  }
  const float *eq, *ek, *ev;
  expected_grads(c, &eq, &ek, &ev);
  double e_q = rel_err(g.dq, eq, s->Tq, s->H, s->D, s->ldq, s->hsq);
  double e_v = rel_err(g.dv, ev, s->Tk, s->H, s->D, s->ldv, s->hsv);
  double k_abs = max_abs(g.dk, s->Tk, s->H, s->D, s->ldk, s->hsk);
  snprintf(detail, sizeof detail, "(dq %.2e dv %.2e; max|dk part| %.1e must be 0)", e_q, e_v,
           k_abs);
  report(e_q <= TOL_BWD && e_v <= TOL_BWD && k_abs == 0.0, what, detail);
  free_grads(&g);
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "attention_cases.h5";
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* our messages say what is missing */
  hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (file < 0) {
    fprintf(stderr, "test_attention: cannot open %s (run gen_attention_cases.py first)\n", path);
    return 1;
  }
  int n_cases = 0;
  if (read_int_attr(file, "n_cases", &n_cases) != 0 || n_cases <= 0) {
    fprintf(stderr, "test_attention: %s has no n_cases attribute\n", path);
    H5Fclose(file);
    return 1;
  }
  const int threads_env = omp_get_max_threads();
  int did_extra = 0;
  for (int i = 0; i < n_cases; i++) {
    attn_case c;
    if (load_case(file, i, &c) != 0) {
      char what[64];
      snprintf(what, sizeof what, "load case%02d", i);
      report(0, what, path);
      continue;
    }
    float *out = malloc((size_t)c.s.Tq * c.s.H * c.s.D * sizeof(float));
    float *lse = malloc((size_t)c.s.H * c.s.Tq * sizeof(float));
    if (!out || !lse) {
      report(0, c.name, "out of memory");
    } else {
      check_case(&c, out, lse, threads_env);
      /* the accumulation and NULL checks use the first causal LLM case */
      if (!did_extra && c.layout == LAYOUT_LLM && c.s.causal) {
        check_accumulate(&c, out, lse);
        check_null_dk(&c, out, lse);
        did_extra = 1;
      }
    }
    free(out);
    free(lse);
    free_case(&c);
  }
  H5Fclose(file);
  if (!did_extra) report(0, "accumulate / NULL dk", "no causal LLM case in the file");
  printf("%d passed, %d failed\n", n_pass, n_fail);
  return n_fail == 0 ? 0 : 1;
}
