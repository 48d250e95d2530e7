/* kernels/cuda/device.h: the GPU choice of an MPI rank (kernels/cuda/device.c), shared by
 * the dispatch table (backend_cuda.c) and the NCCL layer (nccl_comm.h includes this). */
#ifndef VLM_KERNELS_CUDA_DEVICE_H
#define VLM_KERNELS_CUDA_DEVICE_H

#include <cuda_runtime_api.h>
#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Picks this rank's GPU: local rank (MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) of
 * world) modulo the number of devices visible to this process, so both "all GPUs
 * visible to every rank" and a per-task CUDA_VISIBLE_DEVICES (srun --gpus-per-task=1)
 * work. Makes it current (cudaSetDevice) and checks, across the node, that no two
 * ranks landed on the same physical GPU (PCI bus id), which NCCL refuses. Collective
 * over world. local_rank / local_size may be NULL. Returns 0, or -1 with a VLM_FAIL
 * message on every rank when any rank cannot use its GPU. */
int vlm_cuda_select_device(MPI_Comm world, int *device, int *local_rank, int *local_size);

#ifdef __cplusplus
}
#endif

#endif
