/* io/model_h5.h: vlmtrain's model file (HDF5, docs/formats.md "Model files"):
 * every tensor of a Monkey model as a float32 dataset /tensors/<upstream name>
 * at its global shape with a split-independent checksum, and the model config
 * JSON text as the root attribute `model_config`. `vlmtrain import` writes one
 * from a HF safetensors directory, `vlmtrain export` writes a HF directory back
 * (fp32 or bf16, sharded, or only the trained tensors), and the trainer loads
 * one with model_h5_load / model_h5_load_ranges. The reader accepts any file
 * with that layout whose `format` is "vlmtrain-model" or "vlmtrain-checkpoint",
 * so checkpoints (same /tensors datasets and attributes) export and load too.
 *
 * Every function taking a communicator is collective over it (io/h5util.h);
 * each rank reads, converts and writes only its share of every tensor. */
#ifndef VLM_IO_MODEL_H5_H
#define VLM_IO_MODEL_H5_H

#include <mpi.h>

#include "io/config.h"
#include "io/h5util.h"
#include "io/safetensors.h"
#include "modules/registry.h"

#define MODEL_H5_FORMAT "vlmtrain-model"
#define MODEL_H5_VERSION 1
#define MODEL_H5_CHECKPOINT_FORMAT "vlmtrain-checkpoint" /* also accepted by the reader */
#define MODEL_H5_GROUP "/tensors"
#define MODEL_H5_CONFIG_ATTR "model_config"

/* An open model (or checkpoint) file, validated: attributes, config, and every
 * registry tensor present as float32 at its shape, nothing else in /tensors. */
typedef struct {
  h5u_file f;
  char format[64];
  long long version;
  char *config_json; /* the root attribute model_config (malloc'd) */
  monkey_config cfg; /* parsed from it */
  registry reg;      /* built from cfg: names and shapes, no buffers */
} model_h5;

int model_h5_open(model_h5 *m, const char *path, MPI_Comm comm);
/* Each rank reads elements [lo, hi) of tensor idx (registry order) into dst;
 * the checksum is verified (ranges may overlap; together they cover it). */
int model_h5_read(model_h5 *m, int idx, long lo, long hi, float *dst);
int model_h5_close(model_h5 *m);

/* Where tensor idx goes (load) or comes from (save) on this rank: returns the
 * pointer for element *lo and sets [*lo, *hi); an empty range may return NULL.
 * zero_local_range / zero_io_range (modules/zero.h) have this shape, with the
 * zero_state as ctx. */
typedef float *(*model_h5_range_fn)(void *ctx, int idx, long *lo, long *hi);

/* Loads every tensor of r (built from the same config: names and shapes must
 * match the file's) into the ranges `range` gives each rank. */
int model_h5_load_ranges(const registry *r, const char *path, MPI_Comm comm, model_h5_range_fn range,
                         void *ctx);
/* One process: every tensor into r->params (registry_alloc'd). MPI must be
 * initialised; the file is opened on MPI_COMM_SELF, so every rank may call it. */
int model_h5_load(registry *r, const char *path);

/* Writing, for model files and checkpoints: the root attributes (format,
 * version, model_config), then every tensor of r as /tensors/<name> written by
 * the disjoint ranges `range` gives (each element written by exactly one rank),
 * with its checksum. */
int model_h5_write_header(h5u_file *f, const char *format, long version, const char *config_json);
int model_h5_write_tensors(h5u_file *f, const registry *r, model_h5_range_fn range, void *ctx);
/* Writes r->params (complete on every rank; each rank writes an even share) to
 * PATH atomically (PATH.tmp, then rename). */
int model_h5_save(const registry *r, const char *path, const char *config_json, MPI_Comm comm);

/* `vlmtrain import`: HF_DIR (config.json + model.safetensors or index + shards,
 * F32/BF16/F16) to OUT (written as OUT.tmp, renamed at the end). Names and
 * shapes are checked against the registry of HF_DIR/config.json; LoRA tensors
 * absent from HF_DIR are initialised as the trainer does (seed). */
int model_h5_import(const char *hf_dir, const char *out_path, unsigned long seed, MPI_Comm comm);

typedef struct {
  st_dtype dtype;          /* ST_F32 or ST_BF16 */
  long shard_bytes;        /* largest shard's tensor bytes (a bigger tensor gets its own shard) */
  const char *train_json;  /* non-NULL: only the tensors this training config trains, one file */
} model_h5_export_opts;

/* `vlmtrain export`: a model or checkpoint file to a new HF directory OUT_DIR
 * (config.json, model.safetensors or model-0000i-of-0000n.safetensors +
 * model.safetensors.index.json; or trained.safetensors with train_json). OUT_DIR
 * must not exist or be empty; it is written as OUT_DIR.tmp and renamed. */
int model_h5_export(const char *path, const char *out_dir, const model_h5_export_opts *o,
                    MPI_Comm comm);

#endif
