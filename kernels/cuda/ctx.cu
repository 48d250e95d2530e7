/* kernels/cuda/ctx.cu: the CUDA context of the kernels (vlm_cuda_ctx): device choice
 * already made by the caller, cuBLAS and cuBLASLt handles, the compute and comm
 * streams, the GEMM workspace, the reduction buffer and the device constants; and the
 * abort path of kernels that hit a CUDA error.
 *
 * Creation is the one fallible step of the backend and reports through VLM_FAIL.
 * Nothing here picks a GPU from MPI ranks: kernels/cuda/nccl_comm.h does that. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"

extern "C" {
#include "common/vlm.h"
}


extern "C" void vlm_cuda_die(const char *file, int line, const char *what, const char *msg) {
  fprintf(stderr, "vlmtrain: CUDA error at %s:%d: %s: %s\n", file, line, what, msg);
  fflush(stderr);
  abort();
}

/* Reports a failed runtime call from ctx creation (returns -1 from the caller). */
#define CTX_CUDA(call)                                                                 \
  do {                                                                                 \
    cudaError_t e_ = (call);                                                           \
    if (e_ != cudaSuccess) {                                                           \
      vlm_error_at(__FILE__, __LINE__, __func__, "%s failed: %s", #call,               \
                   cudaGetErrorString(e_));                                            \
      goto fail;                                                                       \
    }                                                                                  \
  } while (0)
#define CTX_BLAS(call)                                                                 \
  do {                                                                                 \
    cublasStatus_t s_ = (call);                                                        \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                 \
      vlm_error_at(__FILE__, __LINE__, __func__, "%s failed: %s", #call,               \
                   cublasGetStatusString(s_));                                         \
      goto fail;                                                                       \
    }                                                                                  \
  } while (0)

extern "C" int vlm_cuda_ctx_create(vlm_cuda_ctx *ctx, int device, size_t workspace_bytes) {
  memset(ctx, 0, sizeof *ctx);
  ctx->device = device;
  int ndev = 0;
  const float consts[2] = {0.0f, 1.0f};
  cudaError_t e = cudaGetDeviceCount(&ndev);
  if (e != cudaSuccess || ndev == 0)
    VLM_FAIL("no CUDA device is usable (%s); check the driver, nvidia-smi and "
             "CUDA_VISIBLE_DEVICES, or run with --device cpu",
             e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
  if (device < 0 || device >= ndev)
    VLM_FAIL("CUDA device %d requested but only %d are visible (CUDA_VISIBLE_DEVICES)", device,
             ndev);
  CTX_CUDA(cudaSetDevice(device));
  CTX_CUDA(cudaDeviceGetAttribute(&ctx->sm_count, cudaDevAttrMultiProcessorCount, device));
  CTX_CUDA(cudaStreamCreateWithFlags(&ctx->compute, cudaStreamNonBlocking));
  CTX_CUDA(cudaStreamCreateWithFlags(&ctx->comm, cudaStreamNonBlocking));
  ctx->workspace_bytes = workspace_bytes ? workspace_bytes : VLM_CUDA_WORKSPACE_BYTES;
  CTX_CUDA(cudaMalloc(&ctx->workspace, ctx->workspace_bytes));
  ctx->reduce_bytes = VLM_CUDA_REDUCE_BYTES;
  CTX_CUDA(cudaMalloc(&ctx->reduce, ctx->reduce_bytes));
  CTX_CUDA(cudaMalloc((void **)&ctx->consts, sizeof consts));
  CTX_CUDA(cudaMemcpy(ctx->consts, consts, sizeof consts, cudaMemcpyHostToDevice));
  CTX_BLAS(cublasCreate(&ctx->blas));
  CTX_BLAS(cublasSetWorkspace(ctx->blas, ctx->workspace, ctx->workspace_bytes));
  /* fp32 GEMMs stay fp32: no TF32 down-conversion (parity with the CPU path) */
  CTX_BLAS(cublasSetMathMode(ctx->blas, CUBLAS_DEFAULT_MATH));
  CTX_BLAS(cublasSetStream(ctx->blas, ctx->compute));
  CTX_BLAS(cublasLtCreate(&ctx->lt));
  return 0;
fail:
  vlm_cuda_ctx_destroy(ctx);
  return -1;
}

extern "C" void vlm_cuda_ctx_destroy(vlm_cuda_ctx *ctx) {
  if (!ctx) return;
  if (ctx->compute) cudaStreamSynchronize(ctx->compute);
  if (ctx->comm) cudaStreamSynchronize(ctx->comm);
  if (ctx->lt) cublasLtDestroy(ctx->lt);
  if (ctx->blas) cublasDestroy(ctx->blas);
  gemm_cache_free(ctx->lt_cache);
  if (ctx->consts) cudaFree(ctx->consts);
  if (ctx->reduce) cudaFree(ctx->reduce);
  if (ctx->workspace) cudaFree(ctx->workspace);
  if (ctx->comm) cudaStreamDestroy(ctx->comm);
  if (ctx->compute) cudaStreamDestroy(ctx->compute);
  memset(ctx, 0, sizeof *ctx);
}
