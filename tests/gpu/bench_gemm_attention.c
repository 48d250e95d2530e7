/* tests/gpu/bench_gemm_attention.c: throughput of the CUDA backend's GEMMs (bf16 inputs,
 * fp32 accumulation and output, through cuBLASLt) and of its attention kernel, at the
 * shapes of the real Monkey model, against the GPU's bf16 dense peak.
 *
 * Needs a GPU (tests/gpu/run.sh runs it; it checks nothing and never fails on speed).
 * The peak is the vendor's dense (non-sparse) bf16 tensor-core figure, looked up by
 * device name, in TFLOP/s:
 *   H100 SXM5 989.5 | H100 PCIe 756.5 | H100 NVL 835.5 | H200 SXM 989.5 | H200 NVL 835.5
 *   GH200 989.5 | A100 (SXM4 and PCIe) 312.0
 * (NVIDIA datasheets: half of the "with sparsity" figures). An unknown device gets no
 * percentage. For comparison it also prints SMs x clock x dense bf16 FLOP/clock/SM
 * (2048 on sm_80, 4096 on sm_90) at the clock the driver reports as the maximum.
 *
 * GEMM shapes (M tokens x K in -> O out; forward out = in W^T, backward din = dout W
 * and dW = dout^T in; 2 M K O FLOP each):
 *   LLM (Qwen-7B part, 2048 tokens): c_attn 4096->12288, attn c_proj 4096->4096,
 *     w1 / w2 4096->11008, mlp c_proj 11008->4096, lm_head 4096->151936;
 *   ViT (bigG, 5 views x 1024 tokens): in_proj 1664->4992, out_proj 1664->1664,
 *     c_fc 1664->8192, c_proj 8192->1664.
 * Attention (the fp32 CUDA-core kernel, inputs fp32): ViT window T=1024 H=16 D=104;
 * LLM T=2048 H=32 D=128 causal; resampler cross Tq=256 Tk=1024 H=32 D=128. FLOPs
 * counted as FlashAttention does: forward 4 Tq Tk D H (halved when causal), backward
 * 2.5 x forward (useful work; this kernel recomputes more than that). */
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "kernels/cuda/kernels_cuda.h"

static vlm_cuda_ctx ctx;
static cudaStream_t st;
static double peak_tflops; /* 0: unknown */

static void rt(cudaError_t e, const char *what, int line) {
  if (e != cudaSuccess) {
    fprintf(stderr, "bench_gemm_attention: line %d: %s: %s\n", line, what, cudaGetErrorString(e));
    exit(2);
  }
}
#define RT(call) rt((call), #call, __LINE__)

typedef struct {
  const char *match;
  double tflops;
} peak_row;

/* First match wins, so the specific names come before the general ones. */
static const peak_row PEAKS[] = {
    {"GH200", 989.5},     {"H200 NVL", 835.5}, {"H200", 989.5}, {"H100 NVL", 835.5},
    {"H100 PCIe", 756.5}, {"H100", 989.5},     {"A100", 312.0},
};

static double lookup_peak(const char *name) {
  for (size_t i = 0; i < sizeof PEAKS / sizeof PEAKS[0]; i++)
    if (strstr(name, PEAKS[i].match)) return PEAKS[i].tflops;
  return 0.0;
}

static void *d_alloc(size_t bytes) {
  void *p = NULL;
  RT(cudaMalloc(&p, bytes));
  return p;
}

/* Fills n floats on the device with uniform [-1, 1) values (a random block repeated). */
static void fill_random(float *d, size_t n) {
  static float *block = NULL;
  const size_t nb = (size_t)1 << 22;
  if (!block) {
    vlm_rng rng;
    rng_seed(&rng, 7);
    float *h = malloc(nb * sizeof(float));
    for (size_t i = 0; i < nb; i++) h[i] = (float)(2.0 * rng_uniform(&rng) - 1.0);
    block = d_alloc(nb * sizeof(float));
    RT(cudaMemcpy(block, h, nb * sizeof(float), cudaMemcpyHostToDevice));
    free(h);
  }
  for (size_t off = 0; off < n; off += nb) {
    size_t len = n - off < nb ? n - off : nb;
    RT(cudaMemcpyAsync(d + off, block, len * sizeof(float), cudaMemcpyDeviceToDevice, st));
  }
}

static void print_rate(const char *what, double flops, double ms) {
  double tf = flops / (ms * 1e-3) / 1e12;
  if (peak_tflops > 0.0)
    printf("  %-44s %9.3f ms %8.1f TFLOP/s %6.1f %% of bf16 peak\n", what, ms, tf,
           100.0 * tf / peak_tflops);
  else
    printf("  %-44s %9.3f ms %8.1f TFLOP/s\n", what, ms, tf);
  fflush(stdout);
}

/* ---- GEMMs ------------------------------------------------------------------------ */

typedef struct {
  const char *name;
  int M, K, O;
} gemm_shape;

static const gemm_shape LLM[] = {
    {"llm c_attn      2048 x 4096 -> 12288", 2048, 4096, 12288},
    {"llm attn c_proj 2048 x 4096 -> 4096", 2048, 4096, 4096},
    {"llm w1 (= w2)   2048 x 4096 -> 11008", 2048, 4096, 11008},
    {"llm mlp c_proj  2048 x 11008 -> 4096", 2048, 11008, 4096},
};
static const gemm_shape HEAD = {"llm lm_head     2048 x 4096 -> 151936", 2048, 4096, 151936};
static const gemm_shape VIT[] = {
    {"vit in_proj     5120 x 1664 -> 4992", 5120, 1664, 4992},
    {"vit out_proj    5120 x 1664 -> 1664", 5120, 1664, 1664},
    {"vit c_fc        5120 x 1664 -> 8192", 5120, 1664, 8192},
    {"vit c_proj      5120 x 8192 -> 1664", 5120, 8192, 1664},
};

/* buffers sized for the largest shape */
static vlm_bf16 *b_in, *b_w, *b_dout;
static float *f_out, *f_din, *f_dw;

/* Times one GEMM op (0 forward, 1 din, 2 dW) of shape g; returns ms per call. */
static double time_gemm(const gemm_shape *g, int op, vlm_dtype t, int iters) {
  const void *in = b_in, *w = b_w, *dout = b_dout;
  if (t == VLM_DT_F32) in = f_din, w = f_dw, dout = f_out; /* fp32 operands for the fp32 run */
  cudaEvent_t e0, e1;
  RT(cudaEventCreate(&e0));
  RT(cudaEventCreate(&e1));
  float ms = 0.0f;
  for (int it = -2; it < iters; it++) {
    if (it == 0) RT(cudaEventRecord(e0, st));
    if (op == 0)
      cuda_gemm(&ctx, st, 0, 1, g->M, g->O, g->K, 1.0f, in, g->K, w, g->K, t, 0.0f,
                t == VLM_DT_F32 ? f_dw + (size_t)g->O * g->K : f_out, g->O);
    else if (op == 1)
      cuda_gemm(&ctx, st, 0, 0, g->M, g->K, g->O, 1.0f, dout, g->O, w, g->K, t, 1.0f, f_din,
                g->K);
    else
      cuda_gemm(&ctx, st, 1, 0, g->O, g->K, g->M, 1.0f, dout, g->O, in, g->K, t, 1.0f, f_dw,
                g->K);
  }
  RT(cudaEventRecord(e1, st));
  RT(cudaEventSynchronize(e1));
  RT(cudaEventElapsedTime(&ms, e0, e1));
  RT(cudaEventDestroy(e0));
  RT(cudaEventDestroy(e1));
  return ms / iters;
}

/* All three ops of a list of shapes; returns total FLOPs and ms through the pointers. */
static void bench_gemms(const char *title, const gemm_shape *gs, int n, double *flops_sum,
                        double *ms_sum) {
  static const char *ops[3] = {"fwd", "din", "dW "};
  printf("%s\n", title);
  for (int i = 0; i < n; i++)
    for (int op = 0; op < 3; op++) {
      const gemm_shape *g = &gs[i];
      double ms = time_gemm(g, op, VLM_DT_BF16, 10);
      double flops = 2.0 * g->M * (double)g->K * g->O;
      char label[96];
      snprintf(label, sizeof label, "%s %s", g->name, ops[op]);
      print_rate(label, flops, ms);
      *flops_sum += flops;
      *ms_sum += ms;
    }
}

static void gemm_section(void) {
  size_t max_in = 0, max_w = 0, max_out = 0;
  const gemm_shape *all[10];
  int na = 0;
  for (int i = 0; i < 4; i++) all[na++] = &LLM[i];
  for (int i = 0; i < 4; i++) all[na++] = &VIT[i];
  all[na++] = &HEAD;
  for (int i = 0; i < na; i++) {
    const gemm_shape *g = all[i];
    size_t in = (size_t)g->M * g->K, w = (size_t)g->O * g->K, out = (size_t)g->M * g->O;
    if (in > max_in) max_in = in;
    if (w > max_w) max_w = w;
    if (out > max_out) max_out = out;
  }
  float *tmp = d_alloc((max_w > max_out ? max_w : max_out) * sizeof(float));
  b_in = d_alloc(max_in * 2), b_w = d_alloc(max_w * 2), b_dout = d_alloc(max_out * 2);
  f_out = d_alloc(max_out * 4), f_din = d_alloc(max_in * 4);
  f_dw = d_alloc(2 * max_w * 4);
  fill_random(tmp, max_in);
  cuda_f32_to_bf16(&ctx, st, b_in, tmp, (long)max_in);
  fill_random(tmp, max_w);
  cuda_f32_to_bf16(&ctx, st, b_w, tmp, (long)max_w);
  fill_random(tmp, max_out);
  cuda_f32_to_bf16(&ctx, st, b_dout, tmp, (long)max_out);
  fill_random(f_out, max_out);
  fill_random(f_din, max_in);
  fill_random(f_dw, 2 * max_w);
  RT(cudaStreamSynchronize(st));
  RT(cudaFree(tmp));

  double fl = 0.0, ms = 0.0, fv = 0.0, mv = 0.0, fh = 0.0, mh = 0.0;
  bench_gemms("GEMM bf16 x bf16 -> fp32 (cuBLASLt, CUBLAS_COMPUTE_32F), LLM block:", LLM, 4, &fl,
              &ms);
  bench_gemms("GEMM bf16, LLM head:", &HEAD, 1, &fh, &mh);
  bench_gemms("GEMM bf16, ViT block:", VIT, 4, &fv, &mv);
  printf("GEMM summary (all ops of the block, FLOP-weighted):\n");
  print_rate("LLM block GEMMs", fl, ms);
  print_rate("ViT block GEMMs", fv, mv);
  print_rate("LLM head GEMMs", fh, mh);
  printf("GEMM fp32 for reference (cublasGemmEx, CUBLAS_COMPUTE_32F, no TF32):\n");
  const gemm_shape *g = &LLM[1];
  print_rate("llm attn c_proj fp32 fwd", 2.0 * g->M * (double)g->K * g->O,
             time_gemm(g, 0, VLM_DT_F32, 5));
  RT(cudaFree(b_in)), RT(cudaFree(b_w)), RT(cudaFree(b_dout));
  RT(cudaFree(f_out)), RT(cudaFree(f_din)), RT(cudaFree(f_dw));
}

/* ---- attention ------------------------------------------------------------------------ */

static void bench_attention(const char *label, int Tq, int Tk, int H, int D, int causal,
                            int cross) {
  attn_shape s;
  memset(&s, 0, sizeof s);
  s.Tq = Tq, s.Tk = Tk, s.H = H, s.D = D, s.causal = causal, s.scale = 1.0f / 8.0f;
  size_t nq, nkv;
  const float *q, *k, *v;
  if (!cross) { /* ViT per-head fused / LLM fused: the same sizes, the LLM strides */
    s.ldq = s.ldk = s.ldv = 3 * H * D;
    s.hsq = s.hsk = s.hsv = D;
    nq = (size_t)Tq * 3 * H * D, nkv = 0;
  } else {
    s.ldq = H * D, s.ldk = s.ldv = 2 * H * D;
    s.hsq = s.hsk = s.hsv = D;
    nq = (size_t)Tq * H * D, nkv = (size_t)Tk * 2 * H * D;
  }
  float *qb = d_alloc(nq * 4), *kvb = nkv ? d_alloc(nkv * 4) : NULL;
  float *gq = d_alloc(nq * 4), *gkv = nkv ? d_alloc(nkv * 4) : NULL;
  fill_random(qb, nq);
  if (nkv) fill_random(kvb, nkv);
  RT(cudaMemsetAsync(gq, 0, nq * 4, st));
  if (nkv) RT(cudaMemsetAsync(gkv, 0, nkv * 4, st));
  q = qb;
  k = nkv ? kvb : qb + (size_t)H * D;
  v = nkv ? kvb + (size_t)H * D : qb + 2 * (size_t)H * D;
  float *gk = nkv ? gkv : gq + (size_t)H * D;
  float *gv = nkv ? gkv + (size_t)H * D : gq + 2 * (size_t)H * D;
  const size_t no = (size_t)Tq * H * D;
  float *out = d_alloc(no * 4), *dout = d_alloc(no * 4), *lse = d_alloc((size_t)H * Tq * 4);
  float *scr = d_alloc(cuda_attention_scratch_floats(&s) * 4);
  fill_random(dout, no);
  double fwd_flops = 4.0 * Tq * (double)Tk * D * H * (causal ? 0.5 : 1.0);
  cudaEvent_t e0, e1, e2;
  RT(cudaEventCreate(&e0)), RT(cudaEventCreate(&e1)), RT(cudaEventCreate(&e2));
  const int iters = 3;
  cuda_attention_forward(&ctx, st, out, lse, q, k, v, &s, NULL); /* warm-up */
  cuda_attention_backward(&ctx, st, gq, gk, gv, dout, out, lse, q, k, v, &s, scr);
  RT(cudaEventRecord(e0, st));
  for (int i = 0; i < iters; i++) cuda_attention_forward(&ctx, st, out, lse, q, k, v, &s, NULL);
  RT(cudaEventRecord(e1, st));
  for (int i = 0; i < iters; i++)
    cuda_attention_backward(&ctx, st, gq, gk, gv, dout, out, lse, q, k, v, &s, scr);
  RT(cudaEventRecord(e2, st));
  RT(cudaEventSynchronize(e2));
  float ms_f = 0.0f, ms_b = 0.0f;
  RT(cudaEventElapsedTime(&ms_f, e0, e1));
  RT(cudaEventElapsedTime(&ms_b, e1, e2));
  char name[128];
  snprintf(name, sizeof name, "%s fwd", label);
  print_rate(name, fwd_flops, ms_f / iters);
  snprintf(name, sizeof name, "%s bwd", label);
  print_rate(name, 2.5 * fwd_flops, ms_b / iters);
  RT(cudaEventDestroy(e0)), RT(cudaEventDestroy(e1)), RT(cudaEventDestroy(e2));
  RT(cudaFree(qb)), RT(cudaFree(gq)), RT(cudaFree(out)), RT(cudaFree(dout)), RT(cudaFree(lse));
  RT(cudaFree(scr));
  if (nkv) RT(cudaFree(kvb)), RT(cudaFree(gkv));
}

int main(void) {
  const char *env = getenv("VLM_CUDA_DEVICE");
  int device = env ? atoi(env) : 0;
  if (vlm_cuda_ctx_create(&ctx, device, 0) != 0) return 2;
  st = ctx.compute;
  struct cudaDeviceProp prop;
  RT(cudaGetDeviceProperties(&prop, device));
  int clock_khz = 0;
  RT(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, device));
  peak_tflops = lookup_peak(prop.name);
  const double per_sm = prop.major >= 9 ? 4096.0 : 2048.0;
  const double formula = prop.multiProcessorCount * (clock_khz * 1e3) * per_sm / 1e12;
  printf("bench_gemm_attention: %s, sm_%d%d, %d SMs, max clock %d MHz, %.1f GiB\n", prop.name,
         prop.major, prop.minor, prop.multiProcessorCount, clock_khz / 1000,
         (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
  if (peak_tflops > 0.0)
    printf("bf16 dense peak (datasheet table): %.1f TFLOP/s; SMs x max clock x %.0f: %.1f\n",
           peak_tflops, per_sm, formula);
  else
    printf("bf16 dense peak: device not in the table (H100/H200/A100); SMs x max clock x %.0f "
           "= %.1f TFLOP/s for orientation, no percentages printed\n",
           per_sm, formula);
  gemm_section();
  printf("attention (fp32 CUDA-core kernel, FlashAttention FLOP counts):\n");
  bench_attention("vit window T=1024 H=16 D=104", 1024, 1024, 16, 104, 0, 0);
  bench_attention("llm causal T=2048 H=32 D=128", 2048, 2048, 32, 128, 1, 0);
  bench_attention("resampler cross Tq=256 Tk=1024 H=32 D=128", 256, 1024, 32, 128, 0, 1);
  vlm_cuda_ctx_destroy(&ctx);
  printf("bench_gemm_attention: done\n");
  return 0;
}
