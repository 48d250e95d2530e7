/* tests/gpu/check_kernels.c: every CUDA kernel (kernels/cuda/kernels_cuda.h) against
 * its CPU twin (kernels/kernels.h) on the same random inputs, fp32 and bf16 paths.
 *
 * Needs a GPU (tests/gpu/run.sh runs it; it is not a ctest test). Each check prints
 * one line "ok  |FAIL  name  err E  tol T" and the program ends with
 * "N passed, N failed" (exit status 1 if any failed).
 *
 * Error measure: max|gpu - cpu| / max|cpu| over the compared tensor (a non-finite
 * GPU value where the CPU one is finite counts as infinite error). Tolerances:
 *   TOL_F32          1e-5  fp32 kernels (elementwise, norms, softmax, RoPE, image ops,
 *                          AdamW, cross-entropy, GEMM-based layers, LoRA);
 *   TOL_ATTN_FWD     2e-5  attention forward (online vs. two-pass softmax);
 *   TOL_ATTN_BWD     1e-4  attention gradients (as tests/kernels/test_attention.c);
 *   TOL_BF16_SAME    2e-5  bf16 GEMMs against the CPU fp32 GEMM on the same
 *                          bf16-rounded inputs (bf16 x bf16 products are exact in fp32:
 *                          only the summation order differs);
 *   TOL_BF16_VS_F32  2e-2  bf16 GEMMs against the CPU on the unrounded fp32 inputs
 *                          (bf16 keeps 8 significant bits: 2^-9 relative per input);
 *   TOL_SUMSQ        1e-10 sum of squares (both in double);
 *   TOL_LONG_ROW     5e-5  softmax rows and cross-entropy losses over more than 1024
 *                          columns (a sum of that many fp32 terms: the CPU adds them in a
 *                          few long SIMD chains, the GPU in many short ones, so the
 *                          normaliser differs by ~sqrt(n) ulp);
 *   exact                  fp32 <-> bf16 conversion bits, valid-row counts, the
 *                          determinism checks (the same call twice, bit for bit), and
 *                          the rows helpers (add_into, add_vec, add_rows_bcast,
 *                          rows_copy, rows_segment_add, image_normalize: each output
 *                          element is one thread's CPU expression in the CPU's order).
 * Backward checks start from non-zero gradient buffers (so += is tested) and include
 * NULL-gradient variants (the skipped tensor must stay as it was). */
#include <cuda_runtime_api.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "kernels/cuda/kernels_cuda.h"
#include "kernels/kernels.h"
#include "tests/gpu/check_report.h"

#define TOL_F32 1e-5
#define TOL_ATTN_FWD 2e-5
#define TOL_ATTN_BWD 1e-4
#define TOL_BF16_SAME 2e-5
#define TOL_BF16_VS_F32 2e-2
#define TOL_SUMSQ 1e-10
#define TOL_LONG_ROW 5e-5

static vlm_cuda_ctx ctx;
static cudaStream_t st;
static vlm_rng rng;

/* ---- plumbing ------------------------------------------------------------------- */

static void rt(cudaError_t e, const char *what, int line) {
  if (e != cudaSuccess) {
    fprintf(stderr, "check_kernels: line %d: %s: %s\n", line, what, cudaGetErrorString(e));
    exit(2);
  }
}
#define RT(call) rt((call), #call, __LINE__)

static void *h_alloc(size_t bytes) {
  void *p = calloc(bytes ? bytes : 1, 1);
  if (!p) {
    fprintf(stderr, "check_kernels: out of host memory (%zu bytes)\n", bytes);
    exit(2);
  }
  return p;
}

static float *h_floats(size_t n) { return h_alloc(n * sizeof(float)); }

/* n uniform values in [-scale, scale] */
static float *h_rand(size_t n, float scale) {
  float *p = h_floats(n);
  for (size_t i = 0; i < n; i++) p[i] = (float)((2.0 * rng_uniform(&rng) - 1.0) * scale);
  return p;
}

static float *h_copy(const float *src, size_t n) {
  float *p = h_floats(n);
  memcpy(p, src, n * sizeof(float));
  return p;
}

static void *d_alloc(size_t bytes) {
  void *p = NULL;
  RT(cudaMalloc(&p, bytes ? bytes : 1));
  return p;
}

/* Copies in stream order (the kernels run on a non-blocking stream). */
static void *d_upload_bytes(const void *h, size_t bytes) {
  void *d = d_alloc(bytes);
  RT(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, st));
  return d;
}
static float *d_upload(const float *h, size_t n) { return d_upload_bytes(h, n * sizeof(float)); }

static void d_download_bytes(void *h, const void *d, size_t bytes) {
  RT(cudaMemcpyAsync(h, d, bytes, cudaMemcpyDeviceToHost, st));
  RT(cudaStreamSynchronize(st));
}
static void d_download(float *h, const float *d, size_t n) {
  d_download_bytes(h, d, n * sizeof(float));
}

static void d_free(void *p) {
  if (p) RT(cudaFree(p));
}

/* Downloads gpu (n floats) and compares it with the CPU result. */
static void check(const char *name, const float *gpu, const float *cpu, size_t n, double tol) {
  float *h = h_floats(n);
  d_download(h, gpu, n);
  double e = rel_err(h, cpu, n);
  report(e <= tol, name, e, tol);
  free(h);
}

/* The same n floats on the device, bit for bit. */
static void check_same_bits(const char *name, const float *d1, const float *d2, size_t n) {
  float *a = h_floats(n), *b = h_floats(n);
  d_download(a, d1, n);
  d_download(b, d2, n);
  int same = memcmp(a, b, n * sizeof(float)) == 0;
  report(same, name, same ? 0.0 : 1.0, 0.0);
  free(a);
  free(b);
}

/* A host snapshot of n device floats (for "left untouched" checks). */
static float *snapshot(const float *d, size_t n) {
  float *h = h_floats(n);
  d_download(h, d, n);
  return h;
}

/* The device tensor still holds the snapshot's bits. */
static void check_unchanged(const char *name, const float *d, float *snap, size_t n) {
  float *h = h_floats(n);
  d_download(h, d, n);
  int same = memcmp(h, snap, n * sizeof(float)) == 0;
  report(same, name, same ? 0.0 : 1.0, 0.0);
  free(h);
  free(snap);
}

/* Host reference of the bf16 rounding (round to nearest even, quiet NaN). */
static uint16_t host_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static float host_bf16_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
/* bits[n] = bf16(src), rounded[n] = float(bits) */
static uint16_t *to_bf16(const float *src, size_t n, float **rounded) {
  uint16_t *b = h_alloc(n * sizeof(uint16_t));
  *rounded = h_floats(n);
  for (size_t i = 0; i < n; i++) {
    b[i] = host_bf16(src[i]);
    (*rounded)[i] = host_bf16_f32(b[i]);
  }
  return b;
}

/* ---- dense layers ------------------------------------------------------------------ */

static void test_linear(int N, int K, int O, int bias) {
  char name[128];
  float *in = h_rand((size_t)N * K, 1.0f), *W = h_rand((size_t)O * K, 0.5f);
  float *b = bias ? h_rand((size_t)O, 1.0f) : NULL;
  float *out = h_floats((size_t)N * O);
  linear_forward(out, in, W, b, N, K, O);
  float *din_ = d_upload(in, (size_t)N * K), *dW_ = d_upload(W, (size_t)O * K);
  float *db_ = b ? d_upload(b, (size_t)O) : NULL;
  float *dout_ = d_alloc((size_t)N * O * sizeof(float));
  cuda_linear_forward(&ctx, st, dout_, din_, dW_, db_, N, K, O);
  snprintf(name, sizeof name, "linear_forward N=%d K=%d O=%d%s", N, K, O, bias ? " +b" : "");
  check(name, dout_, out, (size_t)N * O, TOL_F32);

  /* backward onto non-zero gradients; then dW only */
  float *g = h_rand((size_t)N * O, 1.0f);
  float *gin = h_rand((size_t)N * K, 1.0f), *gW = h_rand((size_t)O * K, 1.0f);
  float *gb = h_rand((size_t)O, 1.0f);
  float *d_g = d_upload(g, (size_t)N * O), *d_gin = d_upload(gin, (size_t)N * K);
  float *d_gW = d_upload(gW, (size_t)O * K), *d_gb = d_upload(gb, (size_t)O);
  linear_backward(gin, gW, gb, g, in, W, N, K, O);
  cuda_linear_backward(&ctx, st, d_gin, d_gW, d_gb, d_g, din_, dW_, N, K, O);
  snprintf(name, sizeof name, "linear_backward din N=%d K=%d O=%d", N, K, O);
  check(name, d_gin, gin, (size_t)N * K, TOL_F32);
  snprintf(name, sizeof name, "linear_backward dW N=%d K=%d O=%d", N, K, O);
  check(name, d_gW, gW, (size_t)O * K, TOL_F32);
  snprintf(name, sizeof name, "linear_backward db N=%d K=%d O=%d", N, K, O);
  check(name, d_gb, gb, (size_t)O, TOL_F32);
  float *snap_in = snapshot(d_gin, (size_t)N * K), *snap_b = snapshot(d_gb, (size_t)O);
  linear_backward(NULL, gW, NULL, g, in, W, N, K, O);
  cuda_linear_backward(&ctx, st, NULL, d_gW, NULL, d_g, din_, dW_, N, K, O);
  snprintf(name, sizeof name, "linear_backward dW only (din, db NULL) N=%d", N);
  check(name, d_gW, gW, (size_t)O * K, TOL_F32);
  check_unchanged("linear_backward: NULL din left untouched", d_gin, snap_in, (size_t)N * K);
  check_unchanged("linear_backward: NULL db left untouched", d_gb, snap_b, (size_t)O);

  free(in), free(W), free(b), free(out), free(g), free(gin), free(gW), free(gb);
  d_free(din_), d_free(dW_), d_free(db_), d_free(dout_), d_free(d_g), d_free(d_gin);
  d_free(d_gW), d_free(d_gb);
}

static void test_matmul(int N, int K, int O) {
  char name[128];
  float *in = h_rand((size_t)N * K, 1.0f), *P = h_rand((size_t)K * O, 0.5f);
  float *out = h_floats((size_t)N * O);
  matmul_forward(out, in, P, N, K, O);
  float *d_in = d_upload(in, (size_t)N * K), *d_P = d_upload(P, (size_t)K * O);
  float *d_out = d_alloc((size_t)N * O * sizeof(float));
  cuda_matmul_forward(&ctx, st, d_out, d_in, d_P, N, K, O);
  snprintf(name, sizeof name, "matmul_forward N=%d K=%d O=%d", N, K, O);
  check(name, d_out, out, (size_t)N * O, TOL_F32);
  float *g = h_rand((size_t)N * O, 1.0f), *gin = h_rand((size_t)N * K, 1.0f);
  float *gP = h_rand((size_t)K * O, 1.0f);
  float *d_g = d_upload(g, (size_t)N * O), *d_gin = d_upload(gin, (size_t)N * K);
  float *d_gP = d_upload(gP, (size_t)K * O);
  matmul_backward(gin, gP, g, in, P, N, K, O);
  cuda_matmul_backward(&ctx, st, d_gin, d_gP, d_g, d_in, d_P, N, K, O);
  snprintf(name, sizeof name, "matmul_backward din N=%d K=%d O=%d", N, K, O);
  check(name, d_gin, gin, (size_t)N * K, TOL_F32);
  snprintf(name, sizeof name, "matmul_backward dP N=%d K=%d O=%d", N, K, O);
  check(name, d_gP, gP, (size_t)K * O, TOL_F32);
  free(in), free(P), free(out), free(g), free(gin), free(gP);
  d_free(d_in), d_free(d_P), d_free(d_out), d_free(d_g), d_free(d_gin), d_free(d_gP);
}

/* ---- mixed precision ---------------------------------------------------------------- */

static void test_convert(void) {
  const size_t nr = 100000, ns = 12;
  const size_t n = nr + ns;
  float *x = h_rand(n, 1000.0f);
  const uint32_t special[12] = {
      0x00000000u, 0x80000000u, 0x3f800000u, /* +0, -0, 1 */
      0x3f808000u,                           /* 1 + 2^-8: a tie, stays at the even 1 */
      0x3f818000u,                           /* 1 + 3 * 2^-8: a tie, rounds up to even */
      0x7f7fffffu,                           /* FLT_MAX: rounds to +Inf */
      0x7f800000u, 0xff800000u,              /* +-Inf */
      0x7fc00001u, 0xffa00000u,              /* quiet and signalling NaN */
      0x00000001u, 0x807fffffu};             /* subnormals */
  /* what round-to-nearest-even gives for them, worked out by hand */
  const uint16_t expect[12] = {0x0000, 0x8000, 0x3f80, 0x3f80, 0x3f82, 0x7f80,
                               0x7f80, 0xff80, 0x7fc0, 0xffe0, 0x0000, 0x8080};
  size_t bad_ref = 0;
  for (size_t i = 0; i < ns; i++) {
    memcpy(&x[nr + i], &special[i], 4);
    bad_ref += host_bf16(x[nr + i]) != expect[i];
  }
  report(bad_ref == 0, "bf16 rounding reference on hand-checked values", (double)bad_ref, 0.0);
  uint16_t *ref = h_alloc(n * sizeof(uint16_t)), *got = h_alloc(n * sizeof(uint16_t));
  for (size_t i = 0; i < n; i++) ref[i] = host_bf16(x[i]);
  float *d_x = d_upload(x, n);
  uint16_t *d_b = d_alloc(n * sizeof(uint16_t));
  cuda_f32_to_bf16(&ctx, st, d_b, d_x, (long)n);
  d_download_bytes(got, d_b, n * sizeof(uint16_t));
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) bad += got[i] != ref[i];
  report(bad == 0, "f32_to_bf16 bits (round to nearest even, Inf, NaN, subnormals)", (double)bad,
         0.0);
  float *back = h_floats(n), *ref_back = h_floats(n);
  for (size_t i = 0; i < n; i++) ref_back[i] = host_bf16_f32(ref[i]);
  cuda_bf16_to_f32(&ctx, st, d_x, d_b, (long)n);
  d_download(back, d_x, n);
  int same = memcmp(back, ref_back, n * sizeof(float)) == 0;
  report(same, "bf16_to_f32 bits (exact)", same ? 0.0 : 1.0, 0.0);
  free(x), free(ref), free(got), free(back), free(ref_back);
  d_free(d_x), d_free(d_b);
}

static void test_linear_bf16(int N, int K, int O) {
  char name[160];
  float *in = h_rand((size_t)N * K, 1.0f), *W = h_rand((size_t)O * K, 0.5f);
  float *b = h_rand((size_t)O, 1.0f), *inr, *Wr;
  uint16_t *inb = to_bf16(in, (size_t)N * K, &inr), *Wb = to_bf16(W, (size_t)O * K, &Wr);
  float *out_same = h_floats((size_t)N * O), *out_f32 = h_floats((size_t)N * O);
  linear_forward(out_same, inr, Wr, b, N, K, O);
  linear_forward(out_f32, in, W, b, N, K, O);
  /* the GPU converts its fp32 copies itself, as the model will */
  float *d_in32 = d_upload(in, (size_t)N * K), *d_W32 = d_upload(W, (size_t)O * K);
  vlm_bf16 *d_in = d_alloc((size_t)N * K * 2), *d_W = d_alloc((size_t)O * K * 2);
  cuda_f32_to_bf16(&ctx, st, d_in, d_in32, (long)N * K);
  cuda_f32_to_bf16(&ctx, st, d_W, d_W32, (long)O * K);
  float *d_b = d_upload(b, (size_t)O), *d_out = d_alloc((size_t)N * O * sizeof(float));
  cuda_linear_forward_bf16(&ctx, st, d_out, d_in, d_W, d_b, N, K, O);
  snprintf(name, sizeof name, "linear_forward_bf16 N=%d K=%d O=%d vs same bf16 inputs", N, K, O);
  check(name, d_out, out_same, (size_t)N * O, TOL_BF16_SAME);
  snprintf(name, sizeof name, "linear_forward_bf16 N=%d K=%d O=%d vs fp32 inputs", N, K, O);
  check(name, d_out, out_f32, (size_t)N * O, TOL_BF16_VS_F32);

  float *g = h_rand((size_t)N * O, 1.0f), *gr;
  uint16_t *gb = to_bf16(g, (size_t)N * O, &gr);
  float *gin = h_rand((size_t)N * K, 1.0f), *gW = h_rand((size_t)O * K, 1.0f);
  float *d_gin = d_upload(gin, (size_t)N * K), *d_gW = d_upload(gW, (size_t)O * K);
  vlm_bf16 *d_g = d_upload_bytes(gb, (size_t)N * O * 2);
  linear_backward(gin, gW, NULL, gr, inr, Wr, N, K, O);
  cuda_linear_backward_bf16(&ctx, st, d_gin, d_gW, d_g, d_in, d_W, N, K, O);
  snprintf(name, sizeof name, "linear_backward_bf16 din N=%d K=%d O=%d", N, K, O);
  check(name, d_gin, gin, (size_t)N * K, TOL_BF16_SAME);
  snprintf(name, sizeof name, "linear_backward_bf16 dW N=%d K=%d O=%d", N, K, O);
  check(name, d_gW, gW, (size_t)O * K, TOL_BF16_SAME);

  /* matmul with P[K,O] = the same bits read as [K,O] */
  float *mo = h_floats((size_t)N * O);
  matmul_forward(mo, inr, Wr, N, K, O);
  cuda_matmul_forward_bf16(&ctx, st, d_out, d_in, d_W, N, K, O);
  snprintf(name, sizeof name, "matmul_forward_bf16 N=%d K=%d O=%d", N, K, O);
  check(name, d_out, mo, (size_t)N * O, TOL_BF16_SAME);
  matmul_backward(gin, gW, gr, inr, Wr, N, K, O);
  cuda_matmul_backward_bf16(&ctx, st, d_gin, d_gW, d_g, d_in, d_W, N, K, O);
  snprintf(name, sizeof name, "matmul_backward_bf16 din N=%d K=%d O=%d", N, K, O);
  check(name, d_gin, gin, (size_t)N * K, TOL_BF16_SAME);
  snprintf(name, sizeof name, "matmul_backward_bf16 dP N=%d K=%d O=%d", N, K, O);
  check(name, d_gW, gW, (size_t)O * K, TOL_BF16_SAME);

  free(in), free(W), free(b), free(inr), free(Wr), free(inb), free(Wb), free(out_same);
  free(out_f32), free(g), free(gr), free(gb), free(gin), free(gW), free(mo);
  d_free(d_in32), d_free(d_W32), d_free(d_in), d_free(d_W), d_free(d_b), d_free(d_out);
  d_free(d_gin), d_free(d_gW), d_free(d_g);
}

/* ---- normalisation ---------------------------------------------------------------- */

static void test_layernorm(int N, int C) {
  char name[128];
  const size_t n = (size_t)N * C;
  float *x = h_rand(n, 2.0f), *w = h_rand((size_t)C, 1.0f), *b = h_rand((size_t)C, 1.0f);
  for (size_t i = 0; i < n; i++) x[i] += 0.5f; /* a non-zero mean */
  float *out = h_floats(n), *mean = h_floats((size_t)N), *rstd = h_floats((size_t)N);
  layernorm_forward(out, mean, rstd, x, w, b, N, C, 1e-6f);
  float *d_x = d_upload(x, n), *d_w = d_upload(w, (size_t)C), *d_b = d_upload(b, (size_t)C);
  float *d_out = d_alloc(n * 4), *d_mean = d_alloc((size_t)N * 4);
  float *d_rstd = d_alloc((size_t)N * 4);
  cuda_layernorm_forward(&ctx, st, d_out, d_mean, d_rstd, d_x, d_w, d_b, N, C, 1e-6f);
  snprintf(name, sizeof name, "layernorm_forward out N=%d C=%d", N, C);
  check(name, d_out, out, n, TOL_F32);
  check("layernorm_forward mean", d_mean, mean, (size_t)N, TOL_F32);
  check("layernorm_forward rstd", d_rstd, rstd, (size_t)N, TOL_F32);
  float *g = h_rand(n, 1.0f), *gx = h_rand(n, 1.0f), *gw = h_rand((size_t)C, 1.0f);
  float *gb = h_rand((size_t)C, 1.0f);
  float *d_g = d_upload(g, n), *d_gx = d_upload(gx, n), *d_gw = d_upload(gw, (size_t)C);
  float *d_gb = d_upload(gb, (size_t)C);
  layernorm_backward(gx, gw, gb, g, x, w, mean, rstd, N, C);
  cuda_layernorm_backward(&ctx, st, d_gx, d_gw, d_gb, d_g, d_x, d_w, d_mean, d_rstd, N, C);
  snprintf(name, sizeof name, "layernorm_backward din N=%d C=%d", N, C);
  check(name, d_gx, gx, n, TOL_F32);
  check("layernorm_backward dw", d_gw, gw, (size_t)C, TOL_F32);
  check("layernorm_backward db", d_gb, gb, (size_t)C, TOL_F32);
  float *snap_w = snapshot(d_gw, (size_t)C), *snap_x = snapshot(d_gx, n);
  layernorm_backward(NULL, NULL, gb, g, x, w, mean, rstd, N, C);
  cuda_layernorm_backward(&ctx, st, NULL, NULL, d_gb, d_g, d_x, d_w, d_mean, d_rstd, N, C);
  check("layernorm_backward db only (din, dw NULL)", d_gb, gb, (size_t)C, TOL_F32);
  check_unchanged("layernorm_backward: NULL dw left untouched", d_gw, snap_w, (size_t)C);
  check_unchanged("layernorm_backward: NULL din left untouched", d_gx, snap_x, n);
  /* determinism of the column sums */
  float *d_a = d_alloc((size_t)C * 4), *d_c = d_alloc((size_t)C * 4);
  RT(cudaMemsetAsync(d_a, 0, (size_t)C * 4, st));
  RT(cudaMemsetAsync(d_c, 0, (size_t)C * 4, st));
  cuda_layernorm_backward(&ctx, st, NULL, d_a, NULL, d_g, d_x, d_w, d_mean, d_rstd, N, C);
  cuda_layernorm_backward(&ctx, st, NULL, d_c, NULL, d_g, d_x, d_w, d_mean, d_rstd, N, C);
  check_same_bits("layernorm_backward dw deterministic (twice, same bits)", d_a, d_c, (size_t)C);
  free(x), free(w), free(b), free(out), free(mean), free(rstd), free(g), free(gx), free(gw);
  free(gb);
  d_free(d_x), d_free(d_w), d_free(d_b), d_free(d_out), d_free(d_mean), d_free(d_rstd);
  d_free(d_g), d_free(d_gx), d_free(d_gw), d_free(d_gb), d_free(d_a), d_free(d_c);
}

static void test_rmsnorm(int N, int C) {
  char name[128];
  const size_t n = (size_t)N * C;
  float *x = h_rand(n, 2.0f), *w = h_rand((size_t)C, 1.0f);
  float *out = h_floats(n), *rstd = h_floats((size_t)N);
  rmsnorm_forward(out, rstd, x, w, N, C, 1e-6f);
  float *d_x = d_upload(x, n), *d_w = d_upload(w, (size_t)C);
  float *d_out = d_alloc(n * 4), *d_rstd = d_alloc((size_t)N * 4);
  cuda_rmsnorm_forward(&ctx, st, d_out, d_rstd, d_x, d_w, N, C, 1e-6f);
  snprintf(name, sizeof name, "rmsnorm_forward out N=%d C=%d", N, C);
  check(name, d_out, out, n, TOL_F32);
  check("rmsnorm_forward rstd", d_rstd, rstd, (size_t)N, TOL_F32);
  float *g = h_rand(n, 1.0f), *gx = h_rand(n, 1.0f), *gw = h_rand((size_t)C, 1.0f);
  float *d_g = d_upload(g, n), *d_gx = d_upload(gx, n), *d_gw = d_upload(gw, (size_t)C);
  rmsnorm_backward(gx, gw, g, x, w, rstd, N, C);
  cuda_rmsnorm_backward(&ctx, st, d_gx, d_gw, d_g, d_x, d_w, d_rstd, N, C);
  snprintf(name, sizeof name, "rmsnorm_backward din N=%d C=%d", N, C);
  check(name, d_gx, gx, n, TOL_F32);
  check("rmsnorm_backward dw", d_gw, gw, (size_t)C, TOL_F32);
  rmsnorm_backward(gx, NULL, g, x, w, rstd, N, C);
  cuda_rmsnorm_backward(&ctx, st, d_gx, NULL, d_g, d_x, d_w, d_rstd, N, C);
  check("rmsnorm_backward din only (dw NULL)", d_gx, gx, n, TOL_F32);
  free(x), free(w), free(out), free(rstd), free(g), free(gx), free(gw);
  d_free(d_x), d_free(d_w), d_free(d_out), d_free(d_rstd), d_free(d_g), d_free(d_gx);
  d_free(d_gw);
}

/* ---- activations -------------------------------------------------------------------- */

static void test_gelu_swiglu(long n) {
  float *x = h_rand((size_t)n, 5.0f), *out = h_floats((size_t)n);
  float *d_x = d_upload(x, (size_t)n), *d_out = d_alloc((size_t)n * 4);
  gelu_forward(out, x, n);
  cuda_gelu_forward(&ctx, st, d_out, d_x, n);
  check("gelu_forward", d_out, out, (size_t)n, TOL_F32);
  float *g = h_rand((size_t)n, 1.0f), *gx = h_rand((size_t)n, 1.0f);
  float *d_g = d_upload(g, (size_t)n), *d_gx = d_upload(gx, (size_t)n);
  gelu_backward(gx, g, x, n);
  cuda_gelu_backward(&ctx, st, d_gx, d_g, d_x, n);
  check("gelu_backward", d_gx, gx, (size_t)n, TOL_F32);

  float *a = h_rand((size_t)n, 3.0f), *gate = h_rand((size_t)n, 6.0f);
  float *d_a = d_upload(a, (size_t)n), *d_gate = d_upload(gate, (size_t)n);
  swiglu_forward(out, a, gate, n);
  cuda_swiglu_forward(&ctx, st, d_out, d_a, d_gate, n);
  check("swiglu_forward", d_out, out, (size_t)n, TOL_F32);
  float *da = h_rand((size_t)n, 1.0f), *dgt = h_rand((size_t)n, 1.0f);
  float *d_da = d_upload(da, (size_t)n), *d_dgt = d_upload(dgt, (size_t)n);
  swiglu_backward(da, dgt, g, a, gate, n);
  cuda_swiglu_backward(&ctx, st, d_da, d_dgt, d_g, d_a, d_gate, n);
  check("swiglu_backward da", d_da, da, (size_t)n, TOL_F32);
  check("swiglu_backward dg", d_dgt, dgt, (size_t)n, TOL_F32);
  swiglu_backward(da, NULL, g, a, gate, n);
  cuda_swiglu_backward(&ctx, st, d_da, NULL, d_g, d_a, d_gate, n);
  check("swiglu_backward da only", d_da, da, (size_t)n, TOL_F32);
  swiglu_backward(NULL, dgt, g, a, gate, n);
  cuda_swiglu_backward(&ctx, st, NULL, d_dgt, d_g, d_a, d_gate, n);
  check("swiglu_backward dg only", d_dgt, dgt, (size_t)n, TOL_F32);
  free(x), free(out), free(g), free(gx), free(a), free(gate), free(da), free(dgt);
  d_free(d_x), d_free(d_out), d_free(d_g), d_free(d_gx), d_free(d_a), d_free(d_gate);
  d_free(d_da), d_free(d_dgt);
}

static void test_softmax(int N, int C) {
  char name[128];
  const size_t n = (size_t)N * C;
  float *x = h_rand(n, 8.0f), *y = h_floats(n);
  softmax_forward(y, x, N, C);
  float *d_x = d_upload(x, n), *d_y = d_alloc(n * 4);
  cuda_softmax_forward(&ctx, st, d_y, d_x, N, C);
  const double tol = C > 1024 ? TOL_LONG_ROW : TOL_F32;
  snprintf(name, sizeof name, "softmax_forward N=%d C=%d", N, C);
  check(name, d_y, y, n, tol);
  cuda_softmax_forward(&ctx, st, d_x, d_x, N, C); /* in place */
  check("softmax_forward in place (out aliases in)", d_x, y, n, tol);
  float *g = h_rand(n, 1.0f), *gx = h_rand(n, 1.0f);
  float *d_g = d_upload(g, n), *d_gx = d_upload(gx, n);
  softmax_backward(gx, g, y, N, C);
  cuda_softmax_backward(&ctx, st, d_gx, d_g, d_y, N, C);
  check("softmax_backward", d_gx, gx, n, TOL_F32);
  free(x), free(y), free(g), free(gx);
  d_free(d_x), d_free(d_y), d_free(d_g), d_free(d_gx);
}

static void test_rope(int T, int H, int D, int R, int ld) {
  char name[128];
  const size_t n = (size_t)T * ld;
  float *x = h_rand(n, 1.0f), *xc = h_copy(x, n);
  int *pos = h_alloc((size_t)T * sizeof(int));
  for (int t = 0; t < T; t++) pos[t] = (int)rng_below(&rng, 8192);
  pos[0] = 0;
  float *d_x = d_upload(x, n);
  int *d_pos = d_upload_bytes(pos, (size_t)T * sizeof(int));
  rope_forward(xc, pos, T, H, D, R, ld, 10000.0f);
  cuda_rope_forward(&ctx, st, d_x, d_pos, T, H, D, R, ld, 10000.0f);
  snprintf(name, sizeof name, "rope_forward T=%d H=%d D=%d R=%d ld=%d", T, H, D, R, ld);
  check(name, d_x, xc, n, TOL_F32);
  rope_backward(xc, pos, T, H, D, R, ld, 10000.0f);
  cuda_rope_backward(&ctx, st, d_x, d_pos, T, H, D, R, ld, 10000.0f);
  check("rope_backward", d_x, xc, n, TOL_F32);
  check("rope_backward o rope_forward = identity", d_x, x, n, TOL_F32);
  free(x), free(xc), free(pos);
  d_free(d_x), d_free(d_pos);
}

/* ---- attention ------------------------------------------------------------------------ */

enum { LAYOUT_VIT = 0, LAYOUT_LLM = 1, LAYOUT_CROSS = 2 };

/* One attention case: q/k/v live in one fused buffer (ViT, LLM) or in a q buffer and a
 * kv buffer (cross); the gradient buffers have the same shapes. */
static void test_attention(const char *label, int layout, int Tq, int Tk, int H, int D,
                           int causal) {
  char name[160];
  attn_shape s;
  memset(&s, 0, sizeof s);
  s.Tq = Tq, s.Tk = Tk, s.H = H, s.D = D, s.causal = causal;
  s.scale = 1.0f / sqrtf((float)D);
  size_t nq, nkv, qo, ko, vo; /* buffer sizes and offsets */
  if (layout == LAYOUT_VIT) { /* per head [q_h | k_h | v_h], ld 3HD */
    s.ldq = s.ldk = s.ldv = 3 * H * D;
    s.hsq = s.hsk = s.hsv = 3 * D;
    nq = (size_t)Tq * 3 * H * D, nkv = 0, qo = 0, ko = (size_t)D, vo = 2 * (size_t)D;
  } else if (layout == LAYOUT_LLM) { /* [q | k | v], ld 3HD, head stride D */
    s.ldq = s.ldk = s.ldv = 3 * H * D;
    s.hsq = s.hsk = s.hsv = D;
    nq = (size_t)Tq * 3 * H * D, nkv = 0, qo = 0, ko = (size_t)H * D, vo = 2 * (size_t)H * D;
  } else { /* q [Tq, HD]; kv [Tk, 2HD] = [k | v] */
    s.ldq = H * D, s.ldk = s.ldv = 2 * H * D;
    s.hsq = s.hsk = s.hsv = D;
    nq = (size_t)Tq * H * D, nkv = (size_t)Tk * 2 * H * D, qo = 0, ko = 0, vo = (size_t)H * D;
  }
  float *qb = h_rand(nq, 2.0f), *kvb = nkv ? h_rand(nkv, 2.0f) : NULL;
  const float *q = qb + qo, *k = (nkv ? kvb : qb) + ko, *v = (nkv ? kvb : qb) + vo;
  const size_t no = (size_t)Tq * H * D, nl = (size_t)H * Tq;
  float *out = h_floats(no), *lse = h_floats(nl);
  float *scr = h_floats(attention_scratch_floats(&s, omp_get_max_threads()));
  attention_forward(out, lse, q, k, v, &s, scr);

  float *d_qb = d_upload(qb, nq), *d_kvb = nkv ? d_upload(kvb, nkv) : NULL;
  const float *dq_ = d_qb + qo, *dk_ = (nkv ? d_kvb : d_qb) + ko, *dv_ = (nkv ? d_kvb : d_qb) + vo;
  float *d_out = d_alloc(no * 4), *d_lse = d_alloc(nl * 4);
  float *d_scr = d_alloc(cuda_attention_scratch_floats(&s) * 4 + 4);
  cuda_attention_forward(&ctx, st, d_out, d_lse, dq_, dk_, dv_, &s, d_scr);
  snprintf(name, sizeof name, "attention_forward %s out", label);
  check(name, d_out, out, no, TOL_ATTN_FWD);
  snprintf(name, sizeof name, "attention_forward %s lse", label);
  check(name, d_lse, lse, nl, TOL_ATTN_FWD);

  /* backward onto non-zero gradient buffers */
  float *g = h_rand(no, 1.0f);
  float *gq = h_rand(nq, 1.0f), *gkv = nkv ? h_rand(nkv, 1.0f) : NULL;
  float *gq0 = h_copy(gq, nq), *gkv0 = nkv ? h_copy(gkv, nkv) : NULL;
  float *d_g = d_upload(g, no), *d_gq = d_upload(gq, nq), *d_gkv = nkv ? d_upload(gkv, nkv) : NULL;
  float *gkbase = nkv ? gkv : gq, *d_gkbase = nkv ? d_gkv : d_gq;
  attention_backward(gq + qo, gkbase + ko, gkbase + vo, g, out, lse, q, k, v, &s, scr);
  cuda_attention_backward(&ctx, st, d_gq + qo, d_gkbase + ko, d_gkbase + vo, d_g, d_out, d_lse,
                          dq_, dk_, dv_, &s, d_scr);
  snprintf(name, sizeof name, "attention_backward %s dq,dk,dv (q buffer)", label);
  check(name, d_gq, gq, nq, TOL_ATTN_BWD);
  if (nkv) {
    snprintf(name, sizeof name, "attention_backward %s dk,dv (kv buffer)", label);
    check(name, d_gkv, gkv, nkv, TOL_ATTN_BWD);
  }

  /* dk NULL: the k part must keep its values, dq and dv accumulate */
  memcpy(gq, gq0, nq * sizeof(float));
  if (nkv) memcpy(gkv, gkv0, nkv * sizeof(float));
  RT(cudaMemcpyAsync(d_gq, gq0, nq * 4, cudaMemcpyHostToDevice, st));
  if (nkv) RT(cudaMemcpyAsync(d_gkv, gkv0, nkv * 4, cudaMemcpyHostToDevice, st));
  attention_backward(gq + qo, NULL, gkbase + vo, g, out, lse, q, k, v, &s, scr);
  cuda_attention_backward(&ctx, st, d_gq + qo, NULL, d_gkbase + vo, d_g, d_out, d_lse, dq_, dk_,
                          dv_, &s, d_scr);
  snprintf(name, sizeof name, "attention_backward %s dk NULL (q buffer)", label);
  check(name, d_gq, gq, nq, TOL_ATTN_BWD);
  if (nkv) {
    snprintf(name, sizeof name, "attention_backward %s dk NULL (kv buffer)", label);
    check(name, d_gkv, gkv, nkv, TOL_ATTN_BWD);
  }
  /* the k part of the gradient must still hold its starting values, exactly */
  {
    float *gk_now = h_floats(nkv ? nkv : nq);
    const float *gk0 = nkv ? gkv0 : gq0;
    d_download(gk_now, nkv ? d_gkv : d_gq, nkv ? nkv : nq);
    long bad = 0;
    for (int t = 0; t < Tk; t++)
      for (int h = 0; h < H; h++)
        for (int d = 0; d < D; d++) {
          const size_t i = ko + (size_t)t * s.ldk + (size_t)h * s.hsk + (size_t)d;
          bad += memcmp(&gk_now[i], &gk0[i], sizeof(float)) != 0;
        }
    snprintf(name, sizeof name, "attention_backward %s: NULL dk left untouched", label);
    report(bad == 0, name, (double)bad, 0.0);
    free(gk_now);
  }

  /* determinism: the same backward twice gives the same bits */
  float *d_r1 = d_upload(gq0, nq), *d_r2 = d_upload(gq0, nq);
  float *d_s1 = nkv ? d_upload(gkv0, nkv) : NULL, *d_s2 = nkv ? d_upload(gkv0, nkv) : NULL;
  float *b1 = nkv ? d_s1 : d_r1, *b2 = nkv ? d_s2 : d_r2;
  cuda_attention_backward(&ctx, st, d_r1 + qo, b1 + ko, b1 + vo, d_g, d_out, d_lse, dq_, dk_, dv_,
                          &s, d_scr);
  cuda_attention_backward(&ctx, st, d_r2 + qo, b2 + ko, b2 + vo, d_g, d_out, d_lse, dq_, dk_, dv_,
                          &s, d_scr);
  snprintf(name, sizeof name, "attention_backward %s deterministic", label);
  check_same_bits(name, d_r1, d_r2, nq);
  if (nkv) check_same_bits(name, d_s1, d_s2, nkv);

  free(qb), free(kvb), free(out), free(lse), free(scr), free(g), free(gq), free(gkv), free(gq0);
  free(gkv0);
  d_free(d_qb), d_free(d_kvb), d_free(d_out), d_free(d_lse), d_free(d_scr), d_free(d_g);
  d_free(d_gq), d_free(d_gkv), d_free(d_r1), d_free(d_r2), d_free(d_s1), d_free(d_s2);
}

/* ---- loss ------------------------------------------------------------------------------ */

static void test_cross_entropy(int N, int V, int mode) {
  /* mode 0: separate dlogits; 1: dlogits aliases logits; 2: no dlogits */
  static const char *modes[3] = {"", " in place", " loss only"};
  char name[160];
  const size_t n = (size_t)N * V;
  float *x = h_rand(n, 4.0f), *xc = h_copy(x, n), *dl = h_floats(n);
  int *tg = h_alloc((size_t)N * sizeof(int));
  for (int i = 0; i < N; i++) tg[i] = i % 5 == 3 ? -100 : (int)rng_below(&rng, V);
  if (N > 2) tg[1] = V + 3; /* out of range: ignored like -100 */
  int nv_c = 0;
  float *cpu_dl = mode == 0 ? dl : mode == 1 ? xc : NULL;
  double loss_c = cross_entropy_forward_backward(cpu_dl, xc, tg, N, V, 0.37f, &nv_c);
  float *d_x = d_upload(x, n), *d_dl = mode == 0 ? d_alloc(n * 4) : NULL;
  int *d_tg = d_upload_bytes(tg, (size_t)N * sizeof(int));
  double *d_loss = d_alloc(sizeof(double));
  int *d_nv = d_alloc(sizeof(int));
  float *gpu_dl = mode == 0 ? d_dl : mode == 1 ? d_x : NULL;
  cuda_cross_entropy_forward_backward(&ctx, st, gpu_dl, d_x, d_tg, N, V, 0.37f, d_loss, d_nv);
  double loss_g = 0.0;
  int nv_g = -1;
  d_download_bytes(&loss_g, d_loss, sizeof loss_g);
  d_download_bytes(&nv_g, d_nv, sizeof nv_g);
  const double e = fabs(loss_g - loss_c) / fmax(fabs(loss_c), 1e-30);
  const double tol = V > 1024 ? TOL_LONG_ROW : TOL_F32;
  snprintf(name, sizeof name, "cross_entropy N=%d V=%d%s loss sum", N, V, modes[mode]);
  report(e <= tol, name, e, tol);
  snprintf(name, sizeof name, "cross_entropy N=%d V=%d%s valid rows (%d)", N, V, modes[mode],
           nv_c);
  report(nv_g == nv_c, name, fabs((double)(nv_g - nv_c)), 0.0);
  if (mode != 2) {
    snprintf(name, sizeof name, "cross_entropy N=%d V=%d%s dlogits", N, V, modes[mode]);
    check(name, gpu_dl, cpu_dl, n, TOL_F32);
  }
  free(x), free(xc), free(dl), free(tg);
  d_free(d_x), d_free(d_dl), d_free(d_tg), d_free(d_loss), d_free(d_nv);
}

/* ---- image ops --------------------------------------------------------------------------- */

static void test_image(void) {
  /* im2col: a 28 x 28 window at (14, 28) of a 56 x 70 image, 14 x 14 patches */
  const int Hi = 56, Wi = 70, win = 28, p = 14, G = win / p;
  float *img = h_rand((size_t)Hi * Wi * 3, 1.0f);
  float *cols = h_floats((size_t)G * G * 3 * p * p);
  patch_im2col(cols, img, Hi, Wi, 14, 28, win, p);
  float *d_img = d_upload(img, (size_t)Hi * Wi * 3);
  float *d_cols = d_alloc((size_t)G * G * 3 * p * p * 4);
  cuda_patch_im2col(&ctx, st, d_cols, d_img, Hi, Wi, 14, 28, win, p);
  check("patch_im2col", d_cols, cols, (size_t)G * G * 3 * p * p, 0.0);

  /* bicubic: the 1-D matrix, then resizes up and down with their transposes */
  float *M = h_floats(32 * 24);
  float *d_M = d_alloc(32 * 24 * 4);
  bicubic_matrix(M, 32, 24);
  cuda_bicubic_matrix(&ctx, st, d_M, 32, 24);
  check("bicubic_matrix 24 -> 32", d_M, M, 32 * 24, TOL_F32);
  const int shapes[2][4] = {{7, 9, 12, 5}, {32, 32, 20, 27}}; /* Hi Wi Ho Wo */
  for (int c = 0; c < 2; c++) {
    char name[128];
    const int hi = shapes[c][0], wi = shapes[c][1], ho = shapes[c][2], wo = shapes[c][3], C = 6;
    const size_t nin = (size_t)hi * wi * C, nout = (size_t)ho * wo * C, ntmp = (size_t)ho * wi * C;
    float *in = h_rand(nin, 1.0f), *out = h_floats(nout), *tmp = h_floats(ntmp);
    bicubic_resize_forward(out, in, hi, wi, ho, wo, C, tmp);
    float *d_in = d_upload(in, nin), *d_out = d_alloc(nout * 4), *d_tmp = d_alloc(ntmp * 4);
    cuda_bicubic_resize_forward(&ctx, st, d_out, d_in, hi, wi, ho, wo, C, d_tmp);
    snprintf(name, sizeof name, "bicubic_resize_forward %dx%d -> %dx%d", hi, wi, ho, wo);
    check(name, d_out, out, nout, TOL_F32);
    float *g = h_rand(nout, 1.0f), *gin = h_rand(nin, 1.0f);
    float *d_g = d_upload(g, nout), *d_gin = d_upload(gin, nin);
    bicubic_resize_backward(gin, g, hi, wi, ho, wo, C, tmp);
    cuda_bicubic_resize_backward(&ctx, st, d_gin, d_g, hi, wi, ho, wo, C, d_tmp);
    snprintf(name, sizeof name, "bicubic_resize_backward %dx%d -> %dx%d", hi, wi, ho, wo);
    check(name, d_gin, gin, nin, TOL_F32);
    free(in), free(out), free(tmp), free(g), free(gin);
    d_free(d_in), d_free(d_out), d_free(d_tmp), d_free(d_g), d_free(d_gin);
  }
  /* the resampler's 2-D sin-cos table */
  const int Gt = 16, dim = 128;
  float *tab = h_floats((size_t)Gt * Gt * dim), *d_tab = d_alloc((size_t)Gt * Gt * dim * 4);
  sincos_2d_table(tab, Gt, dim);
  cuda_sincos_2d_table(&ctx, st, d_tab, Gt, dim);
  check("sincos_2d_table G=16 dim=128", d_tab, tab, (size_t)Gt * Gt * dim, TOL_F32);
  free(img), free(cols), free(M), free(tab);
  d_free(d_img), d_free(d_cols), d_free(d_M), d_free(d_tab);
}

/* ---- optimizer ------------------------------------------------------------------------------ */

static void test_optimizer(long n) {
  float *p = h_rand((size_t)n, 1.0f), *g = h_rand((size_t)n, 0.1f);
  float *m = h_rand((size_t)n, 0.01f), *v = h_rand((size_t)n, 0.001f);
  for (long i = 0; i < n; i++) v[i] = fabsf(v[i]);
  float *d_p = d_upload(p, (size_t)n), *d_g = d_upload(g, (size_t)n);
  float *d_m = d_upload(m, (size_t)n), *d_v = d_upload(v, (size_t)n);
  vlm_bf16 *d_pb = d_alloc((size_t)n * 2);
  for (long t = 1; t <= 3; t++) {
    const float gs = t == 2 ? 0.37f : 1.0f; /* step 2 with a clipping coefficient */
    adamw_step(p, g, m, v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, t, gs);
    if (t < 3)
      cuda_adamw_step(&ctx, st, d_p, d_g, d_m, d_v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, t, gs);
    else
      cuda_adamw_step_bf16(&ctx, st, d_p, d_pb, d_g, d_m, d_v, n, 1e-3f, 0.9f, 0.95f, 1e-8f,
                           0.1f, t, gs);
  }
  check("adamw_step x3 (2nd clipped, last with bf16 copy) p", d_p, p, (size_t)n, TOL_F32);
  check("adamw_step x3 m", d_m, m, (size_t)n, TOL_F32);
  check("adamw_step x3 v", d_v, v, (size_t)n, TOL_F32);
  /* the bf16 copy is exactly the rounding of the GPU's own fp32 result */
  float *pg = h_floats((size_t)n);
  uint16_t *pb = h_alloc((size_t)n * 2);
  d_download(pg, d_p, (size_t)n);
  d_download_bytes(pb, d_pb, (size_t)n * 2);
  long bad = 0;
  for (long i = 0; i < n; i++) bad += pb[i] != host_bf16(pg[i]);
  report(bad == 0, "adamw_step_bf16 copy = bf16(fp32 master)", (double)bad, 0.0);

  /* sum of squares, accumulated twice into one double */
  double ss = sum_squares(g, n), sg = 0.0;
  double *d_ss = d_alloc(sizeof(double));
  RT(cudaMemsetAsync(d_ss, 0, sizeof(double), st));
  cuda_sum_squares(&ctx, st, d_ss, d_g, n);
  cuda_sum_squares(&ctx, st, d_ss, d_g, n);
  d_download_bytes(&sg, d_ss, sizeof sg);
  double e = fabs(sg - 2.0 * ss) / (2.0 * ss);
  report(e <= TOL_SUMSQ, "sum_squares (accumulated twice)", e, TOL_SUMSQ);

  scale_inplace(g, n, 0.37f);
  cuda_scale_inplace(&ctx, st, d_g, n, 0.37f);
  check("scale_inplace", d_g, g, (size_t)n, 0.0);
  free(p), free(g), free(m), free(v), free(pg), free(pb);
  d_free(d_p), d_free(d_g), d_free(d_m), d_free(d_v), d_free(d_pb), d_free(d_ss);
}

/* ---- LoRA ---------------------------------------------------------------------------------- */

static void test_lora(int N, int K, int O, int r) {
  char name[128];
  float *x = h_rand((size_t)N * K, 1.0f), *A = h_rand((size_t)r * K, 0.3f);
  float *B = h_rand((size_t)O * r, 0.3f), scale = 0.7f;
  float *y = h_rand((size_t)N * O, 1.0f), *t = h_floats((size_t)N * r);
  float *d_x = d_upload(x, (size_t)N * K), *d_A = d_upload(A, (size_t)r * K);
  float *d_B = d_upload(B, (size_t)O * r), *d_s = d_upload(&scale, 1);
  float *d_y = d_upload(y, (size_t)N * O), *d_t = d_alloc((size_t)N * r * 4);
  lora_forward(y, t, x, A, B, &scale, N, K, O, r);
  cuda_lora_forward(&ctx, st, d_y, d_t, d_x, d_A, d_B, d_s, N, K, O, r);
  snprintf(name, sizeof name, "lora_forward y N=%d K=%d O=%d r=%d", N, K, O, r);
  check(name, d_y, y, (size_t)N * O, TOL_F32);
  check("lora_forward t", d_t, t, (size_t)N * r, TOL_F32);
  float *g = h_rand((size_t)N * O, 1.0f), *gx = h_rand((size_t)N * K, 1.0f);
  float *gA = h_rand((size_t)r * K, 1.0f), *gB = h_rand((size_t)O * r, 1.0f), gs = 0.25f;
  float *scr = h_floats((size_t)N * r);
  float *d_g = d_upload(g, (size_t)N * O), *d_gx = d_upload(gx, (size_t)N * K);
  float *d_gA = d_upload(gA, (size_t)r * K), *d_gB = d_upload(gB, (size_t)O * r);
  float *d_gs = d_upload(&gs, 1), *d_scr = d_alloc((size_t)N * r * 4);
  lora_backward(gx, gA, gB, &gs, g, x, t, A, B, &scale, N, K, O, r, scr);
  cuda_lora_backward(&ctx, st, d_gx, d_gA, d_gB, d_gs, d_g, d_x, d_t, d_A, d_B, d_s, N, K, O, r,
                     d_scr);
  check("lora_backward dx", d_gx, gx, (size_t)N * K, TOL_F32);
  check("lora_backward dA", d_gA, gA, (size_t)r * K, TOL_F32);
  check("lora_backward dB", d_gB, gB, (size_t)O * r, TOL_F32);
  check("lora_backward dscale", d_gs, &gs, 1, TOL_F32);
  float *snap_s = snapshot(d_gs, 1), *snap_A = snapshot(d_gA, (size_t)r * K);
  lora_backward(gx, NULL, NULL, NULL, g, x, t, A, B, &scale, N, K, O, r, scr);
  cuda_lora_backward(&ctx, st, d_gx, NULL, NULL, NULL, d_g, d_x, d_t, d_A, d_B, d_s, N, K, O, r,
                     d_scr);
  check("lora_backward dx only (dA, dB, dscale NULL)", d_gx, gx, (size_t)N * K, TOL_F32);
  check_unchanged("lora_backward: NULL dscale left untouched", d_gs, snap_s, 1);
  check_unchanged("lora_backward: NULL dA left untouched", d_gA, snap_A, (size_t)r * K);
  free(x), free(A), free(B), free(y), free(t), free(g), free(gx), free(gA), free(gB), free(scr);
  d_free(d_x), d_free(d_A), d_free(d_B), d_free(d_s), d_free(d_y), d_free(d_t), d_free(d_g);
  d_free(d_gx), d_free(d_gA), d_free(d_gB), d_free(d_gs), d_free(d_scr);
}

/* ---- rows helpers: exact (one thread per output element, the CPU's expression and
 * order), compared bit for bit ---------------------------------------------------- */

static void check_bits(const char *name, const float *gpu, const float *cpu, size_t n) {
  float *h = h_floats(n);
  d_download(h, gpu, n);
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) bad += memcmp(&h[i], &cpu[i], sizeof(float)) != 0;
  report(bad == 0, name, (double)bad, 0.0);
  free(h);
}

static int *h_ints(size_t n) { return h_alloc(n * sizeof(int)); }
static int *d_upload_ints(const int *h, size_t n) { return d_upload_bytes(h, n * sizeof(int)); }

/* a random permutation of [0, n): any prefix holds distinct rows */
static int *rand_distinct(int n) {
  int *all = h_ints((size_t)n);
  for (int i = 0; i < n; i++) all[i] = i;
  for (int i = n - 1; i > 0; i--) {
    int j = (int)rng_below(&rng, i + 1), t = all[i];
    all[i] = all[j], all[j] = t;
  }
  return all;
}

static int *rand_rows(int k, int n) {
  int *r = h_ints((size_t)k);
  for (int i = 0; i < k; i++) r[i] = (int)rng_below(&rng, n);
  return r;
}

static void test_rows_elementwise(long n) {
  char name[128];
  float *y = h_rand((size_t)n, 1.0f), *x = h_rand((size_t)n, 1.0f), *a = h_rand((size_t)n, 1.0f);
  float *d_y = d_upload(y, (size_t)n), *d_x = d_upload(x, (size_t)n), *d_a = d_upload(a, (size_t)n);
  add_into(y, x, n);
  cuda_add_into(&ctx, st, d_y, d_x, n);
  snprintf(name, sizeof name, "add_into n=%ld", n);
  check_bits(name, d_y, y, (size_t)n);
  float *out = h_floats((size_t)n), *d_out = d_alloc((size_t)n * 4);
  add_vec(out, a, x, n);
  cuda_add_vec(&ctx, st, d_out, d_a, d_x, n);
  snprintf(name, sizeof name, "add_vec n=%ld", n);
  check_bits(name, d_out, out, (size_t)n);
  add_vec(a, a, x, n); /* out aliases a */
  cuda_add_vec(&ctx, st, d_a, d_a, d_x, n);
  snprintf(name, sizeof name, "add_vec n=%ld (out aliases a)", n);
  check_bits(name, d_a, a, (size_t)n);
  free(y), free(x), free(a), free(out);
  d_free(d_y), d_free(d_x), d_free(d_a), d_free(d_out);
}

static void test_add_rows_bcast(int N, int P, int C) {
  char name[128];
  const size_t nx = (size_t)N * C, nt = (size_t)P * C;
  float *x = h_rand(nx, 1.0f), *t = h_rand(nt, 1.0f);
  float *d_x = d_upload(x, nx), *d_t = d_upload(t, nt);
  add_rows_bcast(x, t, N, P, C);
  cuda_add_rows_bcast(&ctx, st, d_x, d_t, N, P, C);
  snprintf(name, sizeof name, "add_rows_bcast N=%d P=%d C=%d", N, P, C);
  check_bits(name, d_x, x, nx);
  free(x), free(t);
  d_free(d_x), d_free(d_t);
}

/* mode 0: gather (dst_rows NULL), 1: scatter (src_rows NULL), 2: both, 3: neither */
static void test_rows_copy(int n, int C, int S, int D, int mode) {
  char name[128];
  static const char *what[4] = {"gather", "scatter", "both indexed", "plain"};
  float *src = h_rand((size_t)S * C, 1.0f), *dst = h_rand((size_t)D * C, 1.0f);
  int *dr = mode == 1 || mode == 2 ? rand_distinct(D) : NULL;
  int *sr = mode == 0 || mode == 2 ? rand_rows(n, S) : NULL;
  float *d_src = d_upload(src, (size_t)S * C), *d_dst = d_upload(dst, (size_t)D * C);
  int *d_dr = dr ? d_upload_ints(dr, (size_t)n) : NULL;
  int *d_sr = sr ? d_upload_ints(sr, (size_t)n) : NULL;
  rows_copy(dst, dr, src, sr, n, C);
  cuda_rows_copy(&ctx, st, d_dst, d_dr, d_src, d_sr, n, C);
  snprintf(name, sizeof name, "rows_copy %s n=%d C=%d", what[mode], n, C);
  check_bits(name, d_dst, dst, (size_t)D * C);
  free(src), free(dst), free(dr), free(sr);
  d_free(d_src), d_free(d_dst), d_free(d_dr), d_free(d_sr);
}

/* n_seg segments of 0..max_len rows each (empty ones included) into distinct dst rows;
 * src_rows random (repeats allowed) or NULL */
static void test_rows_segment_add(int n_seg, int max_len, int C, int S, int D, int indexed) {
  char name[128];
  int *seg = h_ints((size_t)n_seg + 1);
  seg[0] = 0;
  for (int j = 0; j < n_seg; j++) seg[j + 1] = seg[j] + (int)rng_below(&rng, max_len + 1);
  const int total = seg[n_seg];
  if (!indexed && S < total) S = total;
  float *src = h_rand((size_t)S * C, 1.0f), *dst = h_rand((size_t)D * C, 1.0f);
  int *dr = rand_distinct(D), *sr = indexed ? rand_rows(total, S) : NULL;
  float *d_src = d_upload(src, (size_t)S * C), *d_dst = d_upload(dst, (size_t)D * C);
  int *d_dr = d_upload_ints(dr, (size_t)n_seg), *d_seg = d_upload_ints(seg, (size_t)n_seg + 1);
  int *d_sr = sr ? d_upload_ints(sr, (size_t)(total ? total : 1)) : NULL;
  rows_segment_add(dst, dr, src, sr, seg, n_seg, C);
  cuda_rows_segment_add(&ctx, st, d_dst, d_dr, d_src, d_sr, d_seg, n_seg, C);
  snprintf(name, sizeof name, "rows_segment_add n_seg=%d rows=%d C=%d%s", n_seg, total, C,
           indexed ? " src_rows" : "");
  check_bits(name, d_dst, dst, (size_t)D * C);
  free(seg), free(src), free(dst), free(dr), free(sr);
  d_free(d_src), d_free(d_dst), d_free(d_dr), d_free(d_seg), d_free(d_sr);
}

static void test_image_normalize(long n_pixels) {
  char name[128];
  const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
  const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
  const size_t n = (size_t)n_pixels * 3;
  unsigned char *px = h_alloc(n);
  for (size_t i = 0; i < n; i++) px[i] = (unsigned char)rng_below(&rng, 256);
  px[0] = 0, px[1] = 255;
  float *out = h_floats(n), *d_out = d_alloc(n * 4);
  unsigned char *d_px = d_upload_bytes(px, n);
  image_normalize(out, px, n_pixels, mean, std);
  cuda_image_normalize(&ctx, st, d_out, d_px, n_pixels, mean, std);
  snprintf(name, sizeof name, "image_normalize n_pixels=%ld", n_pixels);
  check_bits(name, d_out, out, n);
  free(px), free(out);
  d_free(d_out), d_free(d_px);
}

static void test_rows(void) {
  test_rows_elementwise(100003);
  test_rows_elementwise(1);
  test_add_rows_bcast(5 * 37, 37, 67);
  test_add_rows_bcast(3, 3, 1);
  for (int mode = 0; mode < 4; mode++) test_rows_copy(53, 131, 97, 113, mode);
  test_rows_copy(7, 300, 7, 7, 2);
  test_rows_segment_add(41, 5, 300, 61, 59, 1);  /* C > 256 threads: column loop */
  test_rows_segment_add(41, 5, 300, 61, 59, 0);
  test_rows_segment_add(97, 1, 5, 40, 101, 1);   /* scatter-add, tiny rows */
  test_rows_segment_add(3, 40, 1664, 100, 3, 1); /* embedding-gradient-like long segments */
  test_image_normalize(1001);
}

int main(void) {
  const char *env = getenv("VLM_CUDA_DEVICE");
  int device = env ? atoi(env) : 0;
  if (vlm_cuda_ctx_create(&ctx, device, 0) != 0) {
    fprintf(stderr, "check_kernels: no usable CUDA device\n");
    return 2;
  }
  st = ctx.compute;
  struct cudaDeviceProp prop;
  RT(cudaGetDeviceProperties(&prop, device));
  printf("check_kernels: device %d: %s (sm_%d%d, %d SMs); CPU reference on %d OpenMP threads\n",
         device, prop.name, prop.major, prop.minor, prop.multiProcessorCount,
         omp_get_max_threads());
  rng_seed(&rng, 20240611);

  test_linear(37, 67, 45, 1);
  test_linear(256, 512, 384, 0);
  test_linear(3, 1664, 4992, 1);
  test_matmul(29, 53, 71);
  test_matmul(128, 1664, 4096);
  test_convert();
  test_linear_bf16(37, 67, 45);
  test_linear_bf16(256, 1024, 768);
  test_layernorm(77, 200);
  test_layernorm(300, 1664);
  test_rmsnorm(77, 200);
  test_rmsnorm(65, 4096);
  test_gelu_swiglu(100003);
  test_softmax(50, 77);
  test_softmax(7, 5000);
  test_rope(50, 3, 16, 16, 3 * 3 * 16); /* q part of an LLM [q|k|v] buffer */
  test_rope(33, 4, 128, 128, 4 * 128);
  test_rope(20, 2, 32, 24, 2 * 32); /* rotary_pct < 1 */
  test_attention("vit T=100 H=3 D=40", LAYOUT_VIT, 100, 100, 3, 40, 0);
  test_attention("vit T=70 H=2 D=104 (Monkey head)", LAYOUT_VIT, 70, 70, 2, 104, 0);
  test_attention("llm causal T=129 H=4 D=64", LAYOUT_LLM, 129, 129, 4, 64, 1);
  test_attention("llm causal T=65 H=2 D=128", LAYOUT_LLM, 65, 65, 2, 128, 1);
  test_attention("llm causal T=31 H=1 D=8", LAYOUT_LLM, 31, 31, 1, 8, 1);
  test_attention("cross Tq=33 Tk=70 H=2 D=128", LAYOUT_CROSS, 33, 70, 2, 128, 0);
  test_attention("cross Tq=1 Tk=5 H=3 D=16", LAYOUT_CROSS, 1, 5, 3, 16, 0);
  test_attention("causal tail Tq=40 Tk=100 H=2 D=32", LAYOUT_CROSS, 40, 100, 2, 32, 1);
  test_attention("causal tail Tq=3 Tk=70 H=2 D=64", LAYOUT_CROSS, 3, 70, 2, 64, 1);
  test_attention("vit T=40 H=1 D=256", LAYOUT_VIT, 40, 40, 1, 256, 0);
  test_cross_entropy(37, 1000, 0);
  test_cross_entropy(37, 1000, 1);
  test_cross_entropy(37, 1000, 2);
  test_cross_entropy(6, 151936, 0);
  test_image();
  test_optimizer(1000003);
  test_lora(50, 40, 30, 4);
  test_lora(200, 1664, 1664, 16);
  test_rows();

  vlm_cuda_ctx_destroy(&ctx);
  printf("%d passed, %d failed\n", n_pass, n_fail);
  return n_fail ? 1 : 0;
}
