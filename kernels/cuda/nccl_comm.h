/* kernels/cuda/nccl_comm.h: NCCL collectives for ZeRO-3 on the CUDA backend (and, through
 * kernels/cuda/device.h, the GPU choice per MPI rank).
 *
 * The grid is the one of modules/zero.h (R replicas x S shard ranks). For each of the
 * MPI communicators it is given (shard, replica, world) vlm_nccl_init creates the
 * matching NCCL communicator: rank 0 of the MPI communicator makes the unique id and
 * MPI_Bcast shares it; every rank then joins with ncclCommInitRank. All ranks create
 * them in the same order (shard, replica, world), so no init waits on another.
 *
 * Streams and ordering: every collective runs on the comm stream. Before it, an event
 * recorded on the compute stream makes the comm stream wait for all compute work
 * enqueued so far (the collective's inputs, and the last readers of its output
 * buffer); after it, the caller's `done` event is recorded on the comm stream, and
 * vlm_nccl_wait(done) makes the compute stream wait before it reads the result. To
 * overlap, enqueue the prefetch gather of module k+1 BEFORE module k's kernels, and the
 * reduce-scatter of module k's gradients right after its backward kernels: each then
 * runs while the next module computes.
 *
 * Not here: deciding what to gather (modules/zero.c), the MPI path for CPU runs, and
 * per-collective byte accounting (zero.c counts bytes as it does for MPI). */
#ifndef VLM_KERNELS_CUDA_NCCL_COMM_H
#define VLM_KERNELS_CUDA_NCCL_COMM_H

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>
#include <stddef.h>

#include "kernels/cuda/device.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { VLM_NCCL_SHARD = 0, VLM_NCCL_REPLICA = 1, VLM_NCCL_WORLD = 2 } vlm_nccl_group;
#define VLM_NCCL_NGROUPS 3

typedef struct {
  ncclComm_t comm[VLM_NCCL_NGROUPS]; /* by vlm_nccl_group */
  int rank[VLM_NCCL_NGROUPS], size[VLM_NCCL_NGROUPS];
  int device;
  cudaStream_t compute, comm_stream; /* borrowed, e.g. from vlm_cuda_ctx */
  cudaEvent_t inputs_ready;          /* recorded on compute before each collective */
} vlm_nccl;

/* vlm_cuda_select_device (this rank's GPU): kernels/cuda/device.h, included above. */

/* Creates the NCCL communicators matching shard, replica and world (any may be
 * MPI_COMM_NULL: that group is then unavailable). compute and comm are the streams
 * collectives order against and run on. Collective over world. */
int vlm_nccl_init(vlm_nccl *n, MPI_Comm shard, MPI_Comm replica, MPI_Comm world, int device,
                  cudaStream_t compute, cudaStream_t comm);
/* Finalises the communicators (after the comm stream drained); a zeroed n is a no-op. */
void vlm_nccl_free(vlm_nccl *n);

/* An event for `done` (timing disabled); destroy with cudaEventDestroy. */
int vlm_nccl_event_create(cudaEvent_t *ev);

/* recv[size * count] = concatenation of every rank's send[count] (rank order). */
int vlm_nccl_all_gather(vlm_nccl *n, vlm_nccl_group g, const void *send, void *recv,
                        size_t count, ncclDataType_t type, cudaEvent_t done);
/* recv[recvcount] = sum over ranks of send[rank * recvcount ...] (send holds
 * size * recvcount elements). */
int vlm_nccl_reduce_scatter(vlm_nccl *n, vlm_nccl_group g, const void *send, void *recv,
                            size_t recvcount, ncclDataType_t type, cudaEvent_t done);
/* recv[count] = sum over ranks of send[count] (send may equal recv). */
int vlm_nccl_all_reduce(vlm_nccl *n, vlm_nccl_group g, const void *send, void *recv, size_t count,
                        ncclDataType_t type, cudaEvent_t done);
/* The compute stream waits for a collective's done event (no host blocking). */
int vlm_nccl_wait(vlm_nccl *n, cudaEvent_t done);
/* Reports an asynchronous NCCL error on any communicator (e.g. a peer died). */
int vlm_nccl_check(vlm_nccl *n);

#ifdef __cplusplus
}
#endif

#endif
