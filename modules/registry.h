/* modules/registry.h: every parameter of a Monkey model, by its upstream name
 * and shape, in one flat fp32 buffer; the gradients of the trainable ones in a
 * second flat buffer. Built from the model config alone.
 *
 * Parameters are laid out module by module (ViT stem, each ViT block with its
 * LoRA adapters, resampler with ln_post and proj, embedding, each LLM block,
 * final norm with the head),
 * so that a module is one contiguous range: the unit ZeRO-3 gathers. Trainable
 * parameters are chosen by ordered glob rules over names; each trainable
 * parameter belongs to one parameter group (own lr and weight decay). */
#ifndef VLM_MODULES_REGISTRY_H
#define VLM_MODULES_REGISTRY_H

#include "io/config.h"
#include "io/train_config.h"

#define REG_NAME_LEN 128

typedef enum {
  PARAM_WEIGHT,    /* a matrix (linear, conv, embedding, proj, query) */
  PARAM_BIAS,
  PARAM_LN_WEIGHT, /* LayerNorm gain */
  PARAM_RMS_WEIGHT,/* RMSNorm gain */
  PARAM_OTHER      /* positional tables, lora_scale */
} param_kind;

typedef struct {
  char name[REG_NAME_LEN];
  int ndim;
  long shape[4];
  long numel;
  long offset;      /* into registry.params */
  long grad_offset; /* into registry.grads; -1 when frozen */
  int trainable;
  int group;        /* index into registry.groups; -1 when frozen */
  int module;       /* index into registry.modules */
  param_kind kind;
} param_info;

typedef struct {
  char name[64];   /* e.g. "vit.block.3", "llm.block.0", "resampler" */
  long begin, end; /* element range in params */
  int first, count;/* parameter indices */
} module_info;

typedef struct {
  char name[64];
  double lr, weight_decay; /* resolved: absolute lr and decay */
  long count;              /* elements */
  int n_params;
} param_group;

typedef struct {
  param_info *p;
  int n;
  module_info *modules;
  int n_modules;
  param_group groups[TC_MAX_GROUPS];
  int n_groups;
  long n_params;    /* elements in all parameters */
  long n_trainable; /* elements in trainable parameters (= length of grads) */
  float *params;
  float *grads;
} registry;

/* Names, shapes, kinds and offsets from the config; no buffers yet, all frozen. */
int registry_build(registry *r, const monkey_config *c);
void registry_free(registry *r);
/* Index of a parameter by exact name, or -1. */
int registry_find(const registry *r, const char *name);

/* Applies the trainable selection of the training config (preset or rules;
 * a rule that matches nothing is an error) and the parameter groups (defaults
 * when none are given: HF Trainer's no-decay split). Sets grad offsets. */
int registry_select(registry *r, const train_config *t);
/* Allocates params (zeroed) and grads (zeroed, n_trainable long). */
int registry_alloc(registry *r);

/* Pointers into the flat buffers (grad: NULL when frozen). */
float *registry_param(const registry *r, int idx);
float *registry_grad(const registry *r, int idx);

/* Prints counts per part and the PEFT-like summary (trainable / total / %),
 * and per group: count, lr, decay. */
void registry_print_summary(const registry *r, const monkey_config *c);

/* Fills the parameters with upstream-style random initial values (seeded). */
void registry_init_random(registry *r, const monkey_config *c, unsigned long seed);
/* Initialises one LoRA tensor as upstream does: lora_a Kaiming-uniform
 * (bound 1/sqrt(fan_in)), lora_b zero, lora_scale 1. */
void registry_init_lora_param(registry *r, int idx, unsigned long seed);
/* The same values written to x[numel] instead of the flat buffer. */
void registry_init_lora_values(const registry *r, int idx, unsigned long seed, float *x);

#endif
