/* io/weights.h: moves a model's parameters between the registry and a HF model
 * directory (config.json + model.safetensors, or shards listed in
 * model.safetensors.index.json). Loading validates every tensor against the
 * registry (name, dtype, shape) and reports all missing and unexpected names at
 * once. LoRA tensors absent from the checkpoint (a Qwen-VL checkpoint has none)
 * are initialised as upstream does and counted. */
#ifndef VLM_IO_WEIGHTS_H
#define VLM_IO_WEIGHTS_H

#include "modules/registry.h"

typedef struct {
  long n_loaded;       /* tensors read from files */
  long n_lora_init;    /* LoRA tensors absent and initialised */
  int n_files;         /* safetensors files read */
} weights_load_stats;

/* registry must be allocated. seed drives the LoRA initialisation. */
int weights_load_hf_dir(registry *r, const char *dir, unsigned long seed, weights_load_stats *st);
/* Where tensor idx goes on this rank: the pointer for element *lo, and the
 * range [*lo, *hi) of the flattened tensor (zero_local_range has this shape). */
typedef float *(*weights_range_fn)(void *ctx, int idx, long *lo, long *hi);
/* Same checks, but each tensor's range goes where `range` says: a ZeRO-3 rank
 * reads only its shards and never holds the whole model. */
int weights_load_hf_dir_ranges(registry *r, const char *dir, unsigned long seed,
                               weights_load_stats *st, weights_range_fn range, void *ctx);
/* Writes DIR/config.json (copied from config_path) and DIR/model.safetensors (fp32). */
int weights_save_hf_dir(const registry *r, const char *dir, const char *config_path);

#endif
