/* kernels/cuda/nccl_comm.c: the NCCL communicators and collectives of the CUDA backend
 * (interface and ordering rules: nccl_comm.h; the GPU choice per rank is in device.c).
 *
 * Plain C: MPI shares the NCCL unique ids; NCCL runs the collectives on the comm
 * stream; CUDA events order them against the compute stream. Every failure reports
 * through VLM_FAIL with NCCL's own message and what to check. */
#include "kernels/cuda/nccl_comm.h"

#include <stdio.h>
#include <string.h>

#include "common/vlm.h"

#define CUDA_TRY(call)                                                                   \
  do {                                                                                   \
    cudaError_t e_ = (call);                                                             \
    if (e_ != cudaSuccess) VLM_FAIL("%s failed: %s", #call, cudaGetErrorString(e_));     \
  } while (0)

#define NCCL_TRY(call)                                                                   \
  do {                                                                                   \
    ncclResult_t r_ = (call);                                                            \
    if (r_ != ncclSuccess)                                                               \
      VLM_FAIL("%s failed: %s (%s); NCCL_DEBUG=INFO tells more", #call,                  \
               ncclGetErrorString(r_), ncclGetLastError(NULL));                          \
  } while (0)

#define MPI_TRY(call)                                                                    \
  do {                                                                                   \
    if ((call) != MPI_SUCCESS) VLM_FAIL("%s failed", #call);                             \
  } while (0)

static const char *group_name(vlm_nccl_group g) {
  return g == VLM_NCCL_SHARD ? "shard" : g == VLM_NCCL_REPLICA ? "replica" : "world";
}

/* One NCCL communicator for an MPI communicator: id from its rank 0, MPI_Bcast. */
static int comm_create(ncclComm_t *out, int *rank, int *size, MPI_Comm mc) {
  ncclUniqueId id;
  memset(&id, 0, sizeof id);
  MPI_TRY(MPI_Comm_rank(mc, rank));
  MPI_TRY(MPI_Comm_size(mc, size));
  ncclResult_t r = ncclSuccess;
  if (*rank == 0) r = ncclGetUniqueId(&id);
  /* broadcast the outcome too, so a failed id is reported everywhere, not a hang */
  int fail = r != ncclSuccess;
  MPI_TRY(MPI_Bcast(&fail, 1, MPI_INT, 0, mc));
  if (fail) VLM_FAIL("ncclGetUniqueId failed on rank 0 of the communicator (%s)",
                     *rank == 0 ? ncclGetErrorString(r) : "see rank 0");
  MPI_TRY(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, mc));
  NCCL_TRY(ncclCommInitRank(out, *size, id, *rank));
  return 0;
}

int vlm_nccl_init(vlm_nccl *n, MPI_Comm shard, MPI_Comm replica, MPI_Comm world, int device,
                  cudaStream_t compute, cudaStream_t comm) {
  memset(n, 0, sizeof *n);
  n->device = device;
  n->compute = compute;
  n->comm_stream = comm;
  CUDA_TRY(cudaSetDevice(device));
  CUDA_TRY(cudaEventCreateWithFlags(&n->inputs_ready, cudaEventDisableTiming));
  const MPI_Comm mcs[VLM_NCCL_NGROUPS] = {shard, replica, world};
  for (int g = 0; g < VLM_NCCL_NGROUPS; g++) {
    if (mcs[g] == MPI_COMM_NULL) continue;
    if (comm_create(&n->comm[g], &n->rank[g], &n->size[g], mcs[g]) != 0) {
      vlm_trace_at(__FILE__, __LINE__, __func__, group_name((vlm_nccl_group)g));
      vlm_nccl_free(n);
      return -1;
    }
  }
  return 0;
}

void vlm_nccl_free(vlm_nccl *n) {
  if (!n) return;
  if (n->comm_stream) cudaStreamSynchronize(n->comm_stream);
  for (int g = 0; g < VLM_NCCL_NGROUPS; g++)
    if (n->comm[g]) {
      ncclCommFinalize(n->comm[g]);
      ncclCommDestroy(n->comm[g]);
    }
  if (n->inputs_ready) cudaEventDestroy(n->inputs_ready);
  memset(n, 0, sizeof *n);
}

int vlm_nccl_event_create(cudaEvent_t *ev) {
  CUDA_TRY(cudaEventCreateWithFlags(ev, cudaEventDisableTiming));
  return 0;
}

/* The comm stream waits for the compute work enqueued so far. */
static int order_after_compute(vlm_nccl *n, vlm_nccl_group g) {
  if ((int)g < 0 || (int)g >= VLM_NCCL_NGROUPS || !n->comm[g])
    VLM_FAIL("NCCL group %d (%s) was not created", (int)g, group_name(g));
  CUDA_TRY(cudaEventRecord(n->inputs_ready, n->compute));
  CUDA_TRY(cudaStreamWaitEvent(n->comm_stream, n->inputs_ready, 0));
  return 0;
}

static int record_done(vlm_nccl *n, cudaEvent_t done) {
  if (done) CUDA_TRY(cudaEventRecord(done, n->comm_stream));
  return 0;
}

int vlm_nccl_all_gather(vlm_nccl *n, vlm_nccl_group g, const void *send, void *recv,
                        size_t count, ncclDataType_t type, cudaEvent_t done) {
  VLM_CHECK(order_after_compute(n, g));
  NCCL_TRY(ncclAllGather(send, recv, count, type, n->comm[g], n->comm_stream));
  VLM_CHECK(record_done(n, done));
  return 0;
}

int vlm_nccl_reduce_scatter(vlm_nccl *n, vlm_nccl_group g, const void *send, void *recv,
                            size_t recvcount, ncclDataType_t type, cudaEvent_t done) {
  VLM_CHECK(order_after_compute(n, g));
  NCCL_TRY(ncclReduceScatter(send, recv, recvcount, type, ncclSum, n->comm[g], n->comm_stream));
  VLM_CHECK(record_done(n, done));
  return 0;
}

int vlm_nccl_all_reduce(vlm_nccl *n, vlm_nccl_group g, const void *send, void *recv, size_t count,
                        ncclDataType_t type, cudaEvent_t done) {
  VLM_CHECK(order_after_compute(n, g));
  NCCL_TRY(ncclAllReduce(send, recv, count, type, ncclSum, n->comm[g], n->comm_stream));
  VLM_CHECK(record_done(n, done));
  return 0;
}

int vlm_nccl_wait(vlm_nccl *n, cudaEvent_t done) {
  CUDA_TRY(cudaStreamWaitEvent(n->compute, done, 0));
  return 0;
}

int vlm_nccl_check(vlm_nccl *n) {
  for (int g = 0; g < VLM_NCCL_NGROUPS; g++) {
    if (!n->comm[g]) continue;
    ncclResult_t async = ncclSuccess;
    NCCL_TRY(ncclCommGetAsyncError(n->comm[g], &async));
    if (async != ncclSuccess)
      VLM_FAIL("NCCL %s communicator failed asynchronously: %s (%s)", group_name((vlm_nccl_group)g),
               ncclGetErrorString(async), ncclGetLastError(n->comm[g]));
  }
  return 0;
}
