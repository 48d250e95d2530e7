/* benchmarks/bench_attention.c: speed of attention_forward/attention_backward
 * (kernels/cpu/attention.c) at the model's shapes.
 *
 * Two configurations: the ViT's (T=1024, 16 heads of 104, per-head fused qkv,
 * not causal) and an LLM-like causal one (T=512, 5 heads of 128, [q|k|v]).
 * Prints milliseconds and GFLOP/s per pass, counting 4*T*T*D*H flops for the
 * forward and twice that for the backward, halved when causal. Not a test:
 * nothing is checked (tests/kernels/test_attention.c does that). Runs on
 * omp_get_max_threads() threads; takes a few seconds. */
#include "kernels/kernels.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fill(float *x, size_t n, unsigned seed) {
  unsigned s = seed;
  for (size_t i = 0; i < n; i++) {
    s = s * 1664525u + 1013904223u;
    x[i] = (float)((s >> 8) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
  }
}

/* Times `reps` forward and backward passes (after one warm-up) of one shape;
 * qkv is fused, per_head selects the ViT's [q_h|k_h|v_h] over [q|k|v]. */
static int bench(const char *label, int T, int H, int D, int causal, int per_head, int reps) {
  const int HD = H * D;
  attn_shape s = {.Tq = T, .Tk = T, .H = H, .D = D, .ldq = 3 * HD, .ldk = 3 * HD,
                  .ldv = 3 * HD, .causal = causal, .scale = 1.0f / sqrtf((float)D)};
  size_t ok, ov;
  if (per_head) {
    s.hsq = s.hsk = s.hsv = 3 * D;
    ok = (size_t)D, ov = 2 * (size_t)D;
  } else {
    s.hsq = s.hsk = s.hsv = D;
    ok = (size_t)HD, ov = 2 * (size_t)HD;
  }
  const size_t nqkv = (size_t)T * 3 * HD, nout = (size_t)T * HD;
  const size_t nscratch = attention_scratch_floats(&s, omp_get_max_threads());
  float *qkv = malloc(nqkv * sizeof(float)), *dqkv = calloc(nqkv, sizeof(float));
  float *out = malloc(nout * sizeof(float)), *dout = malloc(nout * sizeof(float));
  float *lse = malloc((size_t)H * T * sizeof(float));
  float *scratch = malloc(nscratch * sizeof(float));
  if (!qkv || !dqkv || !out || !dout || !lse || !scratch) {
    fprintf(stderr, "bench_attention: out of memory\n");
    free(qkv), free(dqkv), free(out), free(dout), free(lse), free(scratch);
    return -1;
  }
  fill(qkv, nqkv, 1u);
  fill(dout, nout, 2u);

  double t_fwd = 0.0, t_bwd = 0.0;
  for (int r = -1; r < reps; r++) { /* r = -1: warm-up, not timed */
    double t0 = now();
    attention_forward(out, lse, qkv, qkv + ok, qkv + ov, &s, scratch);
    double t1 = now();
    attention_backward(dqkv, dqkv + ok, dqkv + ov, dout, out, lse, qkv, qkv + ok, qkv + ov, &s,
                       scratch);
    double t2 = now();
    if (r >= 0) t_fwd += t1 - t0, t_bwd += t2 - t1;
  }
  t_fwd /= reps, t_bwd /= reps;
  double flop_fwd = 4.0 * T * (double)T * D * H * (causal ? 0.5 : 1.0);
  printf("%-34s fwd %8.2f ms %7.1f GFLOP/s | bwd %8.2f ms %7.1f GFLOP/s | scratch %.1f MiB\n",
         label, 1e3 * t_fwd, flop_fwd / t_fwd * 1e-9, 1e3 * t_bwd, 2 * flop_fwd / t_bwd * 1e-9,
         nscratch * sizeof(float) / 1048576.0);
  free(qkv), free(dqkv), free(out), free(dout), free(lse), free(scratch);
  return 0;
}

int main(void) {
  printf("bench_attention: %d threads\n", omp_get_max_threads());
  int rc = 0;
  rc |= bench("T=1024 H=16 D=104 (ViT, full)", 1024, 16, 104, 0, 1, 5);
  rc |= bench("T=512 H=5 D=128 (LLM, causal)", 512, 5, 128, 1, 0, 10);
  rc |= bench("T=256 H=6 D=64 (small's ViT, full)", 256, 6, 64, 0, 1, 20);
  return rc ? 1 : 0;
}
