/* tests/gpu/check_nccl.c: the NCCL layer of the CUDA backend (kernels/cuda/nccl_comm.h)
 * on as many ranks as there are GPUs (mpirun -np G; tests/gpu/run.sh starts it).
 *
 * The ranks form a grid like ZeRO-3's: S = 2 shard ranks per replica when the world
 * size is even, else S = world; R = world / S replicas. Checked, exactly (the values
 * are small integers or powers of two, so every sum is exact in fp32 and bf16):
 *   GPU choice (one per rank), communicator creation (ids shared with MPI_Bcast);
 *   all-gather fp32 and bf16 on the shard group; reduce-scatter (sum) fp32 and bf16 on
 *   the shard group; all-reduce (sum) on the replica group and on the world;
 *   ordering: each collective's input is produced by a long chain of kernels on the
 *   compute stream just before the collective is enqueued on the comm stream, and its
 *   output is consumed by a kernel on the compute stream after vlm_nccl_wait; a missing
 *   event would show as wrong values.
 * Rank 0 prints one line per check and "N passed, N failed". With one GPU every group
 * has one rank: creation, ordering and the single-rank collectives are still checked.
 * --quick: about a thousand times fewer elements and a short kernel chain, for the CPU
 * emulation (tests/gpu/emu/build.sh), where every kernel runs on one core; the values
 * and their checks are the same. */
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/kernels_cuda.h"
#include "kernels/cuda/nccl_comm.h"

static int wrank, wsize, n_pass, n_fail;
static int g_quick; /* --quick: small sizes (see above) */
static vlm_cuda_ctx ctx;
static vlm_nccl nc;
static cudaEvent_t done;

static void rt(cudaError_t e, const char *what, int line) {
  if (e != cudaSuccess) {
    fprintf(stderr, "check_nccl: rank %d line %d: %s: %s\n", wrank, line, what,
            cudaGetErrorString(e));
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
}
#define RT(call) rt((call), #call, __LINE__)

static void must(int rc, const char *what) {
  if (rc != 0) {
    fprintf(stderr, "check_nccl: rank %d: %s failed\n", wrank, what);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
}

/* Every rank reports its verdict; rank 0 prints one line. */
static void verdict(int ok, const char *name) {
  int bad = !ok, nbad = 0;
  MPI_Reduce(&bad, &nbad, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
  if (wrank == 0) {
    printf("%s %s%s\n", nbad ? "FAIL" : "ok  ", name, nbad ? " (on some ranks)" : "");
    fflush(stdout);
    if (nbad)
      n_fail++;
    else
      n_pass++;
  }
}

static void *d_alloc(size_t bytes) {
  void *p = NULL;
  RT(cudaMalloc(&p, bytes ? bytes : 1));
  return p;
}

/* x (n floats) becomes 2x after a chain of 2 * half + 1 scalings on the compute stream:
 * long enough that a collective not ordered after it would read the old values. */
static void busy_double(float *x, long n) {
  const int half = g_quick ? 2 : 50;
  for (int i = 0; i < half; i++) {
    cuda_scale_inplace(&ctx, ctx.compute, x, n, 2.0f);
    cuda_scale_inplace(&ctx, ctx.compute, x, n, 0.5f);
  }
  cuda_scale_inplace(&ctx, ctx.compute, x, n, 2.0f);
}

static uint16_t bf16_of_small_int(int v) { /* exact for |v| < 256 */
  float f = (float)v;
  uint32_t u;
  memcpy(&u, &f, 4);
  return (uint16_t)(u >> 16);
}

static void download(void *h, const void *d, size_t bytes) {
  RT(cudaMemcpyAsync(h, d, bytes, cudaMemcpyDeviceToHost, ctx.compute));
  RT(cudaStreamSynchronize(ctx.compute));
}

static void upload(void *d, const void *h, size_t bytes) {
  RT(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, ctx.compute));
}

/* value of element i of rank r's data */
static int val(int r, long i) { return (int)((r * 7 + i) % 61) - 30; }

static void test_all_gather(int S, int s) {
  const long n = g_quick ? 1009 : 1000003;
  float *h = malloc((size_t)n * S * sizeof(float));
  for (long i = 0; i < n; i++) h[i] = (float)val(s, i);
  float *send = d_alloc((size_t)n * 4), *recv = d_alloc((size_t)n * S * 4);
  upload(send, h, (size_t)n * 4);
  busy_double(send, n);
  must(vlm_nccl_all_gather(&nc, VLM_NCCL_SHARD, send, recv, (size_t)n, ncclFloat32, done),
       "all_gather");
  must(vlm_nccl_wait(&nc, done), "wait");
  cuda_scale_inplace(&ctx, ctx.compute, recv, n * S, 0.5f); /* consumer on compute */
  download(h, recv, (size_t)n * S * 4);
  long bad = 0;
  for (int r = 0; r < S; r++)
    for (long i = 0; i < n; i++) bad += h[(size_t)r * n + i] != (float)val(r, i);
  char name[96];
  snprintf(name, sizeof name, "all_gather fp32 on the shard group (S=%d), ordered", S);
  verdict(bad == 0, name);

  /* bf16 */
  uint16_t *hb = malloc((size_t)n * S * 2);
  for (long i = 0; i < n; i++) hb[i] = bf16_of_small_int(val(s, i));
  upload(send, hb, (size_t)n * 2);
  must(vlm_nccl_all_gather(&nc, VLM_NCCL_SHARD, send, recv, (size_t)n, ncclBfloat16, done),
       "all_gather bf16");
  must(vlm_nccl_wait(&nc, done), "wait");
  download(hb, recv, (size_t)n * S * 2);
  bad = 0;
  for (int r = 0; r < S; r++)
    for (long i = 0; i < n; i++) bad += hb[(size_t)r * n + i] != bf16_of_small_int(val(r, i));
  snprintf(name, sizeof name, "all_gather bf16 on the shard group (S=%d)", S);
  verdict(bad == 0, name);
  free(h), free(hb);
  RT(cudaFree(send)), RT(cudaFree(recv));
}

static void test_reduce_scatter(int S, int s) {
  const long n = g_quick ? 331 : 333331; /* per rank */
  float *h = malloc((size_t)n * S * sizeof(float));
  for (long i = 0; i < n * S; i++) h[i] = (float)val(s, i);
  float *send = d_alloc((size_t)n * S * 4), *recv = d_alloc((size_t)n * 4);
  upload(send, h, (size_t)n * S * 4);
  busy_double(send, n * S);
  must(vlm_nccl_reduce_scatter(&nc, VLM_NCCL_SHARD, send, recv, (size_t)n, ncclFloat32, done),
       "reduce_scatter");
  must(vlm_nccl_wait(&nc, done), "wait");
  download(h, recv, (size_t)n * 4);
  long bad = 0;
  for (long i = 0; i < n; i++) {
    int want = 0;
    for (int r = 0; r < S; r++) want += 2 * val(r, (long)s * n + i);
    bad += h[i] != (float)want;
  }
  char name[96];
  snprintf(name, sizeof name, "reduce_scatter fp32 (sum) on the shard group (S=%d), ordered", S);
  verdict(bad == 0, name);

  uint16_t *hb = malloc((size_t)n * S * 2);
  for (long i = 0; i < n * S; i++) hb[i] = bf16_of_small_int(val(s, i) / 4);
  upload(send, hb, (size_t)n * S * 2);
  must(vlm_nccl_reduce_scatter(&nc, VLM_NCCL_SHARD, send, recv, (size_t)n, ncclBfloat16, done),
       "reduce_scatter bf16");
  must(vlm_nccl_wait(&nc, done), "wait");
  download(hb, recv, (size_t)n * 2);
  bad = 0;
  for (long i = 0; i < n; i++) {
    int want = 0;
    for (int r = 0; r < S; r++) want += val(r, (long)s * n + i) / 4;
    bad += hb[i] != bf16_of_small_int(want);
  }
  snprintf(name, sizeof name, "reduce_scatter bf16 (sum) on the shard group (S=%d)", S);
  verdict(bad == 0, name);
  free(h), free(hb);
  RT(cudaFree(send)), RT(cudaFree(recv));
}

static void test_all_reduce(vlm_nccl_group g, const char *gname, int gsize, int grank) {
  const long n = g_quick ? 503 : 500009;
  float *h = malloc((size_t)n * sizeof(float));
  for (long i = 0; i < n; i++) h[i] = (float)val(grank, i);
  float *buf = d_alloc((size_t)n * 4);
  upload(buf, h, (size_t)n * 4);
  busy_double(buf, n);
  must(vlm_nccl_all_reduce(&nc, g, buf, buf, (size_t)n, ncclFloat32, done), "all_reduce");
  must(vlm_nccl_wait(&nc, done), "wait");
  download(h, buf, (size_t)n * 4);
  long bad = 0;
  for (long i = 0; i < n; i++) {
    int want = 0;
    for (int r = 0; r < gsize; r++) want += 2 * val(r, i);
    bad += h[i] != (float)want;
  }
  char name[96];
  snprintf(name, sizeof name, "all_reduce fp32 (sum, in place) on the %s group (%d ranks)",
           gname, gsize);
  verdict(bad == 0, name);
  free(h);
  RT(cudaFree(buf));
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &wrank);
  MPI_Comm_size(MPI_COMM_WORLD, &wsize);
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--quick") == 0) {
      g_quick = 1;
    } else {
      if (wrank == 0) fprintf(stderr, "usage: check_nccl [--quick]\n");
      MPI_Finalize();
      return 2;
    }
  }
  int device = -1, lrank = 0, lsize = 1;
  must(vlm_cuda_select_device(MPI_COMM_WORLD, &device, &lrank, &lsize), "select device");
  must(vlm_cuda_ctx_create(&ctx, device, 0), "ctx create");
  const int S = wsize % 2 == 0 ? 2 : wsize, R = wsize / S;
  const int r = wrank / S, s = wrank % S;
  MPI_Comm shard, replica;
  MPI_Comm_split(MPI_COMM_WORLD, r, s, &shard);
  MPI_Comm_split(MPI_COMM_WORLD, s, r, &replica);
  if (wrank == 0)
    printf("check_nccl: %d ranks (R=%d x S=%d), NCCL %d.%d.%d\n", wsize, R, S, NCCL_MAJOR,
           NCCL_MINOR, NCCL_PATCH);
  verdict(1, "one GPU per rank (vlm_cuda_select_device)");
  must(vlm_nccl_init(&nc, shard, replica, MPI_COMM_WORLD, device, ctx.compute, ctx.comm),
       "vlm_nccl_init");
  verdict(nc.size[VLM_NCCL_SHARD] == S && nc.size[VLM_NCCL_REPLICA] == R &&
              nc.size[VLM_NCCL_WORLD] == wsize && nc.rank[VLM_NCCL_SHARD] == s,
          "NCCL communicators for shard, replica and world (ids via MPI_Bcast)");
  must(vlm_nccl_event_create(&done), "event");

  test_all_gather(S, s);
  test_reduce_scatter(S, s);
  test_all_reduce(VLM_NCCL_REPLICA, "replica", R, r);
  test_all_reduce(VLM_NCCL_WORLD, "world", wsize, wrank);
  verdict(vlm_nccl_check(&nc) == 0, "no asynchronous NCCL error");

  RT(cudaEventDestroy(done));
  vlm_nccl_free(&nc);
  vlm_cuda_ctx_destroy(&ctx);
  MPI_Comm_free(&shard);
  MPI_Comm_free(&replica);
  if (wrank == 0) printf("%d passed, %d failed\n", n_pass, n_fail);
  int rc = n_fail ? 1 : 0;
  MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Finalize();
  return rc;
}
