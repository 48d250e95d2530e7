/* io/checkpoint.h: training checkpoints as one parallel HDF5 file each
 * (docs/formats.md, "Checkpoints"). Every tensor is stored at its global shape
 * (parameters, frozen ones included, and the AdamW moments of trainable ones),
 * written collectively by the ranks that hold it, so any rank count and any
 * (R, S) layout can read it back, and so can h5py. Files are committed
 * atomically (ckpt-STEP.h5.tmp -> ckpt-STEP.h5, then the `latest` pointer);
 * the last `keep` are kept. */
#ifndef VLM_IO_CHECKPOINT_H
#define VLM_IO_CHECKPOINT_H

#include <mpi.h>

#include "modules/optimizer.h"
#include "modules/zero.h"

#define CKPT_FORMAT "vlmtrain-checkpoint"
#define CKPT_VERSION 1
#define CKPT_PREFIX "ckpt-"
#define CKPT_SUFFIX ".h5"
#define CKPT_POINTER "latest"

/* Everything besides tensors that a resume needs. */
typedef struct {
  long step;       /* optimizer steps completed */
  long epoch;      /* data order position: the next sample is order[cursor] of this epoch */
  long cursor;
  long data_seed;
  int shuffle;
  int R, S;        /* layout that wrote the file (informational) */
} ckpt_state;

/* Writes DIR/ckpt-<step>.h5 (collective over z->comm->world); then points
 * DIR/latest at it and keeps the newest `keep` checkpoints (0: all). */
int ckpt_save(const char *dir, zero_state *z, const adamw_state *opt, const ckpt_state *st,
              const char *model_config_json, const char *train_config_json, int keep);

/* Loads a checkpoint into this rank's shards (z->params, opt moments) and *st.
 * `what` is a file path, or a directory: then DIR/latest is tried first and,
 * if it fails its checks, older checkpoints newest first. Returns 0 when loaded
 * (*loaded = 1), 0 with *loaded = 0 when `what` is a directory without any
 * checkpoint, -1 when none could be loaded (each failure reported). */
int ckpt_load(const char *what, zero_state *z, adamw_state *opt, ckpt_state *st, int *loaded,
              char *loaded_path, size_t path_len);

/* Removes stale DIR/ *.tmp files (an interrupted write) at start-up. */
int ckpt_clean_dir(const char *dir, MPI_Comm comm);

#endif
