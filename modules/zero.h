/* modules/zero.h: ZeRO-3 over MPI. The world is a grid of R replicas x S
 * shard ranks (shard dimension innermost: world rank = r * S + s). Every
 * parameter larger than the persistence threshold is flattened, padded to a
 * multiple of S and split across the shard group (rank s holds elements
 * [s*chunk, (s+1)*chunk) of it, chunk = ceil(n/S)); smaller ones, and frozen
 * ones when replicate_frozen is set, are replicated. A rank stores only its
 * part of the parameters, of the gradients of trainable parameters and of the
 * AdamW moments (same layout as the gradients). Modules (registry.modules)
 * are gathered with one coalesced collective just before they run and freed
 * after; gradients are reduce-scattered in the shard group and all-reduced
 * across replicas. With S = 1 nothing is gathered: the single-process path is
 * this path with a shard group of one.
 *
 * Memory: every buffer comes from the backend (kernels/backend.h) and is touched
 * through it. With a device backend (on_device) the shards live in device
 * memory; the I/O range functions below then point into a host mirror of the
 * parameter shards, which zero_params_to_host / zero_params_to_device copy.
 * With more than one rank, a backend with collective entries (the CUDA one:
 * NCCL) runs the gathers and gradient reductions itself; the CPU uses MPI. */
#ifndef VLM_MODULES_ZERO_H
#define VLM_MODULES_ZERO_H

#include <mpi.h>

#include "io/train_config.h"
#include "kernels/backend.h"
#include "modules/registry.h"

typedef struct {
  MPI_Comm world, shard, replica; /* shard: the S ranks of one replica; replica: same s across replicas */
  MPI_Comm node;                  /* ranks of this node (MPI_COMM_TYPE_SHARED) */
  int rank, size;                 /* in world */
  int R, S, r, s;                 /* grid shape and this rank's coordinates */
  int local_rank, local_size;     /* in node */
} vlm_comms;

/* Builds the grid: S = shard_size, or the ranks of one node when 0. A world
 * size that S does not divide is an error. */
int comms_init(vlm_comms *c, MPI_Comm world, long shard_size);
void comms_free(vlm_comms *c);

/* Where one parameter lives on this rank. */
typedef struct {
  int sharded;  /* 1: split over the shard group; 0: replicated (full on every rank) */
  long chunk;   /* elements per shard rank when sharded (ceil(n/S)); n when replicated */
  long lo, hi;  /* global (flattened) element range held here; hi - lo <= chunk, may be empty */
  long off;     /* offset of the local part in zero_state.params (chunk elements reserved) */
  long goff;    /* offset of the local part in zero_state.grads and the moments; -1 if frozen */
} shard_info;

/* Gathering bookkeeping lives in modules/zero.c; this is the public state. */
typedef struct zero_state zero_state;

struct zero_state {
  const vlm_backend *ops; /* where params, grads and the gather buffers live */
  vlm_comms *comm;
  registry *reg;        /* names, shapes, trainable flags, groups, modules */
  shard_info *sh;       /* [reg->n] */
  float *params;        /* local parameter storage, n_local elements (backend memory) */
  float *grads;         /* local gradient storage, n_local_grad elements (trainable only) */
  float *hparams;       /* host mirror of params for I/O (== params when not on_device) */
  long n_local, n_local_grad;
  int replicate_frozen;
  long threshold;       /* stage3_param_persistence_threshold */
  void *impl;           /* gather buffers, requests, accounting (zero.c) */
};

/* Lays out this rank's storage (params copied from reg->params when it is
 * allocated, e.g. after loading weights on every rank) and the gather buffers.
 * threshold: stage3_param_persistence_threshold; max_live:
 * stage3_max_live_parameters (bounds the gathered elements alive at once). */
int zero_init(zero_state *z, vlm_comms *c, registry *reg, long threshold, long max_live,
              int replicate_frozen);
/* The same with the storage in backend ops' memory (zero_init: the CPU). */
int zero_init_backend(zero_state *z, const vlm_backend *ops, vlm_comms *c, registry *reg,
                      long threshold, long max_live, int replicate_frozen);
void zero_free(zero_state *z);

/* ---- on-demand gathering (called by the model around each module) ---- */
/* Makes module k's full parameters available (waits for a prefetch, or gathers
 * now) and returns; zero_full(z, i) then points at parameter i's full data. */
void zero_fetch(zero_state *z, int k);
/* Starts gathering module k without waiting (if the live bound allows). */
void zero_prefetch(zero_state *z, int k);
/* Frees module k's gathered copy. */
void zero_release(zero_state *z, int k);
/* Drives outstanding non-blocking collectives (Open MPI has no progress thread). */
void zero_progress(zero_state *z);
/* Full-size pointers of parameter i: data (valid while its module is fetched)
 * and gradient (valid between grad_begin and grad_end; NULL when frozen). */
const float *zero_full(const zero_state *z, int i);
float *zero_full_grad(const zero_state *z, int i);
/* Backward of module k: zeroes its full-size gradient workspace ... */
void zero_grad_begin(zero_state *z, int k);
/* ... and reduce-scatters it (sum) into this rank's gradient shards. */
void zero_grad_end(zero_state *z, int k);

/* ---- optimizer step support ---- */
/* Start of an optimizer step: the local gradient shards are to start from zero.
 * Done lazily: zero_grad_begin zeroes a module's gradients before its backward
 * first adds into them, and zero_reduce_grads those of the modules whose backward
 * did not run; read the gradients only after zero_reduce_grads. */
void zero_clear_grads(zero_state *z);
/* Backend pointer to this rank's part [*lo, *hi) of parameter idx (for kernels). */
float *zero_shard(const zero_state *z, int idx, long *lo, long *hi);
/* Sums the gradient shards across replicas and the replicated gradients
 * across the world (call once per optimizer step, after the last micro-batch). */
void zero_reduce_grads(zero_state *z);
/* Squared global norm of all gradients (each element counted once). */
double zero_grad_norm_sq(const zero_state *z);
/* Gathers every parameter's full data into reg->params on world rank 0
 * (allocating it there); other ranks take part and get nothing. */
int zero_gather_to_root(zero_state *z);

/* ---- accounting ---- */
typedef struct {
  double bytes_allgather, bytes_reduce_scatter, bytes_allreduce; /* sent+received by this rank */
  double t_gather_wait, t_reduce; /* seconds blocked */
  long n_allgather, n_reduce_scatter, n_allreduce;
} zero_stats;
void zero_get_stats(const zero_state *z, zero_stats *st);
/* Collective precisions where the backend runs the collectives (the CUDA one, more
 * than one rank): gather_bf16 sends the module gathers as bf16 (fp32 shard -> bf16 ->
 * all-gather -> fp32 gathered weights, half the bytes; bf16.enabled); reduce_bf16 sums
 * the gradients (reduce-scatter and replica / world all-reduces) in bf16
 * (communication_data_type "bf16"). Byte counts follow. Elsewhere (the MPI path, or
 * one rank) nothing changes and this returns 0 too. Call after zero_init_backend,
 * before the first gather. */
int zero_set_comm_types(zero_state *z, int gather_bf16, int reduce_bf16);
/* Bytes of the gather and reduce-scatter buffers (the live-gather bound). */
size_t zero_buffer_bytes(const zero_state *z);
void zero_reset_stats(zero_state *z);

/* ---- host access for I/O (no-ops when the backend is the host) ---- */
/* Copies the parameter shards into the host mirror (before reading them there). */
void zero_params_to_host(zero_state *z);
/* Copies the host mirror into the parameter shards (after filling it). */
void zero_params_to_device(zero_state *z);

/* The range of tensor idx that this rank must WRITE when saving (each global
 * element is written by exactly one rank of the world: replica 0, and for a
 * replicated tensor shard rank 0 only); empty range (lo == hi) if none. Returns
 * a pointer to the local data of element lo in the host mirror, or NULL when
 * empty. */
const float *zero_io_range(const zero_state *z, int idx, long *lo, long *hi);
/* The range this rank HOLDS (and must fill when loading: every rank reads its
 * own part, whatever layout wrote the file), and a writable pointer to it in the
 * host mirror (zero_params_to_device publishes what was written). */
float *zero_local_range(zero_state *z, int idx, long *lo, long *hi);
/* Same for the gradient-shaped buffers (AdamW moments): base is a buffer of
 * n_local_grad elements laid out like zero_state.grads (host or backend: this is
 * offset arithmetic only). NULL if frozen. */
float *zero_local_grad_range(const zero_state *z, float *base, int idx, long *lo, long *hi);

#endif
