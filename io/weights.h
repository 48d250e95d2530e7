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
/* Writes DIR/config.json (copied from config_path) and DIR/model.safetensors (fp32). */
int weights_save_hf_dir(const registry *r, const char *dir, const char *config_path);

#endif
