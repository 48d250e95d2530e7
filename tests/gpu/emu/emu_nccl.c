/* tests/gpu/emu/emu_nccl.c: the NCCL emulation of the CPU emulation builds, over MPI
 * (the API subset and what is and is not emulated: include/nccl.h). Linked only into
 * programs that use MPI (check_nccl, the emulated vlmtrain).
 *
 * Communicator creation talks point to point on MPI_COMM_WORLD with tags from
 * EMU_TAG_BASE up (one per unique id, by its serial number), then builds the matching
 * MPI communicator with MPI_Comm_create_group. Every other call is one blocking MPI
 * collective on that communicator. */
#include <limits.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nccl.h"

#define EMU_MAGIC "vlm-emu-nccl-id"
#define EMU_TAG_BASE 20000
#define EMU_TAG_SPAN 4096

struct emu_nccl_comm {
  MPI_Comm mc; /* MPI rank == NCCL rank */
  int rank, size;
};

/* What the id carries after the magic string. */
typedef struct {
  char magic[16];
  int maker;  /* world rank that made the id */
  int serial; /* the maker's count of ids made so far */
} emu_id;

static char g_last_error[256] = "";

/* Records the message that ncclGetLastError returns, and gives back r. */
static ncclResult_t fail(ncclResult_t r, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_last_error, sizeof g_last_error, fmt, ap);
  va_end(ap);
  return r;
}

#define MPI_OK(call)                                                                      \
  do {                                                                                    \
    if ((call) != MPI_SUCCESS)                                                            \
      return fail(ncclSystemError, "emulated NCCL: %s failed (%s:%d)", #call, __FILE__,   \
                  __LINE__);                                                              \
  } while (0)

const char *ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (emulated)";
    case ncclSystemError: return "unhandled system error (emulated: an MPI call failed)";
    case ncclInternalError: return "internal error (emulated)";
    case ncclInvalidArgument: return "invalid argument (emulated)";
    case ncclInvalidUsage: return "invalid usage (emulated)";
  }
  return "unknown result (emulated)";
}

const char *ncclGetLastError(ncclComm_t comm) {
  (void)comm;
  return g_last_error;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
  static int serial;
  int up = 0;
  MPI_OK(MPI_Initialized(&up));
  if (!up) return fail(ncclInvalidUsage, "emulated NCCL needs MPI initialised (ncclGetUniqueId)");
  emu_id e;
  memset(&e, 0, sizeof e);
  snprintf(e.magic, sizeof e.magic, "%s", EMU_MAGIC);
  MPI_OK(MPI_Comm_rank(MPI_COMM_WORLD, &e.maker));
  e.serial = serial++;
  memset(id, 0, sizeof *id);
  memcpy(id->internal, &e, sizeof e);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
  emu_id e;
  memcpy(&e, id.internal, sizeof e);
  if (strncmp(e.magic, EMU_MAGIC, sizeof e.magic) != 0)
    return fail(ncclInvalidArgument, "ncclCommInitRank: not an id from ncclGetUniqueId");
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return fail(ncclInvalidArgument, "ncclCommInitRank: rank %d of %d", rank, nranks);
  int me = 0, wsize = 0;
  MPI_OK(MPI_Comm_rank(MPI_COMM_WORLD, &me));
  MPI_OK(MPI_Comm_size(MPI_COMM_WORLD, &wsize));
  if (nranks > wsize)
    return fail(ncclInvalidArgument, "ncclCommInitRank: %d ranks in a world of %d", nranks, wsize);
  const int tag = EMU_TAG_BASE + e.serial % EMU_TAG_SPAN;
  int *world_of = malloc((size_t)nranks * sizeof(int));
  if (!world_of) return fail(ncclSystemError, "ncclCommInitRank: out of memory");
  if (me == e.maker) { /* collect every member's (rank, world rank), answer with the list */
    for (int i = 0; i < nranks; i++) world_of[i] = -1;
    world_of[rank] = me;
    for (int i = 1; i < nranks; i++) {
      int msg[2];
      MPI_OK(MPI_Recv(msg, 2, MPI_INT, MPI_ANY_SOURCE, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE));
      if (msg[0] < 0 || msg[0] >= nranks || world_of[msg[0]] != -1) {
        free(world_of);
        return fail(ncclInvalidUsage, "ncclCommInitRank: NCCL rank %d given twice or out of range",
                    msg[0]);
      }
      world_of[msg[0]] = msg[1];
    }
    for (int i = 0; i < nranks; i++)
      if (i != rank) MPI_OK(MPI_Send(world_of, nranks, MPI_INT, world_of[i], tag, MPI_COMM_WORLD));
  } else {
    int msg[2] = {rank, me};
    MPI_OK(MPI_Send(msg, 2, MPI_INT, e.maker, tag, MPI_COMM_WORLD));
    MPI_OK(MPI_Recv(world_of, nranks, MPI_INT, e.maker, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE));
  }
  MPI_Group wg, g;
  MPI_Comm mc = MPI_COMM_NULL;
  MPI_OK(MPI_Comm_group(MPI_COMM_WORLD, &wg));
  MPI_OK(MPI_Group_incl(wg, nranks, world_of, &g));
  MPI_OK(MPI_Comm_create_group(MPI_COMM_WORLD, g, tag, &mc));
  MPI_OK(MPI_Group_free(&g));
  MPI_OK(MPI_Group_free(&wg));
  free(world_of);
  struct emu_nccl_comm *c = malloc(sizeof *c);
  if (!c) return fail(ncclSystemError, "ncclCommInitRank: out of memory");
  c->mc = mc;
  MPI_OK(MPI_Comm_rank(mc, &c->rank));
  MPI_OK(MPI_Comm_size(mc, &c->size));
  if (c->rank != rank || c->size != nranks)
    return fail(ncclInternalError, "ncclCommInitRank: MPI rank %d of %d, wanted %d of %d",
                c->rank, c->size, rank, nranks);
  *comm = c;
  return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  if (!comm) return fail(ncclInvalidArgument, "ncclCommFinalize: NULL communicator");
  return ncclSuccess; /* nothing is in flight: every call here completed */
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) return fail(ncclInvalidArgument, "ncclCommDestroy: NULL communicator");
  MPI_OK(MPI_Comm_free(&comm->mc));
  free(comm);
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async_error) {
  if (!comm || !async_error) return fail(ncclInvalidArgument, "ncclCommGetAsyncError: NULL");
  *async_error = ncclSuccess;
  return ncclSuccess;
}

/* ---- collectives ---------------------------------------------------------------------- */

static size_t type_bytes(ncclDataType_t t) {
  return t == ncclFloat32 ? 4 : t == ncclBfloat16 ? 2 : 0;
}

static float bf16_to_float(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static uint16_t float_to_bf16(float f) { /* round to nearest even; NaN stays NaN */
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

/* Checks a call's buffers (emulated device memory, sizes MPI can count). */
static ncclResult_t check_args(const char *what, ncclComm_t comm, const void *send,
                               size_t send_bytes, const void *recv, size_t recv_bytes,
                               ncclDataType_t type, size_t elems) {
  if (!comm) return fail(ncclInvalidArgument, "%s: NULL communicator", what);
  if (type_bytes(type) == 0) return fail(ncclInvalidArgument, "%s: type %d not emulated", what, (int)type);
  if (elems > (size_t)INT_MAX / 4)
    return fail(ncclInvalidArgument, "%s: %zu elements: more than the emulation counts", what, elems);
  if (send_bytes && !emu_is_device_range(send, send_bytes))
    return fail(ncclInvalidArgument, "%s: the send buffer is not device memory", what);
  if (recv_bytes && !emu_is_device_range(recv, recv_bytes))
    return fail(ncclInvalidArgument, "%s: the receive buffer is not device memory", what);
  return ncclSuccess;
}

/* n bf16 values widened to a new float array (NULL when out of memory). */
static float *widen(const void *src, size_t n) {
  float *f = malloc((n ? n : 1) * sizeof(float));
  if (!f) return NULL;
  const uint16_t *h = src;
  for (size_t i = 0; i < n; i++) f[i] = bf16_to_float(h[i]);
  return f;
}

static void narrow(void *dst, const float *f, size_t n) {
  uint16_t *h = dst;
  for (size_t i = 0; i < n; i++) h[i] = float_to_bf16(f[i]);
}

ncclResult_t ncclAllGather(const void *send, void *recv, size_t sendcount, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream) {
  (void)stream; /* emulated streams run at once: the inputs are written already */
  const size_t eb = type_bytes(type), bytes = sendcount * eb;
  ncclResult_t r = check_args("ncclAllGather", comm, send, bytes, recv,
                              comm ? bytes * (size_t)comm->size : 0, type,
                              sendcount * (comm ? (size_t)comm->size : 1));
  if (r != ncclSuccess) return r;
  const int in_place = (const char *)send == (const char *)recv + (size_t)comm->rank * bytes;
  MPI_OK(MPI_Allgather(in_place ? MPI_IN_PLACE : send, (int)bytes, MPI_BYTE, recv, (int)bytes,
                       MPI_BYTE, comm->mc));
  return ncclSuccess;
}

ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t recvcount,
                               ncclDataType_t type, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t stream) {
  (void)stream;
  const size_t eb = type_bytes(type);
  const size_t total = recvcount * (comm ? (size_t)comm->size : 1);
  ncclResult_t r = check_args("ncclReduceScatter", comm, send, total * eb, recv, recvcount * eb,
                              type, total);
  if (r != ncclSuccess) return r;
  if (op != ncclSum) return fail(ncclInvalidArgument, "ncclReduceScatter: only ncclSum is emulated");
  /* fp32 and bf16 both go through float copies: send may overlap recv (in place) */
  float *in = type == ncclBfloat16 ? widen(send, total) : malloc((total ? total : 1) * 4);
  float *out = malloc((recvcount ? recvcount : 1) * sizeof(float));
  if (!in || !out) {
    free(in), free(out);
    return fail(ncclSystemError, "ncclReduceScatter: out of memory");
  }
  if (type == ncclFloat32) memcpy(in, send, total * 4);
  int rc = MPI_Reduce_scatter_block(in, out, (int)recvcount, MPI_FLOAT, MPI_SUM, comm->mc);
  if (rc == MPI_SUCCESS) {
    if (type == ncclBfloat16) narrow(recv, out, recvcount);
    else memcpy(recv, out, recvcount * 4);
  }
  free(in), free(out);
  if (rc != MPI_SUCCESS) return fail(ncclSystemError, "ncclReduceScatter: MPI_Reduce_scatter_block failed");
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  (void)stream;
  const size_t eb = type_bytes(type);
  ncclResult_t r = check_args("ncclAllReduce", comm, send, count * eb, recv, count * eb, type, count);
  if (r != ncclSuccess) return r;
  if (op != ncclSum) return fail(ncclInvalidArgument, "ncclAllReduce: only ncclSum is emulated");
  if (type == ncclFloat32) {
    MPI_OK(MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, (int)count, MPI_FLOAT,
                         MPI_SUM, comm->mc));
    return ncclSuccess;
  }
  float *f = widen(send, count);
  if (!f) return fail(ncclSystemError, "ncclAllReduce: out of memory");
  int rc = MPI_Allreduce(MPI_IN_PLACE, f, (int)count, MPI_FLOAT, MPI_SUM, comm->mc);
  if (rc == MPI_SUCCESS) narrow(recv, f, count);
  free(f);
  if (rc != MPI_SUCCESS) return fail(ncclSystemError, "ncclAllReduce: MPI_Allreduce failed");
  return ncclSuccess;
}
