/* tests/gpu/emu/include/nccl.h: stand-in for NCCL's header in the CPU emulation builds
 * (tests/gpu/emu/build.sh, build_vlmtrain.sh): the part of the NCCL API that
 * kernels/cuda/nccl_comm.c uses, implemented over MPI in tests/gpu/emu/emu_nccl.c.
 *
 * How it emulates: a unique id names the MPI rank (in MPI_COMM_WORLD) that made it and a
 * serial number; ncclCommInitRank has every member send its NCCL rank to that maker,
 * which answers with the world ranks of all members in NCCL rank order; the members then
 * build a matching MPI communicator with MPI_Comm_create_group (collective over the
 * members only, as ncclCommInitRank is). So the maker of an id must also be a member.
 * Collectives are blocking MPI collectives on that communicator: emulated streams run
 * every operation when it is enqueued, so the stream argument is only checked, and by
 * the time a collective is enqueued every input it reads has been written. Buffers must
 * be emulated device memory (checked). bf16 sums are done in fp32 (each bf16 value
 * widened exactly, the MPI sum in fp32, the result rounded to bf16, nearest even); a real
 * NCCL may round after each step of its reduction instead, so bf16 sums agree only when
 * every partial sum is exact (small integers, as in check_nccl).
 * Not emulated: concurrency, timing, asynchronous errors (ncclCommGetAsyncError always
 * reports success), group calls, other reductions and types than those below. */
#ifndef VLM_EMU_NCCL_H
#define VLM_EMU_NCCL_H

#include <stddef.h>

#include "emu_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NCCL_MAJOR 0 /* an emulation: check_nccl prints this version */
#define NCCL_MINOR 0
#define NCCL_PATCH 0
#define NCCL_UNIQUE_ID_BYTES 128

typedef struct {
  char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

typedef struct emu_nccl_comm *ncclComm_t;

typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5
} ncclResult_t;

typedef enum { ncclFloat32 = 7, ncclBfloat16 = 9 } ncclDataType_t;
#define ncclFloat ncclFloat32
typedef enum { ncclSum = 0 } ncclRedOp_t;

ncclResult_t ncclGetUniqueId(ncclUniqueId *id);
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank);
ncclResult_t ncclCommFinalize(ncclComm_t comm);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async_error);
const char *ncclGetErrorString(ncclResult_t r);
const char *ncclGetLastError(ncclComm_t comm);

ncclResult_t ncclAllGather(const void *send, void *recv, size_t sendcount, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t recvcount,
                               ncclDataType_t type, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t stream);
ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
