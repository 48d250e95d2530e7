/* tests/gpu/check_backend.c: the CUDA dispatch table (kernels/cuda/backend_cuda.c,
 * contract kernels/backend.h) against the CPU table (kernels/cpu/backend_cpu.c: the
 * kernels of kernels/kernels.h), entry by entry, on the same random inputs.
 *
 * The kernels themselves are checked in depth by check_kernels; this program checks the
 * table: that every entry is set, reaches the right cuda_<name> with its arguments in
 * the contract's order (pointer and shape mix-ups show up as wrong values), that the
 * host values (cross-entropy loss and count, sum of squares) come back, and that the
 * memory entries (alloc, free, upload, download, copy, zero, sync) round-trip. Inputs
 * go to the device through the table's upload and results come back through its
 * download. Needs a GPU (tests/gpu/run.sh runs it) or the CPU emulation
 * (tests/gpu/emu/build.sh). Runs under MPI (one rank is enough: the table picks the GPU
 * from the rank's place on its node); prints one line per check and ends with
 * "N passed, N failed" (exit status 1 if any failed, 2 if the table cannot be set up).
 *
 * Error measure: max|gpu - cpu| / max|cpu| (non-finite where the CPU is finite:
 * infinite). Tolerances, as check_kernels states them:
 *   TOL_F32       1e-5   fp32 kernels (GEMM layers, norms, activations, softmax, RoPE,
 *                        cross-entropy over rows of at most 1024, image ops, AdamW, LoRA);
 *   TOL_ATTN_FWD  2e-5   attention forward;  TOL_ATTN_BWD 1e-4 attention gradients;
 *   TOL_SUMSQ     1e-10  sum of squares (both in double);
 *   TOL_BF16      2e-2   the GEMM entries after set_bf16(1), against the fp32 CPU kernels
 *                        (and the error must exceed TOL_F32: the operands were rounded);
 *   exact                memory round trips, valid-row counts, the rows helpers and
 *                        patch_im2col (pure moves, or one CPU expression per element). */
#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "common/vlm.h"
#include "kernels/backend.h"
#include "kernels/cuda/backend_cuda.h"
#include "kernels/kernels.h"
#include "tests/gpu/check_report.h"

#define TOL_F32 1e-5
#define TOL_ATTN_FWD 2e-5
#define TOL_ATTN_BWD 1e-4
#define TOL_SUMSQ 1e-10

static const vlm_backend *G; /* the CUDA table under test */
static vlm_rng rng;

/* The reference: the CPU table vlmtrain itself runs (kernels/cpu/backend_cpu.c), whose
 * entries are kernels.h's functions unchanged. */
static const vlm_backend *C;

/* ---- plumbing ------------------------------------------------------------------------ */

static void die(const char *what, int line) {
  fprintf(stderr, "check_backend: line %d: %s\n", line, what);
  exit(2);
}

static void *h_alloc(size_t bytes, int line) {
  void *p = calloc(bytes ? bytes : 1, 1);
  if (!p) die("out of host memory", line);
  return p;
}
#define H_FLOATS(n) ((float *)h_alloc((size_t)(n) * sizeof(float), __LINE__))
#define H_INTS(n) ((int *)h_alloc((size_t)(n) * sizeof(int), __LINE__))

static float *h_rand(size_t n, float scale) {
  float *p = H_FLOATS(n);
  for (size_t i = 0; i < n; i++) p[i] = (float)((2.0 * rng_uniform(&rng) - 1.0) * scale);
  return p;
}

/* A device copy of n host floats (ints, bytes) through the table. */
static void *g_dup_bytes(const void *h, size_t bytes, int line) {
  void *d = G->alloc(bytes, "check_backend input");
  if (!d) die("the table's alloc returned NULL", line);
  G->upload(d, h, bytes);
  return d;
}
#define G_DUP(h, n) ((float *)g_dup_bytes((h), (size_t)(n) * sizeof(float), __LINE__))
#define G_DUP_INTS(h, n) ((int *)g_dup_bytes((h), (size_t)(n) * sizeof(int), __LINE__))
static float *g_floats(size_t n, int line) {
  float *d = G->alloc(n * sizeof(float), "check_backend output");
  if (!d) die("the table's alloc returned NULL", line);
  return d;
}
#define G_FLOATS(n) g_floats((size_t)(n), __LINE__)
static void g_free(void *p) {
  if (p) G->free(p);
}

/* Downloads n device floats through the table and compares them with the CPU's
 * (tol 0: bit for bit). */
static void cmp(const char *name, const float *d, const float *cpu, size_t n, double tol) {
  float *h = H_FLOATS(n);
  G->download(h, d, n * sizeof(float));
  if (tol == 0.0) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += memcmp(&h[i], &cpu[i], sizeof(float)) != 0;
    report(bad == 0, name, (double)bad, 0.0);
  } else {
    double e = rel_err(h, cpu, n);
    report(e <= tol, name, e, tol);
  }
  free(h);
}

/* ---- the table itself and memory ------------------------------------------------------ */

static void test_table(void) {
  report(strcmp(G->name, "cuda") == 0 && G->on_device == 1 && G->host_parallel == 0,
         "table: name \"cuda\", on_device 1, host_parallel 0", 0.0, 0.0);
  /* every field is a pointer after the three header fields: none may be NULL */
  const size_t first = offsetof(vlm_backend, alloc), stride = sizeof(void (*)(void));
  int missing = 0;
  for (size_t off = first; off + stride <= sizeof(vlm_backend); off += stride) {
    void (*fn)(void);
    memcpy(&fn, (const char *)G + off, sizeof fn);
    missing += fn == NULL;
  }
  report(missing == 0, "table: every entry set", (double)missing, 0.0);
}

static void test_memory(void) {
  const size_t n = 100003;
  float *h = h_rand(n, 1.0f), *back = H_FLOATS(n);
  float *a = G_FLOATS(n), *b = G_FLOATS(n);
  report(((uintptr_t)a % 64) == 0 && ((uintptr_t)b % 64) == 0, "alloc: 64-byte aligned", 0.0,
         0.0);
  G->upload(a, h, n * sizeof(float));
  G->download(back, a, n * sizeof(float));
  report(memcmp(back, h, n * sizeof(float)) == 0, "upload then download (bits)", 0.0, 0.0);
  G->copy(b, a, n * sizeof(float));
  G->sync();
  cmp("copy device to device (bits)", b, h, n, 0.0);
  /* a partial copy at odd offsets, then zero a middle range */
  G->copy(b + 7, a + 1000, 333 * sizeof(float));
  memcpy(h + 7, h + 1000, 333 * sizeof(float));
  G->zero(b + 5000, 12345);
  memset(h + 5000, 0, 12345 * sizeof(float));
  cmp("copy at offsets, zero a range; the rest untouched", b, h, n, 0.0);
  /* upload, then reuse the host buffer at once: the device keeps the first bytes */
  float *src = h_rand(n, 1.0f), *keep = H_FLOATS(n);
  memcpy(keep, src, n * sizeof(float));
  G->upload(a, src, n * sizeof(float));
  for (size_t i = 0; i < n; i++) src[i] = -1.0f;
  G->sync();
  cmp("upload: host buffer reusable when it returns", a, keep, n, 0.0);
  void *z = G->alloc(0, "zero bytes");
  report(z != NULL, "alloc(0) returns a pointer", 0.0, 0.0);
  g_free(z);
  /* an impossible allocation: NULL (quietly here), and the backend keeps working */
  vlm_set_quiet_errors(1);
  void *huge = G->alloc((size_t)1 << 50, "an impossible buffer");
  vlm_set_quiet_errors(0);
  report(huge == NULL, "alloc of 1 PiB returns NULL", 0.0, 0.0);
  g_free(huge);
  G->add_into(a, a, (long)n); /* a kernel launch after the failed alloc: a += a */
  for (size_t i = 0; i < n; i++) keep[i] *= 2.0f;
  cmp("a kernel after the failed alloc runs", a, keep, n, 0.0);
  free(h), free(back), free(src), free(keep);
  g_free(a), g_free(b);
}

/* ---- dense layers -------------------------------------------------------------------- */

static void test_dense(int N, int K, int O) {
  float *in = h_rand((size_t)N * K, 1.0f), *W = h_rand((size_t)O * K, 0.5f);
  float *b = h_rand((size_t)O, 1.0f), *out = H_FLOATS((size_t)N * O);
  float *d_in = G_DUP(in, (size_t)N * K), *d_W = G_DUP(W, (size_t)O * K), *d_b = G_DUP(b, O);
  float *d_out = G_FLOATS((size_t)N * O);
  C->linear_forward(out, in, W, b, N, K, O);
  G->linear_forward(d_out, d_in, d_W, d_b, N, K, O);
  cmp("linear_forward (+b)", d_out, out, (size_t)N * O, TOL_F32);
  C->linear_forward(out, in, W, NULL, N, K, O);
  G->linear_forward(d_out, d_in, d_W, NULL, N, K, O);
  cmp("linear_forward (b NULL)", d_out, out, (size_t)N * O, TOL_F32);

  float *g = h_rand((size_t)N * O, 1.0f), *gin = h_rand((size_t)N * K, 1.0f);
  float *gW = h_rand((size_t)O * K, 1.0f), *gb = h_rand((size_t)O, 1.0f);
  float *d_g = G_DUP(g, (size_t)N * O), *d_gin = G_DUP(gin, (size_t)N * K);
  float *d_gW = G_DUP(gW, (size_t)O * K), *d_gb = G_DUP(gb, O);
  C->linear_backward(gin, gW, gb, g, in, W, N, K, O);
  G->linear_backward(d_gin, d_gW, d_gb, d_g, d_in, d_W, N, K, O);
  cmp("linear_backward din", d_gin, gin, (size_t)N * K, TOL_F32);
  cmp("linear_backward dW", d_gW, gW, (size_t)O * K, TOL_F32);
  cmp("linear_backward db", d_gb, gb, (size_t)O, TOL_F32);
  float *snap = H_FLOATS((size_t)N * K); /* the device's din before a dW-only call */
  G->download(snap, d_gin, (size_t)N * K * sizeof(float));
  C->linear_backward(NULL, gW, NULL, g, in, W, N, K, O);
  G->linear_backward(NULL, d_gW, NULL, d_g, d_in, d_W, N, K, O);
  cmp("linear_backward dW only: NULL din left untouched", d_gin, snap, (size_t)N * K, 0.0);
  free(snap);
  cmp("linear_backward dW only: dW", d_gW, gW, (size_t)O * K, TOL_F32);

  /* matmul: P[K,O] is W's buffer read as [K,O] */
  C->matmul_forward(out, in, W, N, K, O);
  G->matmul_forward(d_out, d_in, d_W, N, K, O);
  cmp("matmul_forward", d_out, out, (size_t)N * O, TOL_F32);
  C->matmul_backward(gin, gW, g, in, W, N, K, O);
  G->matmul_backward(d_gin, d_gW, d_g, d_in, d_W, N, K, O);
  cmp("matmul_backward din", d_gin, gin, (size_t)N * K, TOL_F32);
  cmp("matmul_backward dP", d_gW, gW, (size_t)O * K, TOL_F32);
  free(in), free(W), free(b), free(out), free(g), free(gin), free(gW), free(gb);
  g_free(d_in), g_free(d_W), g_free(d_b), g_free(d_out), g_free(d_g), g_free(d_gin);
  g_free(d_gW), g_free(d_gb);
}

/* bf16.enabled (set_bf16): the GEMM entries round their operands to bf16 and accumulate
 * in fp32. Against the fp32 CPU kernels the error must be that of bf16 operands (at
 * most TOL_BF16 relative to the largest value: 8-bit mantissas, K-term fp32 sums) and
 * must not be zero-ish (above TOL_F32: the operands really were rounded). */
#define TOL_BF16 2e-2
static void cmp_bf16(const char *name, const float *d, const float *cpu, size_t n) {
  float *h = H_FLOATS(n);
  G->download(h, d, n * sizeof(float));
  double e = rel_err(h, cpu, n);
  report(e <= TOL_BF16 && e > TOL_F32, name, e, TOL_BF16);
  free(h);
}

static void test_dense_bf16(int N, int K, int O) {
  report(G->set_bf16 && G->set_bf16(1) == 0, "set_bf16(1)", 0.0, 0.0);
  float *in = h_rand((size_t)N * K, 1.0f), *W = h_rand((size_t)O * K, 0.5f);
  float *b = h_rand((size_t)O, 1.0f), *out = H_FLOATS((size_t)N * O);
  float *d_in = G_DUP(in, (size_t)N * K), *d_W = G_DUP(W, (size_t)O * K), *d_b = G_DUP(b, O);
  float *d_out = G_FLOATS((size_t)N * O);
  C->linear_forward(out, in, W, b, N, K, O);
  G->linear_forward(d_out, d_in, d_W, d_b, N, K, O);
  cmp_bf16("bf16 linear_forward (+b)", d_out, out, (size_t)N * O);
  float *g = h_rand((size_t)N * O, 1.0f), *gin = H_FLOATS((size_t)N * K);
  float *gW = H_FLOATS((size_t)O * K), *gb = H_FLOATS((size_t)O);
  memset(gin, 0, (size_t)N * K * sizeof(float));
  memset(gW, 0, (size_t)O * K * sizeof(float));
  memset(gb, 0, (size_t)O * sizeof(float));
  float *d_g = G_DUP(g, (size_t)N * O), *d_gin = G_DUP(gin, (size_t)N * K);
  float *d_gW = G_DUP(gW, (size_t)O * K), *d_gb = G_DUP(gb, O);
  C->linear_backward(gin, gW, gb, g, in, W, N, K, O);
  G->linear_backward(d_gin, d_gW, d_gb, d_g, d_in, d_W, N, K, O);
  cmp_bf16("bf16 linear_backward din", d_gin, gin, (size_t)N * K);
  cmp_bf16("bf16 linear_backward dW", d_gW, gW, (size_t)O * K);
  cmp("bf16 linear_backward db (from the fp32 dout)", d_gb, gb, (size_t)O, TOL_F32);
  C->matmul_forward(out, in, W, N, K, O);
  G->matmul_forward(d_out, d_in, d_W, N, K, O);
  cmp_bf16("bf16 matmul_forward", d_out, out, (size_t)N * O);
  G->zero(d_gin, (long)N * K);
  G->zero(d_gW, (long)O * K);
  memset(gin, 0, (size_t)N * K * sizeof(float));
  memset(gW, 0, (size_t)O * K * sizeof(float));
  C->matmul_backward(gin, gW, g, in, W, N, K, O);
  G->matmul_backward(d_gin, d_gW, d_g, d_in, d_W, N, K, O);
  cmp_bf16("bf16 matmul_backward din", d_gin, gin, (size_t)N * K);
  cmp_bf16("bf16 matmul_backward dP", d_gW, gW, (size_t)O * K);
  G->set_bf16(0);
  G->linear_forward(d_out, d_in, d_W, d_b, N, K, O);
  C->linear_forward(out, in, W, b, N, K, O);
  cmp("set_bf16(0): linear_forward back to fp32", d_out, out, (size_t)N * O, TOL_F32);
  free(in), free(W), free(b), free(out), free(g), free(gin), free(gW), free(gb);
  g_free(d_in), g_free(d_W), g_free(d_b), g_free(d_out), g_free(d_g), g_free(d_gin);
  g_free(d_gW), g_free(d_gb);
}

/* ---- norms, activations, softmax, RoPE ------------------------------------------------ */

static void test_norms(int N, int Cn) {
  const size_t n = (size_t)N * Cn;
  float *x = h_rand(n, 2.0f), *w = h_rand(Cn, 1.0f), *b = h_rand(Cn, 1.0f);
  float *out = H_FLOATS(n), *mean = H_FLOATS(N), *rstd = H_FLOATS(N);
  float *d_x = G_DUP(x, n), *d_w = G_DUP(w, Cn), *d_b = G_DUP(b, Cn);
  float *d_out = G_FLOATS(n), *d_mean = G_FLOATS(N), *d_rstd = G_FLOATS(N);
  C->layernorm_forward(out, mean, rstd, x, w, b, N, Cn, 1e-5f);
  G->layernorm_forward(d_out, d_mean, d_rstd, d_x, d_w, d_b, N, Cn, 1e-5f);
  cmp("layernorm_forward out", d_out, out, n, TOL_F32);
  cmp("layernorm_forward mean", d_mean, mean, N, TOL_F32);
  cmp("layernorm_forward rstd", d_rstd, rstd, N, TOL_F32);
  float *g = h_rand(n, 1.0f), *gx = h_rand(n, 1.0f), *gw = h_rand(Cn, 1.0f),
        *gb = h_rand(Cn, 1.0f);
  float *d_g = G_DUP(g, n), *d_gx = G_DUP(gx, n), *d_gw = G_DUP(gw, Cn), *d_gb = G_DUP(gb, Cn);
  C->layernorm_backward(gx, gw, gb, g, x, w, mean, rstd, N, Cn);
  G->layernorm_backward(d_gx, d_gw, d_gb, d_g, d_x, d_w, d_mean, d_rstd, N, Cn);
  cmp("layernorm_backward din", d_gx, gx, n, TOL_F32);
  cmp("layernorm_backward dw", d_gw, gw, Cn, TOL_F32);
  cmp("layernorm_backward db", d_gb, gb, Cn, TOL_F32);

  C->rmsnorm_forward(out, rstd, x, w, N, Cn, 1e-6f);
  G->rmsnorm_forward(d_out, d_rstd, d_x, d_w, N, Cn, 1e-6f);
  cmp("rmsnorm_forward out", d_out, out, n, TOL_F32);
  cmp("rmsnorm_forward rstd", d_rstd, rstd, N, TOL_F32);
  C->rmsnorm_backward(gx, gw, g, x, w, rstd, N, Cn);
  G->rmsnorm_backward(d_gx, d_gw, d_g, d_x, d_w, d_rstd, N, Cn);
  cmp("rmsnorm_backward din", d_gx, gx, n, TOL_F32);
  cmp("rmsnorm_backward dw", d_gw, gw, Cn, TOL_F32);
  free(x), free(w), free(b), free(out), free(mean), free(rstd), free(g), free(gx), free(gw);
  free(gb);
  g_free(d_x), g_free(d_w), g_free(d_b), g_free(d_out), g_free(d_mean), g_free(d_rstd);
  g_free(d_g), g_free(d_gx), g_free(d_gw), g_free(d_gb);
}

static void test_activations(long n, int N, int Cs) {
  float *a = h_rand(n, 3.0f), *gt = h_rand(n, 3.0f), *out = H_FLOATS(n), *dout = h_rand(n, 1.0f);
  float *da = h_rand(n, 1.0f), *dg = h_rand(n, 1.0f);
  float *d_a = G_DUP(a, n), *d_gt = G_DUP(gt, n), *d_out = G_FLOATS(n), *d_dout = G_DUP(dout, n);
  float *d_da = G_DUP(da, n), *d_dg = G_DUP(dg, n);
  C->gelu_forward(out, a, n);
  G->gelu_forward(d_out, d_a, n);
  cmp("gelu_forward", d_out, out, (size_t)n, TOL_F32);
  C->gelu_backward(da, dout, a, n);
  G->gelu_backward(d_da, d_dout, d_a, n);
  cmp("gelu_backward", d_da, da, (size_t)n, TOL_F32);
  C->swiglu_forward(out, a, gt, n);
  G->swiglu_forward(d_out, d_a, d_gt, n);
  cmp("swiglu_forward", d_out, out, (size_t)n, TOL_F32);
  C->swiglu_backward(da, dg, dout, a, gt, n);
  G->swiglu_backward(d_da, d_dg, d_dout, d_a, d_gt, n);
  cmp("swiglu_backward da", d_da, da, (size_t)n, TOL_F32);
  cmp("swiglu_backward dg", d_dg, dg, (size_t)n, TOL_F32);
  /* softmax over the first N*Cs elements as [N, Cs] */
  const size_t m = (size_t)N * Cs;
  C->softmax_forward(out, a, N, Cs);
  G->softmax_forward(d_out, d_a, N, Cs);
  cmp("softmax_forward", d_out, out, m, TOL_F32);
  C->softmax_backward(da, dout, out, N, Cs);
  G->softmax_backward(d_da, d_dout, d_out, N, Cs);
  cmp("softmax_backward", d_da, da, m, TOL_F32);
  free(a), free(gt), free(out), free(dout), free(da), free(dg);
  g_free(d_a), g_free(d_gt), g_free(d_out), g_free(d_dout), g_free(d_da), g_free(d_dg);
}

static void test_rope(int T, int H, int D, int R) {
  const int ld = 3 * H * D; /* q part of an LLM [q|k|v] buffer */
  const size_t n = (size_t)T * ld;
  float *x = h_rand(n, 1.0f);
  int *pos = H_INTS(T);
  for (int t = 0; t < T; t++) pos[t] = 3 * t + 1;
  float *d_x = G_DUP(x, n);
  int *d_pos = G_DUP_INTS(pos, T);
  C->rope_forward(x, pos, T, H, D, R, ld, 10000.0f);
  G->rope_forward(d_x, d_pos, T, H, D, R, ld, 10000.0f);
  cmp("rope_forward", d_x, x, n, TOL_F32);
  C->rope_backward(x, pos, T, H, D, R, ld, 10000.0f);
  G->rope_backward(d_x, d_pos, T, H, D, R, ld, 10000.0f);
  cmp("rope_backward", d_x, x, n, TOL_F32);
  free(x), free(pos);
  g_free(d_x), g_free(d_pos);
}

/* ---- attention: q [Tq, HD], kv [Tk, 2HD] = [k | v] (cross) or causal self on [q|k|v] */

static void test_attention(const char *label, int Tq, int Tk, int H, int D, int causal) {
  char name[160];
  attn_shape s;
  memset(&s, 0, sizeof s);
  s.Tq = Tq, s.Tk = Tk, s.H = H, s.D = D, s.causal = causal, s.scale = 1.0f / sqrtf((float)D);
  size_t nq, nkv, ko, vo;
  if (causal) { /* LLM [q | k | v], ld 3HD, head stride D */
    s.ldq = s.ldk = s.ldv = 3 * H * D, s.hsq = s.hsk = s.hsv = D;
    nq = (size_t)Tq * 3 * H * D, nkv = 0, ko = (size_t)H * D, vo = 2 * (size_t)H * D;
  } else {
    s.ldq = H * D, s.ldk = s.ldv = 2 * H * D, s.hsq = s.hsk = s.hsv = D;
    nq = (size_t)Tq * H * D, nkv = (size_t)Tk * 2 * H * D, ko = 0, vo = (size_t)H * D;
  }
  float *qb = h_rand(nq, 2.0f), *kvb = nkv ? h_rand(nkv, 2.0f) : NULL;
  const float *q = qb, *k = (nkv ? kvb : qb) + ko, *v = (nkv ? kvb : qb) + vo;
  float *d_qb = G_DUP(qb, nq), *d_kvb = nkv ? G_DUP(kvb, nkv) : NULL;
  const float *dq_ = d_qb, *dk_ = (nkv ? d_kvb : d_qb) + ko, *dv_ = (nkv ? d_kvb : d_qb) + vo;
  const size_t no = (size_t)Tq * H * D, nl = (size_t)H * Tq;
  float *out = H_FLOATS(no), *lse = H_FLOATS(nl);
  float *scr = H_FLOATS(C->attention_scratch_floats(&s, omp_get_max_threads()));
  float *d_out = G_FLOATS(no), *d_lse = G_FLOATS(nl);
  const size_t gs = G->attention_scratch_floats(&s, 1);
  float *d_scr = G_FLOATS(gs ? gs : 1);
  C->attention_forward(out, lse, q, k, v, &s, scr);
  G->attention_forward(d_out, d_lse, dq_, dk_, dv_, &s, d_scr);
  snprintf(name, sizeof name, "attention_forward %s out", label);
  cmp(name, d_out, out, no, TOL_ATTN_FWD);
  snprintf(name, sizeof name, "attention_forward %s lse", label);
  cmp(name, d_lse, lse, nl, TOL_ATTN_FWD);
  /* gradients into non-zero buffers shaped like q's and kv's */
  float *g = h_rand(no, 1.0f), *gq = h_rand(nq, 1.0f), *gkv = nkv ? h_rand(nkv, 1.0f) : NULL;
  float *d_g = G_DUP(g, no), *d_gq = G_DUP(gq, nq), *d_gkv = nkv ? G_DUP(gkv, nkv) : NULL;
  float *gk = (nkv ? gkv : gq) + ko, *gv = (nkv ? gkv : gq) + vo;
  float *d_gk = (nkv ? d_gkv : d_gq) + ko, *d_gv = (nkv ? d_gkv : d_gq) + vo;
  C->attention_backward(gq, gk, gv, g, out, lse, q, k, v, &s, scr);
  G->attention_backward(d_gq, d_gk, d_gv, d_g, d_out, d_lse, dq_, dk_, dv_, &s, d_scr);
  snprintf(name, sizeof name, "attention_backward %s dq%s", label, nkv ? "" : " dk dv");
  cmp(name, d_gq, gq, nq, TOL_ATTN_BWD);
  if (nkv) {
    snprintf(name, sizeof name, "attention_backward %s dk dv", label);
    cmp(name, d_gkv, gkv, nkv, TOL_ATTN_BWD);
  }
  free(qb), free(kvb), free(out), free(lse), free(scr), free(g), free(gq), free(gkv);
  g_free(d_qb), g_free(d_kvb), g_free(d_out), g_free(d_lse), g_free(d_scr), g_free(d_g);
  g_free(d_gq), g_free(d_gkv);
}

/* ---- loss ------------------------------------------------------------------------------ */

static void test_cross_entropy(int N, int V) {
  const size_t n = (size_t)N * V;
  float *x = h_rand(n, 4.0f), *dl = H_FLOATS(n);
  int *tg = H_INTS(N);
  for (int i = 0; i < N; i++) tg[i] = i % 5 == 3 ? -100 : (int)rng_below(&rng, V);
  float *d_x = G_DUP(x, n), *d_dl = G_FLOATS(n);
  int *d_tg = G_DUP_INTS(tg, N);
  int nv_c = -1, nv_g = -2;
  double lc = C->cross_entropy_forward_backward(dl, x, tg, N, V, 0.25f, &nv_c);
  double lg = G->cross_entropy_forward_backward(d_dl, d_x, d_tg, N, V, 0.25f, &nv_g);
  double e = fabs(lg - lc) / fmax(fabs(lc), 1e-30);
  report(e <= TOL_F32, "cross_entropy loss sum (host value)", e, TOL_F32);
  report(nv_g == nv_c, "cross_entropy n_valid (host value)", fabs((double)(nv_g - nv_c)), 0.0);
  cmp("cross_entropy dlogits", d_dl, dl, n, TOL_F32);
  /* loss only, n_valid NULL */
  lg = G->cross_entropy_forward_backward(NULL, d_x, d_tg, N, V, 1.0f, NULL);
  lc = C->cross_entropy_forward_backward(NULL, x, tg, N, V, 1.0f, NULL);
  e = fabs(lg - lc) / fmax(fabs(lc), 1e-30);
  report(e <= TOL_F32, "cross_entropy loss only (dlogits, n_valid NULL)", e, TOL_F32);
  free(x), free(dl), free(tg);
  g_free(d_x), g_free(d_dl), g_free(d_tg);
}

/* ---- image ops --------------------------------------------------------------------------- */

static void test_image(void) {
  const int Hi = 42, Wi = 56, win = 28, p = 14, Gp = win / p;
  const size_t nimg = (size_t)Hi * Wi * 3, ncol = (size_t)Gp * Gp * 3 * p * p;
  float *img = h_rand(nimg, 1.0f), *cols = H_FLOATS(ncol);
  float *d_img = G_DUP(img, nimg), *d_cols = G_FLOATS(ncol);
  C->patch_im2col(cols, img, Hi, Wi, 14, 28, win, p);
  G->patch_im2col(d_cols, d_img, Hi, Wi, 14, 28, win, p);
  cmp("patch_im2col", d_cols, cols, ncol, 0.0);

  const int hi = 9, wi = 7, ho = 12, wo = 5, Cc = 5;
  const size_t nin = (size_t)hi * wi * Cc, nout = (size_t)ho * wo * Cc, ntmp = (size_t)ho * wi * Cc;
  float *in = h_rand(nin, 1.0f), *out = H_FLOATS(nout), *tmp = H_FLOATS(ntmp);
  float *d_in = G_DUP(in, nin), *d_out = G_FLOATS(nout), *d_tmp = G_FLOATS(ntmp);
  C->bicubic_resize_forward(out, in, hi, wi, ho, wo, Cc, tmp);
  G->bicubic_resize_forward(d_out, d_in, hi, wi, ho, wo, Cc, d_tmp);
  cmp("bicubic_resize_forward 9x7 -> 12x5", d_out, out, nout, TOL_F32);
  float *g = h_rand(nout, 1.0f), *gin = h_rand(nin, 1.0f);
  float *d_g = G_DUP(g, nout), *d_gin = G_DUP(gin, nin);
  C->bicubic_resize_backward(gin, g, hi, wi, ho, wo, Cc, tmp);
  G->bicubic_resize_backward(d_gin, d_g, hi, wi, ho, wo, Cc, d_tmp);
  cmp("bicubic_resize_backward 9x7 -> 12x5", d_gin, gin, nin, TOL_F32);

  const int Gt = 6, dim = 32;
  float *tab = H_FLOATS((size_t)Gt * Gt * dim), *d_tab = G_FLOATS((size_t)Gt * Gt * dim);
  C->sincos_2d_table(tab, Gt, dim);
  G->sincos_2d_table(d_tab, Gt, dim);
  cmp("sincos_2d_table G=6 dim=32", d_tab, tab, (size_t)Gt * Gt * dim, TOL_F32);
  free(img), free(cols), free(in), free(out), free(tmp), free(g), free(gin), free(tab);
  g_free(d_img), g_free(d_cols), g_free(d_in), g_free(d_out), g_free(d_tmp), g_free(d_g);
  g_free(d_gin), g_free(d_tab);
}

/* ---- optimizer --------------------------------------------------------------------------- */

static void test_optimizer(long n) {
  float *p = h_rand(n, 1.0f), *g = h_rand(n, 1.0f), *m = h_rand(n, 0.1f), *v = H_FLOATS(n);
  for (long i = 0; i < n; i++) v[i] = (float)rng_uniform(&rng) * 0.01f;
  float *d_p = G_DUP(p, n), *d_g = G_DUP(g, n), *d_m = G_DUP(m, n), *d_v = G_DUP(v, n);
  C->adamw_step(p, g, m, v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, 0.37f); /* clipped */
  G->adamw_step(d_p, d_g, d_m, d_v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, 0.37f);
  cmp("adamw_step p", d_p, p, (size_t)n, TOL_F32);
  cmp("adamw_step m", d_m, m, (size_t)n, TOL_F32);
  cmp("adamw_step v", d_v, v, (size_t)n, TOL_F32);
  /* twice: the backend's result buffer must start from 0 each call */
  for (int rep = 0; rep < 2; rep++) {
    double sc = C->sum_squares(g, n), sg = G->sum_squares(d_g, n);
    double e = fabs(sg - sc) / sc;
    report(e <= TOL_SUMSQ, rep ? "sum_squares again (not accumulated across calls)"
                               : "sum_squares (host value)",
           e, TOL_SUMSQ);
  }
  free(p), free(g), free(m), free(v);
  g_free(d_p), g_free(d_g), g_free(d_m), g_free(d_v);
}

/* ---- LoRA (scale is a one-float tensor in backend memory) --------------------------------- */

static void test_lora(int N, int K, int O, int r) {
  float *x = h_rand((size_t)N * K, 1.0f), *A = h_rand((size_t)r * K, 0.3f);
  float *B = h_rand((size_t)O * r, 0.3f), *y = h_rand((size_t)N * O, 1.0f);
  float *t = H_FLOATS((size_t)N * r), scale = 0.7f;
  float *d_x = G_DUP(x, (size_t)N * K), *d_A = G_DUP(A, (size_t)r * K);
  float *d_B = G_DUP(B, (size_t)O * r), *d_y = G_DUP(y, (size_t)N * O);
  float *d_t = G_FLOATS((size_t)N * r), *d_s = G_DUP(&scale, 1);
  C->lora_forward(y, t, x, A, B, &scale, N, K, O, r);
  G->lora_forward(d_y, d_t, d_x, d_A, d_B, d_s, N, K, O, r);
  cmp("lora_forward y", d_y, y, (size_t)N * O, TOL_F32);
  cmp("lora_forward t", d_t, t, (size_t)N * r, TOL_F32);
  float *g = h_rand((size_t)N * O, 1.0f), *gx = h_rand((size_t)N * K, 1.0f);
  float *gA = h_rand((size_t)r * K, 1.0f), *gB = h_rand((size_t)O * r, 1.0f), gs = 0.5f;
  float *scr = H_FLOATS((size_t)N * r);
  float *d_g = G_DUP(g, (size_t)N * O), *d_gx = G_DUP(gx, (size_t)N * K);
  float *d_gA = G_DUP(gA, (size_t)r * K), *d_gB = G_DUP(gB, (size_t)O * r);
  float *d_gs = G_DUP(&gs, 1), *d_scr = G_FLOATS((size_t)N * r);
  C->lora_backward(gx, gA, gB, &gs, g, x, t, A, B, &scale, N, K, O, r, scr);
  G->lora_backward(d_gx, d_gA, d_gB, d_gs, d_g, d_x, d_t, d_A, d_B, d_s, N, K, O, r, d_scr);
  cmp("lora_backward dx", d_gx, gx, (size_t)N * K, TOL_F32);
  cmp("lora_backward dA", d_gA, gA, (size_t)r * K, TOL_F32);
  cmp("lora_backward dB", d_gB, gB, (size_t)O * r, TOL_F32);
  cmp("lora_backward dscale", d_gs, &gs, 1, TOL_F32);
  free(x), free(A), free(B), free(y), free(t), free(g), free(gx), free(gA), free(gB), free(scr);
  g_free(d_x), g_free(d_A), g_free(d_B), g_free(d_y), g_free(d_t), g_free(d_s), g_free(d_g);
  g_free(d_gx), g_free(d_gA), g_free(d_gB), g_free(d_gs), g_free(d_scr);
}

/* ---- rows helpers (exact) ------------------------------------------------------------------ */

static void test_rows(void) {
  const long n = 10007;
  float *y = h_rand(n, 1.0f), *x = h_rand(n, 1.0f), *o = H_FLOATS(n);
  float *d_y = G_DUP(y, n), *d_x = G_DUP(x, n), *d_o = G_FLOATS(n);
  C->add_into(y, x, n);
  G->add_into(d_y, d_x, n);
  cmp("add_into", d_y, y, (size_t)n, 0.0);
  C->add_vec(o, y, x, n);
  G->add_vec(d_o, d_y, d_x, n);
  cmp("add_vec", d_o, o, (size_t)n, 0.0);

  const int N = 3 * 29, P = 29, Cc = 37; /* three views of a 29-row table */
  float *xb = h_rand((size_t)N * Cc, 1.0f), *tb = h_rand((size_t)P * Cc, 1.0f);
  float *d_xb = G_DUP(xb, (size_t)N * Cc), *d_tb = G_DUP(tb, (size_t)P * Cc);
  C->add_rows_bcast(xb, tb, N, P, Cc);
  G->add_rows_bcast(d_xb, d_tb, N, P, Cc);
  cmp("add_rows_bcast", d_xb, xb, (size_t)N * Cc, 0.0);

  /* rows_copy: a scatter of P rows of tb into xb at distinct rows, then a gather */
  int *dr = H_INTS(P), *sr = H_INTS(P);
  for (int i = 0; i < P; i++) dr[i] = (i * 7 + 3) % N, sr[i] = (int)rng_below(&rng, P);
  int *d_dr = G_DUP_INTS(dr, P), *d_sr = G_DUP_INTS(sr, P);
  C->rows_copy(xb, dr, tb, NULL, P, Cc);
  G->rows_copy(d_xb, d_dr, d_tb, NULL, P, Cc);
  cmp("rows_copy scatter", d_xb, xb, (size_t)N * Cc, 0.0);
  C->rows_copy(tb, NULL, xb, sr, P, Cc);
  G->rows_copy(d_tb, NULL, d_xb, d_sr, P, Cc);
  cmp("rows_copy gather", d_tb, tb, (size_t)P * Cc, 0.0);

  /* rows_segment_add: the view sum (segment j = row j of every view) into rows dr */
  int *seg = H_INTS(P + 1), *vr = H_INTS(N);
  for (int j = 0; j <= P; j++) seg[j] = 3 * j;
  for (int j = 0; j < P; j++)
    for (int v = 0; v < 3; v++) vr[3 * j + v] = v * P + j;
  int *d_seg = G_DUP_INTS(seg, P + 1), *d_vr = G_DUP_INTS(vr, N);
  free(xb); /* fresh sources for the segment sums */
  xb = h_rand((size_t)N * Cc, 1.0f);
  float *acc = h_rand((size_t)N * Cc, 1.0f);
  G->upload(d_xb, xb, (size_t)N * Cc * sizeof(float));
  float *d_acc = G_DUP(acc, (size_t)N * Cc);
  C->rows_segment_add(acc, dr, xb, vr, seg, P, Cc);
  G->rows_segment_add(d_acc, d_dr, d_xb, d_vr, d_seg, P, Cc);
  cmp("rows_segment_add (view sums, src_rows)", d_acc, acc, (size_t)N * Cc, 0.0);
  C->rows_segment_add(acc, dr, xb, NULL, seg, P, Cc);
  G->rows_segment_add(d_acc, d_dr, d_xb, NULL, d_seg, P, Cc);
  cmp("rows_segment_add (src_rows NULL)", d_acc, acc, (size_t)N * Cc, 0.0);

  const long npx = 777;
  const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
  const float stdv[3] = {0.26862954f, 0.26130258f, 0.27577711f};
  unsigned char *px = h_alloc((size_t)npx * 3, __LINE__);
  for (long i = 0; i < npx * 3; i++) px[i] = (unsigned char)rng_below(&rng, 256);
  unsigned char *d_px = g_dup_bytes(px, (size_t)npx * 3, __LINE__);
  float *img = H_FLOATS(npx * 3), *d_img = G_FLOATS(npx * 3);
  C->image_normalize(img, px, npx, mean, stdv);
  G->image_normalize(d_img, d_px, npx, mean, stdv);
  cmp("image_normalize (px on the device, mean/std on the host)", d_img, img, (size_t)npx * 3,
      0.0);
  free(y), free(x), free(o), free(xb), free(tb), free(dr), free(sr), free(seg), free(vr);
  free(acc), free(px), free(img);
  g_free(d_y), g_free(d_x), g_free(d_o), g_free(d_xb), g_free(d_tb), g_free(d_dr), g_free(d_sr);
  g_free(d_seg), g_free(d_vr), g_free(d_acc), g_free(d_px), g_free(d_img);
}

int main(int argc, char **argv) {
  if (MPI_Init(&argc, &argv) != MPI_SUCCESS) die("MPI_Init failed", __LINE__);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  C = vlm_backend_cpu();
  G = vlm_backend_cuda_init();
  if (!G) {
    fprintf(stderr, "check_backend: the CUDA table cannot be set up (message above)\n");
    MPI_Finalize();
    return 2;
  }
  if (rank == 0)
    printf("check_backend: table \"%s\" against the CPU kernels (%d OpenMP threads)\n", G->name,
           omp_get_max_threads());
  rng_seed(&rng, 20240612 + (uint64_t)rank);
  test_table();
  test_memory();
  test_dense(37, 67, 45);
  test_dense_bf16(37, 67, 45);
  test_norms(29, 130);
  test_activations(20011, 13, 77);
  test_rope(21, 3, 32, 24);
  test_attention("llm causal T=45 H=2 D=32", 45, 45, 2, 32, 1);
  test_attention("cross Tq=17 Tk=40 H=2 D=104", 17, 40, 2, 104, 0);
  test_cross_entropy(23, 517);
  test_image();
  test_optimizer(30011);
  test_lora(25, 40, 30, 4);
  test_rows();
  G->sync();
  vlm_backend_cuda_shutdown();
  printf("%d passed, %d failed\n", n_pass, n_fail);
  MPI_Finalize();
  return n_fail ? 1 : 0;
}
