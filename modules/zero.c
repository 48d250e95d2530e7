/* modules/zero.c: ZeRO-3 over MPI (see modules/zero.h): the replica x shard
 * grid, the per-rank storage of parameter and gradient shards, the coalesced
 * per-module gathers (blocking or prefetched), the gradient reduce-scatter and
 * the cross-replica reduction, with byte and wait-time accounting.
 *
 * Local storage, per module k, in registry order:
 *   params: [chunks of k's sharded params][k's replicated params]
 *   grads:  [chunks of every module's sharded trainable params] then
 *           [every replicated trainable param]
 * so a module's gather sends one contiguous range, and the cross-replica
 * reduction is two contiguous all-reduces. Every buffer comes from the backend
 * (z->ops) and is copied, zeroed and summed through it.
 *
 * Collectives: MPI on the buffers themselves when the backend has no collective
 * entries (the CPU); otherwise, with more than one rank, the backend's all_gather,
 * reduce_scatter and all_reduce (NCCL on the CUDA backend) on its communicators for
 * the same shard, replica and world groups. There a prefetch is enqueued on the comm
 * stream before the current module's kernels and the compute stream waits for its
 * event only when the module is fetched; gradient reductions are waited for (on the
 * stream) before their results are added. Host scalars (the gradient norm, the order
 * check) and checkpoint gathers (from the host mirror) stay on MPI. Byte accounting is
 * the same on both paths. */
#include "modules/zero.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/vlm.h"
#include "slurm/runtime.h" /* the collective watchdog: a rank stuck here is reported by name */

typedef struct {
  int n_mod;
  long *mod_full, *mod_pack, *mod_pack_off, *mod_gpack, *mod_gpack_off;
  long max_full, max_pack, max_gpack;
  long shard_grad_n, repl_grad_off, repl_grad_n;
  float **full, **full_g;
  int n_slots;
  float **slot;
  int *slot_mod, *mod_slot, *mod_state; /* state: 0 absent, 1 in flight, 2 ready */
  /* 1 while module k's local gradients are zero or hold this step's sums; 0 from
   * zero_clear_grads until zero_grad_begin(k) (or zero_reduce_grads) zeroes them */
  unsigned char *grad_clean;
  float *stage, *gwork, *gsend, *grecv;
  MPI_Request req;
  int req_mod;
  int coll;                    /* 1: collectives through the backend table (see above) */
  void *ev_gather, *ev_reduce; /* the backend's events of the gather and the reductions */
  int gather16, reduce16;      /* bf16 gathers / gradient reductions (zero_set_comm_types) */
  void *send16, *stage16;      /* bf16 gather send (max_pack) and receive (S x max_pack) */
  void *red16, *grecv16;       /* bf16 reduction buffer and reduce-scatter receive */
  size_t bytes16;              /* their total size */
  zero_stats st;
} zimpl;

#define IMPL(z) ((zimpl *)(z)->impl)

/* A backend collective that failed: its message is printed; say where, stop every rank
 * (the MPI path's errors abort the same way, through MPI's default handler). */
static void coll_ok(const zero_state *z, int rc, const char *what, const char *file, int line) {
  if (rc == 0) return;
  vlm_trace_at(file, line, "zero", what);
  fprintf(stderr, "vlmtrain: error (rank %d): a ZeRO-3 collective of the %s backend failed; "
          "aborting\n", z->comm->rank, z->ops->name);
  MPI_Abort(z->comm->world, 3);
}
#define COLL_OK(z, call) coll_ok((z), (call), #call, __FILE__, __LINE__)

/* ---- communicators ----------------------------------------------------- */

int comms_init(vlm_comms *c, MPI_Comm world, long shard_size) {
  memset(c, 0, sizeof *c);
  MPI_Comm_dup(world, &c->world);
  MPI_Comm_rank(c->world, &c->rank);
  MPI_Comm_size(c->world, &c->size);
  MPI_Comm_split_type(c->world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &c->node);
  MPI_Comm_rank(c->node, &c->local_rank);
  MPI_Comm_size(c->node, &c->local_size);
  long S = shard_size > 0 ? shard_size : c->local_size;
  long smin = S, smax = S;
  MPI_Allreduce(MPI_IN_PLACE, &smin, 1, MPI_LONG, MPI_MIN, c->world);
  MPI_Allreduce(MPI_IN_PLACE, &smax, 1, MPI_LONG, MPI_MAX, c->world);
  if (smin != smax)
    VLM_FAIL("zero_optimization.shard_size is not set and nodes hold different numbers of ranks "
             "(%ld..%ld): set shard_size explicitly", smin, smax);
  if (S > c->size || c->size % S != 0)
    VLM_FAIL("world size %d is not a multiple of the shard group size %ld "
             "(zero_optimization.shard_size): use %ld x k ranks or another shard_size",
             c->size, S, S);
  c->S = (int)S;
  c->R = c->size / c->S;
  c->r = c->rank / c->S;
  c->s = c->rank % c->S;
  MPI_Comm_split(c->world, c->r, c->s, &c->shard);
  MPI_Comm_split(c->world, c->s, c->r, &c->replica);
  return 0;
}

void comms_free(vlm_comms *c) {
  if (c->shard != MPI_COMM_NULL && c->shard) MPI_Comm_free(&c->shard);
  if (c->replica != MPI_COMM_NULL && c->replica) MPI_Comm_free(&c->replica);
  if (c->node != MPI_COMM_NULL && c->node) MPI_Comm_free(&c->node);
  if (c->world != MPI_COMM_NULL && c->world) MPI_Comm_free(&c->world);
  memset(c, 0, sizeof *c);
}

/* MPI counts are int: large reductions go in pieces. */
static void allreduce_floats(float *x, long n, MPI_Comm comm) {
  for (long o = 0; o < n; o += INT_MAX / 2) {
    long k = n - o < INT_MAX / 2 ? n - o : INT_MAX / 2;
    MPI_Allreduce(MPI_IN_PLACE, x + o, (int)k, MPI_FLOAT, MPI_SUM, comm);
  }
}

/* ---- set-up ------------------------------------------------------------ */

/* n floats of zeroed backend memory (at least one), NULL on failure. */
static float *balloc(const vlm_backend *ops, long n, const char *what) {
  if (n < 1) n = 1;
  float *p = ops->alloc((size_t)n * sizeof(float), what);
  if (p) ops->zero(p, n);
  return p;
}

static void bfree(const vlm_backend *ops, void *p) {
  if (p) ops->free(p);
}

int zero_init(zero_state *z, vlm_comms *c, registry *reg, long threshold, long max_live,
              int replicate_frozen) {
  return zero_init_backend(z, vlm_backend_cpu(), c, reg, threshold, max_live, replicate_frozen);
}

int zero_init_backend(zero_state *z, const vlm_backend *ops, vlm_comms *c, registry *reg,
                      long threshold, long max_live, int replicate_frozen) {
  memset(z, 0, sizeof *z);
  z->ops = ops;
  if (ops->on_device && c->size > 1 && !ops->all_gather)
    VLM_FAIL("--device %s with more than one rank (%d here) needs collectives in the backend "
             "table, which this one lacks (run one rank)", ops->name, c->size);
  z->comm = c;
  z->reg = reg;
  z->threshold = threshold;
  z->replicate_frozen = replicate_frozen;
  zimpl *im = calloc(1, sizeof *im);
  z->sh = calloc((size_t)reg->n, sizeof *z->sh);
  if (!im || !z->sh) VLM_FAIL("out of memory setting up ZeRO-3");
  z->impl = im;
  const int S = c->S, nm = reg->n_modules;
  im->n_mod = nm;
  im->req = MPI_REQUEST_NULL;
  im->req_mod = -1;
  im->coll = ops->all_gather != NULL && c->size > 1;
  if (im->coll) {
    VLM_CHECK(ops->coll_init(&c->shard, &c->replica, &c->world));
    im->ev_gather = ops->coll_event_create();
    im->ev_reduce = ops->coll_event_create();
    if (!im->ev_gather || !im->ev_reduce) VLM_FAIL("cannot create the collectives' events");
  }
  im->mod_full = calloc((size_t)nm, sizeof(long));
  im->mod_pack = calloc((size_t)nm, sizeof(long));
  im->mod_pack_off = calloc((size_t)nm, sizeof(long));
  im->mod_gpack = calloc((size_t)nm, sizeof(long));
  im->mod_gpack_off = calloc((size_t)nm, sizeof(long));
  im->mod_slot = malloc((size_t)nm * sizeof(int));
  im->mod_state = calloc((size_t)nm, sizeof(int));
  im->grad_clean = malloc((size_t)nm);
  if (im->grad_clean) memset(im->grad_clean, 1, (size_t)nm); /* balloc zeroes z->grads */
  im->full = calloc((size_t)reg->n, sizeof(float *));
  im->full_g = calloc((size_t)reg->n, sizeof(float *));
  if (!im->mod_full || !im->mod_pack || !im->mod_pack_off || !im->mod_gpack ||
      !im->mod_gpack_off || !im->mod_slot || !im->mod_state || !im->grad_clean || !im->full ||
      !im->full_g)
    VLM_FAIL("out of memory setting up ZeRO-3");

  /* 1. which parameters are sharded, and the local layout */
  long cur = 0, gcur = 0;
  for (int k = 0; k < nm; k++) {
    const module_info *m = &reg->modules[k];
    im->mod_slot[k] = -1;
    im->mod_full[k] = m->end - m->begin;
    if (im->mod_full[k] > im->max_full) im->max_full = im->mod_full[k];
    for (int pass = 0; pass < 2; pass++) { /* sharded first, then replicated */
      if (pass == 0) im->mod_pack_off[k] = cur;
      for (int i = m->first; i < m->first + m->count; i++) {
        const param_info *p = &reg->p[i];
        shard_info *sh = &z->sh[i];
        int sharded = S > 1 && p->numel > threshold && !(replicate_frozen && !p->trainable);
        if (sharded != (pass == 0)) continue;
        sh->sharded = sharded;
        sh->chunk = sharded ? (p->numel + S - 1) / S : p->numel;
        sh->lo = sharded ? (long)c->s * sh->chunk : 0;
        if (sh->lo > p->numel) sh->lo = p->numel;
        sh->hi = sharded ? sh->lo + sh->chunk : p->numel;
        if (sh->hi > p->numel) sh->hi = p->numel;
        sh->off = cur;
        cur += sh->chunk;
        if (sharded) im->mod_pack[k] += sh->chunk;
      }
    }
    if (im->mod_pack[k] > im->max_pack) im->max_pack = im->mod_pack[k];
    im->mod_gpack_off[k] = gcur;
    for (int i = m->first; i < m->first + m->count; i++) {
      if (!reg->p[i].trainable || !z->sh[i].sharded) continue;
      z->sh[i].goff = gcur;
      gcur += z->sh[i].chunk;
      im->mod_gpack[k] += z->sh[i].chunk;
    }
    if (im->mod_gpack[k] > im->max_gpack) im->max_gpack = im->mod_gpack[k];
  }
  im->shard_grad_n = gcur;
  im->repl_grad_off = gcur;
  for (int i = 0; i < reg->n; i++) {
    if (!reg->p[i].trainable) z->sh[i].goff = -1;
    else if (!z->sh[i].sharded) {
      z->sh[i].goff = gcur;
      gcur += z->sh[i].chunk;
    }
  }
  im->repl_grad_n = gcur - im->repl_grad_off;
  z->n_local = cur;
  z->n_local_grad = gcur;

  /* 2. storage */
  z->params = balloc(ops, cur, "parameter shards");
  z->grads = balloc(ops, gcur, "gradient shards");
  if (!z->params || !z->grads)
    VLM_FAIL("cannot allocate the parameter and gradient shards (%.2f GiB) on the %s backend",
             (cur + gcur) * 4.0 / 1073741824.0, ops->name);
  z->hparams = ops->on_device ? vlm_alloc((size_t)(cur > 0 ? cur : 1) * sizeof(float),
                                          "host copy of the parameter shards")
                              : z->params;
  if (!z->hparams) return -1;
  if (reg->params) {
    for (int i = 0; i < reg->n; i++) {
      const shard_info *sh = &z->sh[i];
      memcpy(z->hparams + sh->off, reg->params + reg->p[i].offset + sh->lo,
             (size_t)(sh->hi - sh->lo) * sizeof(float));
    }
    zero_params_to_device(z);
  }
  for (int i = 0; i < reg->n; i++) /* replicated parameters are always "gathered" */
    if (!z->sh[i].sharded) im->full[i] = z->params + z->sh[i].off;

  /* 3. gather buffers: two slots (current + prefetch) when the live bound allows */
  if (im->max_pack > 0) {
    im->n_slots = (max_live <= 0 || 2 * im->max_full <= max_live) ? 2 : 1;
    im->slot = calloc((size_t)im->n_slots, sizeof(float *));
    im->slot_mod = malloc((size_t)im->n_slots * sizeof(int));
    if (!im->slot || !im->slot_mod) VLM_FAIL("out of memory");
    for (int s = 0; s < im->n_slots; s++) {
      im->slot[s] = balloc(ops, im->max_full, "gathered module");
      im->slot_mod[s] = -1;
      if (!im->slot[s]) VLM_FAIL("cannot allocate a gather buffer of %ld elements", im->max_full);
    }
    im->stage = balloc(ops, (long)S * im->max_pack, "gather staging");
    if (!im->stage) VLM_FAIL("cannot allocate the gather staging buffer");
  }
  if (im->max_gpack > 0) {
    im->gwork = balloc(ops, im->max_full, "module gradient workspace");
    im->gsend = balloc(ops, (long)S * im->max_gpack, "reduce-scatter send");
    im->grecv = balloc(ops, im->max_gpack, "reduce-scatter receive");
    if (!im->gwork || !im->gsend || !im->grecv) VLM_FAIL("cannot allocate gradient buffers");
  }
  return 0;
}

void zero_free(zero_state *z) {
  zimpl *im = IMPL(z);
  const vlm_backend *ops = z->ops ? z->ops : vlm_backend_cpu();
  if (im) {
    if (im->req != MPI_REQUEST_NULL) MPI_Wait(&im->req, MPI_STATUS_IGNORE);
    if (im->coll) { /* waits for the comm stream, so no collective still uses a buffer */
      ops->coll_free();
      bfree(ops, im->send16);
      bfree(ops, im->stage16);
      bfree(ops, im->red16);
      bfree(ops, im->grecv16);
      ops->coll_event_destroy(im->ev_gather);
      ops->coll_event_destroy(im->ev_reduce);
    }
    for (int s = 0; s < im->n_slots && im->slot; s++) bfree(ops, im->slot[s]);
    free(im->slot);
    free(im->slot_mod);
    bfree(ops, im->stage);
    bfree(ops, im->gwork);
    bfree(ops, im->gsend);
    bfree(ops, im->grecv);
    free(im->mod_full);
    free(im->mod_pack);
    free(im->mod_pack_off);
    free(im->mod_gpack);
    free(im->mod_gpack_off);
    free(im->mod_slot);
    free(im->mod_state);
    free(im->grad_clean);
    free(im->full);
    free(im->full_g);
    free(im);
  }
  if (z->hparams != z->params) vlm_free(z->hparams);
  bfree(ops, z->params);
  bfree(ops, z->grads);
  free(z->sh);
  memset(z, 0, sizeof *z);
}

/* ---- gathering ----------------------------------------------------------- */

static void check_order(zero_state *z, int k) {
#ifndef NDEBUG
  /* every rank of the shard group must gather the same module in the same order */
  int lo = k, hi = k;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_INT, MPI_MIN, z->comm->shard);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_INT, MPI_MAX, z->comm->shard);
  if (lo != hi) {
    fprintf(stderr, "vlmtrain: error (rank %d): ZeRO-3 gather order differs across the shard group: "
            "this rank gathers module \"%s\", another gathers module %d..%d; aborting\n",
            z->comm->rank, z->reg->modules[k].name, lo, hi);
    MPI_Abort(z->comm->world, 3);
  }
#else
  (void)z;
  (void)k;
#endif
}

static int take_slot(zimpl *im, int k) {
  for (int s = 0; s < im->n_slots; s++)
    if (im->slot_mod[s] < 0) {
      im->slot_mod[s] = k;
      im->mod_slot[k] = s;
      return s;
    }
  return -1;
}

static void unpack(zero_state *z, int k) {
  zimpl *im = IMPL(z);
  const module_info *m = &z->reg->modules[k];
  const int S = z->comm->S;
  const long P = im->mod_pack[k];
  float *base = im->slot[im->mod_slot[k]];
  for (int i = m->first; i < m->first + m->count; i++) {
    const shard_info *sh = &z->sh[i];
    if (!sh->sharded) continue;
    const long n = z->reg->p[i].numel, pos = sh->off - im->mod_pack_off[k];
    float *dst = base + (z->reg->p[i].offset - m->begin);
    for (int s = 0; s < S; s++) {
      long lo = (long)s * sh->chunk, cnt = n - lo < sh->chunk ? n - lo : sh->chunk;
      if (cnt > 0) z->ops->copy(dst + lo, im->stage + (size_t)s * P + pos, (size_t)cnt * sizeof(float));
    }
    im->full[i] = dst;
  }
  im->mod_state[k] = 2;
}

/* Enqueues module k's gather through the backend (on its comm stream), in bf16 when
 * gather16: the shard is rounded to bf16 on the compute stream first. */
static void gather_enqueue(zero_state *z, int k) {
  zimpl *im = IMPL(z);
  const float *send = z->params + im->mod_pack_off[k];
  const size_t P = (size_t)im->mod_pack[k];
  if (im->gather16) {
    z->ops->to_bf16(im->send16, send, (long)P);
    COLL_OK(z, z->ops->all_gather(VLM_GROUP_SHARD, im->send16, im->stage16, P, VLM_COLL_BF16,
                                  im->ev_gather));
  } else {
    COLL_OK(z, z->ops->all_gather(VLM_GROUP_SHARD, send, im->stage, P, VLM_COLL_F32,
                                  im->ev_gather));
  }
}

/* The compute stream waits for module k's gather; bf16 data is widened into stage. */
static void gather_land(zero_state *z, int k) {
  zimpl *im = IMPL(z);
  COLL_OK(z, z->ops->coll_wait(im->ev_gather));
  if (im->gather16) z->ops->from_bf16(im->stage, im->stage16, (long)z->comm->S * im->mod_pack[k]);
}

static void finish_request(zero_state *z) {
  zimpl *im = IMPL(z);
  if (im->req_mod < 0) return;
  double t0 = vlm_now();
  rt_watchdog_arm_of("allgather of module", z->reg->modules[im->req_mod].name);
  if (im->coll)
    gather_land(z, im->req_mod); /* the compute stream waits, not the host */
  else
    MPI_Wait(&im->req, MPI_STATUS_IGNORE);
  rt_watchdog_disarm();
  im->st.t_gather_wait += vlm_now() - t0;
  int k = im->req_mod;
  im->req_mod = -1;
  unpack(z, k);
}

void zero_progress(zero_state *z) {
  zimpl *im = IMPL(z);
  if (!im || im->req_mod < 0 || im->coll) return; /* streams need no host progress */
  int done = 0;
  MPI_Test(&im->req, &done, MPI_STATUS_IGNORE);
  if (done) {
    int k = im->req_mod;
    im->req_mod = -1;
    unpack(z, k);
  }
}

static void count_gather(zero_state *z, int k) {
  zimpl *im = IMPL(z);
  im->st.n_allgather++;
  im->st.bytes_allgather += (double)im->mod_pack[k] * z->comm->S * (im->gather16 ? 2 : sizeof(float));
}

void zero_fetch(zero_state *z, int k) {
  zimpl *im = IMPL(z);
  if (im->mod_pack[k] == 0) return; /* nothing sharded here */
  if (im->mod_state[k] == 2) return;
  if (im->mod_state[k] == 1) {
    finish_request(z);
    return;
  }
  finish_request(z); /* another module's prefetch must land first (one stage buffer) */
  check_order(z, k);
  if (take_slot(im, k) < 0) {
    fprintf(stderr, "vlmtrain: error: ZeRO-3: no free gather buffer for module %s\n",
            z->reg->modules[k].name);
    MPI_Abort(z->comm->world, 3);
  }
  double t0 = vlm_now();
  rt_watchdog_arm_of("allgather of module", z->reg->modules[k].name);
  if (im->coll) {
    gather_enqueue(z, k);
    gather_land(z, k);
  } else {
    MPI_Allgather(z->params + im->mod_pack_off[k], (int)im->mod_pack[k], MPI_FLOAT, im->stage,
                  (int)im->mod_pack[k], MPI_FLOAT, z->comm->shard);
  }
  rt_watchdog_disarm();
  im->st.t_gather_wait += vlm_now() - t0;
  count_gather(z, k);
  unpack(z, k);
}

void zero_prefetch(zero_state *z, int k) {
  zimpl *im = IMPL(z);
  if (k < 0 || k >= im->n_mod || im->mod_pack[k] == 0 || im->mod_state[k] != 0 || im->req_mod >= 0)
    return;
  check_order(z, k);
  if (take_slot(im, k) < 0) return; /* live bound reached: gather when needed */
  if (im->coll) /* on the comm stream, after the kernels enqueued so far */
    gather_enqueue(z, k);
  else
    MPI_Iallgather(z->params + im->mod_pack_off[k], (int)im->mod_pack[k], MPI_FLOAT, im->stage,
                   (int)im->mod_pack[k], MPI_FLOAT, z->comm->shard, &im->req);
  im->req_mod = k;
  im->mod_state[k] = 1;
  count_gather(z, k);
}

void zero_release(zero_state *z, int k) {
  zimpl *im = IMPL(z);
  if (im->mod_pack[k] == 0 || im->mod_state[k] != 2) return;
  const module_info *m = &z->reg->modules[k];
  for (int i = m->first; i < m->first + m->count; i++)
    if (z->sh[i].sharded) im->full[i] = NULL;
  im->slot_mod[im->mod_slot[k]] = -1;
  im->mod_slot[k] = -1;
  im->mod_state[k] = 0;
}

const float *zero_full(const zero_state *z, int i) { return IMPL(z)->full[i]; }
float *zero_full_grad(const zero_state *z, int i) { return IMPL(z)->full_g[i]; }

/* ---- gradients ----------------------------------------------------------- */

/* Zeroes module k's local gradients (its shard slices and its replicated
 * parameters' gradients) if zero_clear_grads has marked them stale. */
static void clean_module_grads(zero_state *z, int k) {
  zimpl *im = IMPL(z);
  if (im->grad_clean[k]) return;
  const module_info *m = &z->reg->modules[k];
  if (im->mod_gpack[k] > 0) z->ops->zero(z->grads + im->mod_gpack_off[k], im->mod_gpack[k]);
  for (int i = m->first; i < m->first + m->count; i++)
    if (z->reg->p[i].trainable && !z->sh[i].sharded)
      z->ops->zero(z->grads + z->sh[i].goff, z->sh[i].chunk);
  im->grad_clean[k] = 1;
}

void zero_grad_begin(zero_state *z, int k) {
  zimpl *im = IMPL(z);
  const module_info *m = &z->reg->modules[k];
  clean_module_grads(z, k);
  for (int i = m->first; i < m->first + m->count; i++) {
    const param_info *p = &z->reg->p[i];
    const shard_info *sh = &z->sh[i];
    if (!p->trainable) {
      im->full_g[i] = NULL;
    } else if (sh->sharded) {
      im->full_g[i] = im->gwork + (p->offset - m->begin);
      z->ops->zero(im->full_g[i], p->numel);
    } else {
      im->full_g[i] = z->grads + sh->goff; /* accumulates locally; reduced per step */
    }
  }
}

void zero_grad_end(zero_state *z, int k) {
  zimpl *im = IMPL(z);
  const module_info *m = &z->reg->modules[k];
  const long G = im->mod_gpack[k];
  const int S = z->comm->S;
  if (G > 0) {
    for (int s = 0; s < S; s++) {
      float *dst = im->gsend + (size_t)s * G;
      for (int i = m->first; i < m->first + m->count; i++) {
        const shard_info *sh = &z->sh[i];
        if (!sh->sharded || !z->reg->p[i].trainable) continue;
        const long n = z->reg->p[i].numel, lo = (long)s * sh->chunk;
        const long cnt = n - lo <= 0 ? 0 : (n - lo < sh->chunk ? n - lo : sh->chunk);
        const long pos = sh->goff - im->mod_gpack_off[k];
        if (cnt > 0) z->ops->copy(dst + pos, im->full_g[i] + lo, (size_t)cnt * sizeof(float));
        if (cnt < sh->chunk) z->ops->zero(dst + pos + cnt, sh->chunk - cnt);
      }
    }
    double t0 = vlm_now();
    rt_watchdog_arm_of("reduce-scatter of module", m->name);
    if (im->coll && im->reduce16) {
      z->ops->to_bf16(im->red16, im->gsend, (long)S * G);
      COLL_OK(z, z->ops->reduce_scatter(VLM_GROUP_SHARD, im->red16, im->grecv16, (size_t)G,
                                        VLM_COLL_BF16, im->ev_reduce));
      COLL_OK(z, z->ops->coll_wait(im->ev_reduce));
      z->ops->from_bf16(im->grecv, im->grecv16, G);
    } else if (im->coll) {
      COLL_OK(z, z->ops->reduce_scatter(VLM_GROUP_SHARD, im->gsend, im->grecv, (size_t)G,
                                        VLM_COLL_F32, im->ev_reduce));
      COLL_OK(z, z->ops->coll_wait(im->ev_reduce)); /* before add_into reads grecv */
    } else {
      MPI_Reduce_scatter_block(im->gsend, im->grecv, (int)G, MPI_FLOAT, MPI_SUM, z->comm->shard);
    }
    rt_watchdog_disarm();
    im->st.t_reduce += vlm_now() - t0;
    im->st.n_reduce_scatter++;
    im->st.bytes_reduce_scatter += (double)G * S * (im->reduce16 ? 2 : sizeof(float));
    z->ops->add_into(z->grads + im->mod_gpack_off[k], im->grecv, G);
  }
  for (int i = m->first; i < m->first + m->count; i++) im->full_g[i] = NULL;
}

/* Sums x[n] over group g (comm: its MPI communicator) in place. */
static void reduce_grads_over(zero_state *z, float *x, long n, vlm_group g, MPI_Comm comm) {
  zimpl *im = IMPL(z);
  if (!im->coll) {
    allreduce_floats(x, n, comm);
    return;
  }
  if (im->reduce16) {
    z->ops->to_bf16(im->red16, x, n);
    COLL_OK(z, z->ops->all_reduce(g, im->red16, im->red16, (size_t)n, VLM_COLL_BF16, im->ev_reduce));
    COLL_OK(z, z->ops->coll_wait(im->ev_reduce));
    z->ops->from_bf16(x, im->red16, n);
    return;
  }
  COLL_OK(z, z->ops->all_reduce(g, x, x, (size_t)n, VLM_COLL_F32, im->ev_reduce));
  COLL_OK(z, z->ops->coll_wait(im->ev_reduce));
}

void zero_reduce_grads(zero_state *z) {
  zimpl *im = IMPL(z);
  for (int k = 0; k < z->reg->n_modules; k++) clean_module_grads(z, k); /* no backward ran */
  double t0 = vlm_now();
  rt_watchdog_arm("all-reduce of the gradients");
  if (z->comm->R > 1 && im->shard_grad_n > 0) {
    reduce_grads_over(z, z->grads, im->shard_grad_n, VLM_GROUP_REPLICA, z->comm->replica);
    im->st.n_allreduce++;
    im->st.bytes_allreduce += 2.0 * im->shard_grad_n * (im->reduce16 ? 2 : sizeof(float));
  }
  if (z->comm->size > 1 && im->repl_grad_n > 0) {
    reduce_grads_over(z, z->grads + im->repl_grad_off, im->repl_grad_n, VLM_GROUP_WORLD,
                      z->comm->world);
    im->st.n_allreduce++;
    im->st.bytes_allreduce += 2.0 * im->repl_grad_n * (im->reduce16 ? 2 : sizeof(float));
  }
  rt_watchdog_disarm();
  im->st.t_reduce += vlm_now() - t0;
}

double zero_grad_norm_sq(const zero_state *z) {
  const zimpl *im = IMPL(z);
  double sharded = z->ops->sum_squares(z->grads, im->shard_grad_n);
  if (z->comm->S > 1) MPI_Allreduce(MPI_IN_PLACE, &sharded, 1, MPI_DOUBLE, MPI_SUM, z->comm->shard);
  return sharded + z->ops->sum_squares(z->grads + im->repl_grad_off, im->repl_grad_n);
}

int zero_gather_to_root(zero_state *z) {
  registry *reg = z->reg;
  const vlm_comms *c = z->comm;
  int fail = 0;
  if (c->rank == 0 && !reg->params) {
    reg->params = vlm_alloc((size_t)reg->n_params * sizeof(float), "gathered parameters");
    fail = reg->params == NULL;
  }
  MPI_Bcast(&fail, 1, MPI_INT, 0, c->world);
  if (fail) VLM_FAIL("cannot allocate the full parameters on rank 0");
  if (c->r != 0) return 0; /* replica 0 holds everything needed */
  zero_params_to_host(z); /* MPI reads the host mirror (the shards themselves on the CPU) */
  float *buf = NULL;
  long max_chunk = 0;
  for (int i = 0; i < reg->n; i++)
    if (z->sh[i].sharded && z->sh[i].chunk > max_chunk) max_chunk = z->sh[i].chunk;
  if (c->s == 0 && max_chunk > 0) {
    buf = vlm_alloc((size_t)max_chunk * c->S * sizeof(float), "gather buffer");
    if (!buf) fail = 1;
  }
  MPI_Bcast(&fail, 1, MPI_INT, 0, c->shard);
  if (fail) VLM_FAIL("cannot allocate the gather buffer");
  for (int i = 0; i < reg->n; i++) {
    const shard_info *sh = &z->sh[i];
    float *dst = c->s == 0 ? reg->params + reg->p[i].offset : NULL;
    if (!sh->sharded) {
      if (c->s == 0) memcpy(dst, z->hparams + sh->off, (size_t)reg->p[i].numel * sizeof(float));
      continue;
    }
    MPI_Gather(z->hparams + sh->off, (int)sh->chunk, MPI_FLOAT, buf, (int)sh->chunk, MPI_FLOAT, 0,
               c->shard);
    if (c->s == 0) memcpy(dst, buf, (size_t)reg->p[i].numel * sizeof(float));
  }
  vlm_free(buf);
  return 0;
}

/* ---- host access and ranges for checkpoint I/O -------------------------- */

void zero_params_to_host(zero_state *z) {
  if (z->hparams != z->params)
    z->ops->download(z->hparams, z->params, (size_t)z->n_local * sizeof(float));
}

void zero_params_to_device(zero_state *z) {
  if (z->hparams != z->params)
    z->ops->upload(z->params, z->hparams, (size_t)z->n_local * sizeof(float));
}

/* Lazily: each module's gradients are zeroed when its backward begins, just
 * before its kernels add into them (while the zeros are still in cache, rather
 * than one pass over all gradients here whose zeros the kernels then read back
 * from memory); zero_reduce_grads zeroes the modules no backward reached. */
void zero_clear_grads(zero_state *z) {
  memset(IMPL(z)->grad_clean, 0, (size_t)z->reg->n_modules);
}

float *zero_shard(const zero_state *z, int idx, long *lo, long *hi) {
  const shard_info *sh = &z->sh[idx];
  *lo = sh->lo;
  *hi = sh->hi;
  return z->params + sh->off;
}

const float *zero_io_range(const zero_state *z, int idx, long *lo, long *hi) {
  const shard_info *sh = &z->sh[idx];
  int writes = z->comm->r == 0 && (sh->sharded || z->comm->s == 0);
  if (!writes || sh->hi <= sh->lo) {
    *lo = *hi = sh->lo;
    return NULL;
  }
  *lo = sh->lo;
  *hi = sh->hi;
  return z->hparams + sh->off;
}

float *zero_local_range(zero_state *z, int idx, long *lo, long *hi) {
  const shard_info *sh = &z->sh[idx];
  *lo = sh->lo;
  *hi = sh->hi;
  return z->hparams + sh->off;
}

float *zero_local_grad_range(const zero_state *z, float *base, int idx, long *lo, long *hi) {
  const shard_info *sh = &z->sh[idx];
  *lo = sh->lo;
  *hi = sh->hi;
  return sh->goff < 0 ? NULL : base + sh->goff;
}

/* bytes of zeroed backend memory (at least 2), NULL on failure */
static void *balloc_bytes(const vlm_backend *ops, size_t bytes, const char *what) {
  if (bytes < 2) bytes = 2;
  float *p = balloc(ops, (long)((bytes + sizeof(float) - 1) / sizeof(float)), what);
  return p;
}

int zero_set_comm_types(zero_state *z, int gather_bf16, int reduce_bf16) {
  zimpl *im = IMPL(z);
  if (!im->coll) return 0; /* MPI path or one rank: fp32, as before */
  if (!z->ops->to_bf16 || !z->ops->from_bf16)
    VLM_FAIL("the %s backend has collectives but no bf16 conversions", z->ops->name);
  const size_t S = (size_t)z->comm->S;
  if (gather_bf16 && !im->gather16 && im->max_pack > 0) {
    im->send16 = balloc_bytes(z->ops, (size_t)im->max_pack * 2, "bf16 gather send buffer");
    im->stage16 = balloc_bytes(z->ops, S * (size_t)im->max_pack * 2, "bf16 gather staging");
    if (!im->send16 || !im->stage16) VLM_FAIL("cannot allocate the bf16 gather buffers");
    im->bytes16 += (1 + S) * (size_t)im->max_pack * 2;
  }
  im->gather16 = gather_bf16 != 0;
  if (reduce_bf16 && !im->reduce16) {
    long n = (long)S * im->max_gpack;
    if (im->shard_grad_n > n) n = im->shard_grad_n;
    if (im->repl_grad_n > n) n = im->repl_grad_n;
    im->red16 = balloc_bytes(z->ops, (size_t)n * 2, "bf16 gradient reduction buffer");
    im->grecv16 = balloc_bytes(z->ops, (size_t)im->max_gpack * 2, "bf16 reduce-scatter receive");
    if (!im->red16 || !im->grecv16) VLM_FAIL("cannot allocate the bf16 reduction buffers");
    im->bytes16 += (size_t)(n + im->max_gpack) * 2;
  }
  im->reduce16 = reduce_bf16 != 0;
  return 0;
}

void zero_get_stats(const zero_state *z, zero_stats *st) { *st = IMPL(z)->st; }
void zero_reset_stats(zero_state *z) { memset(&IMPL(z)->st, 0, sizeof IMPL(z)->st); }

size_t zero_buffer_bytes(const zero_state *z) {
  const zimpl *im = IMPL(z);
  size_t n = (size_t)im->n_slots * im->max_full + (size_t)z->comm->S * im->max_pack;
  if (im->max_gpack > 0) n += (size_t)im->max_full + (size_t)(z->comm->S + 1) * im->max_gpack;
  return n * sizeof(float) + im->bytes16;
}
