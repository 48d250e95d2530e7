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
 * this path with a shard group of one. */
#ifndef VLM_MODULES_ZERO_H
#define VLM_MODULES_ZERO_H

#include <mpi.h>

#include "io/train_config.h"
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
  vlm_comms *comm;
  registry *reg;        /* names, shapes, trainable flags, groups, modules */
  shard_info *sh;       /* [reg->n] */
  float *params;        /* local parameter storage, n_local elements */
  float *grads;         /* local gradient storage, n_local_grad elements (trainable only) */
  long n_local, n_local_grad;
  int replicate_frozen;
  long threshold;       /* stage3_param_persistence_threshold */
  void *impl;           /* gather buffers, requests, accounting (zero.c) */
};

/* The range of tensor idx that this rank must WRITE when saving (each global
 * element is written by exactly one rank of the world: replica 0, and for a
 * replicated tensor shard rank 0 only); empty range (lo == hi) if none. Returns
 * a pointer to the local data of element lo, or NULL when empty. */
const float *zero_io_range(const zero_state *z, int idx, long *lo, long *hi);
/* The range this rank HOLDS (and must fill when loading: every rank reads its
 * own part, whatever layout wrote the file), and a writable pointer to it. */
float *zero_local_range(zero_state *z, int idx, long *lo, long *hi);
/* Same for the gradient-shaped buffers (AdamW moments): base is a buffer of
 * n_local_grad elements laid out like zero_state.grads. NULL if frozen. */
float *zero_local_grad_range(const zero_state *z, float *base, int idx, long *lo, long *hi);

#endif
