/* kernels/cuda/device.c: the GPU choice per MPI rank (vlm_cuda_select_device, declared
 * in device.h): local rank modulo the visible devices, and a node-wide check that no two
 * ranks share a physical GPU. Plain C over MPI and the CUDA runtime only (no NCCL), so
 * the dispatch table (backend_cuda.c) and builds without NCCL can use it. */
#include "kernels/cuda/device.h"

#include <stdio.h>
#include <string.h>

#include "common/vlm.h"

#define MPI_TRY(call)                                                                    \
  do {                                                                                   \
    if ((call) != MPI_SUCCESS) VLM_FAIL("%s failed", #call);                             \
  } while (0)

#define BUSID_LEN 32
/* Ranks per node up to which the one-GPU-per-rank check runs. */
#define MAX_NODE_RANKS 256

int vlm_cuda_select_device(MPI_Comm world, int *device, int *local_rank, int *local_size) {
  int wrank = 0, lrank = 0, lsize = 1, ndev = 0, dev = -1;
  MPI_Comm node = MPI_COMM_NULL;
  MPI_TRY(MPI_Comm_rank(world, &wrank));
  MPI_TRY(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, wrank, MPI_INFO_NULL, &node));
  MPI_Comm_rank(node, &lrank);
  MPI_Comm_size(node, &lsize);
  /* local steps first; every rank learns whether all succeeded before anyone fails */
  char bus[BUSID_LEN];
  memset(bus, 0, sizeof bus);
  char why[160] = "";
  cudaError_t e = cudaGetDeviceCount(&ndev);
  if (e != cudaSuccess || ndev <= 0) {
    snprintf(why, sizeof why, "sees no CUDA device (%s)",
             e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
  } else {
    dev = lrank % ndev;
    e = cudaSetDevice(dev);
    if (e == cudaSuccess) e = cudaDeviceGetPCIBusId(bus, BUSID_LEN, dev);
    if (e != cudaSuccess)
      snprintf(why, sizeof why, "cannot use CUDA device %d of %d visible (%s)", dev, ndev,
               cudaGetErrorString(e));
  }
  int ok = why[0] == 0, all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, world);
  if (!all_ok) {
    MPI_Comm_free(&node);
    if (!ok)
      VLM_FAIL("world rank %d %s; check nvidia-smi, the driver and CUDA_VISIBLE_DEVICES, or "
               "run with --device cpu",
               wrank, why);
    VLM_FAIL("another rank cannot use its GPU (its error says why)");
  }
  /* two ranks of this node on one physical GPU: NCCL would refuse with a vague error
   * (every rank of a node has the same lsize, so all take the same branch) */
  int clash = -1;
  if (lsize <= MAX_NODE_RANKS) {
    char all[MAX_NODE_RANKS][BUSID_LEN]; /* 8 KiB */
    MPI_Allgather(bus, BUSID_LEN, MPI_CHAR, all, BUSID_LEN, MPI_CHAR, node);
    for (int i = 0; i < lsize && clash < 0; i++)
      if (i != lrank && strncmp(all[i], bus, BUSID_LEN) == 0) clash = i;
  }
  MPI_Comm_free(&node);
  int any_clash = clash >= 0, world_clash = 0;
  MPI_Allreduce(&any_clash, &world_clash, 1, MPI_INT, MPI_MAX, world);
  if (clash >= 0)
    VLM_FAIL("local ranks %d and %d of this node would share GPU %s (%d visible): NCCL needs "
             "one GPU per rank; start at most %d ranks per node, or give each task its own "
             "GPU (srun --gpus-per-task=1)",
             lrank, clash, bus, ndev, ndev);
  if (world_clash) VLM_FAIL("two ranks of another node share a GPU (its error says which)");
  *device = dev;
  if (local_rank) *local_rank = lrank;
  if (local_size) *local_size = lsize;
  return 0;
}

