/* modules/optimizer.h: AdamW over the trainable parameters, with per-group
 * learning rate and weight decay, global-norm clipping and the learning-rate
 * schedule. It works on this rank's shards only (modules/zero.h): the moments
 * are two flat buffers laid out like the local gradient shards, in the memory
 * of the shards' backend (z->ops), which runs every step, norm and scaling. */
#ifndef VLM_MODULES_OPTIMIZER_H
#define VLM_MODULES_OPTIMIZER_H

#include "io/train_config.h"
#include "modules/registry.h"
#include "modules/zero.h"

typedef struct {
  const vlm_backend *ops;
  float *m, *v;   /* [n_trainable] each, backend memory */
  float *hm, *hv; /* host mirrors for checkpoint I/O (== m, v when not on_device) */
  long n;
  long step;    /* optimizer steps taken */
  double beta1, beta2, eps;
} adamw_state;

int adamw_init(adamw_state *s, const zero_state *z, const train_config *t);
void adamw_free(adamw_state *s);
/* Copies the moments into the host mirrors / the mirrors into the moments
 * (around checkpoint I/O; no-ops when the backend is the host). */
void adamw_to_host(const adamw_state *s);
void adamw_to_device(const adamw_state *s);

/* Learning-rate multiplier of the schedule at 0-based optimizer step `step`. */
double schedule_factor(const train_config *t, long step);

/* Global gradient norm across all shards (before clipping; same on every rank). */
double grad_global_norm(const zero_state *z);
/* The factor that brings the gradient norm to at most max_norm (HF/torch
 * clip_grad_norm_: max_norm / (norm + 1e-6) when below 1, else 1; max_norm <= 0: 1). */
double grad_clip_coef(double norm, double max_norm);
/* One AdamW step of this rank's part of every trainable parameter, on the gradients
 * times g_scale (grad_clip_coef: clipping is fused into the step, the gradient
 * buffers are left as they are): lr = group lr * factor, the group's weight decay. */
void adamw_apply(adamw_state *s, zero_state *z, double factor, double g_scale);

#endif
