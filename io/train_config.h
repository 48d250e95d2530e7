/* io/train_config.h: the training configuration (JSON). Where DeepSpeed has a
 * key for a setting we use DeepSpeed's name and meaning, so that users bring
 * their ds_config; vlmtrain's own keys cover the rest. Unknown keys are an error
 * naming the key path; DeepSpeed keys that vlmtrain does not use are reported
 * as warnings. Defaults are listed in docs/config.md. */
#ifndef VLM_IO_TRAIN_CONFIG_H
#define VLM_IO_TRAIN_CONFIG_H

#define TC_MAX_RULES 64
#define TC_MAX_GROUPS 16
#define TC_MAX_GROUP_PATTERNS 16
#define TC_PATTERN_LEN 160

typedef struct {
  char name[64];
  int n_patterns;
  char patterns[TC_MAX_GROUP_PATTERNS][TC_PATTERN_LEN];
  double lr;           /* absolute learning rate; < 0: lr_scale * optimizer lr */
  double lr_scale;     /* default 1 */
  double weight_decay; /* < 0: the optimizer's weight_decay */
} param_group_cfg;

typedef struct {
  /* DeepSpeed keys */
  int micro_batch;         /* train_micro_batch_size_per_gpu (default 1) */
  int grad_accum;          /* gradient_accumulation_steps (default 1) */
  long train_batch_size;   /* train_batch_size: 0 = not given; else must equal micro*accum*replicas */
  double grad_clip;        /* gradient_clipping (default 1.0; 0 disables) */
  int steps_per_print;     /* steps_per_print (default 1) */
  char opt_type[32];       /* optimizer.type: "AdamW" (default) */
  double lr, beta1, beta2, eps, weight_decay; /* optimizer.params: lr 1e-5, betas [0.9, 0.95], eps 1e-8, weight_decay 0.1 */
  char sched_type[32];     /* scheduler.type: "cosine" (HF get_cosine_schedule_with_warmup, default) or "constant" */
  long warmup_steps;       /* scheduler.params.warmup_num_steps (default 0) */
  double warmup_ratio;     /* scheduler.params.warmup_ratio (HF; used when warmup_num_steps absent) */
  long total_steps;        /* scheduler.params.total_num_steps (default: train_steps) */
  double num_cycles;       /* scheduler.params.num_cycles (default 0.5) */
  int zero_stage;          /* zero_optimization.stage (0..3, default 3) */
  long shard_size;         /* zero_optimization.shard_size (0 = ranks of one node) */
  long persistence_threshold; /* zero_optimization.stage3_param_persistence_threshold (1e5) */
  long max_live_parameters;   /* zero_optimization.stage3_max_live_parameters (1e9) */
  int replicate_frozen;    /* zero_optimization.replicate_frozen (ours; default false) */
  int bf16;                /* bf16.enabled (default false; the CPU path computes in fp32) */
  int comm_bf16;           /* communication_data_type: 1 = "bf16", 0 = "fp32" (default); the
                            * gradient reductions' type on the NCCL path (the CPU: fp32) */
  /* vlmtrain keys */
  long train_steps;        /* "train_steps": optimizer steps (default 100) */
  long seed;               /* "seed" (default 42): LoRA init of absent adapters, dropout */
  char preset[32];         /* "trainable" as a string: "monkey" (default), "lora-only", "full" */
  int n_rules;             /* "trainable" as a list: ordered glob rules, "!pat" freezes; last match wins */
  char rules[TC_MAX_RULES][TC_PATTERN_LEN];
  int n_groups;            /* "param_groups": ordered; a trainable parameter joins the first group that matches */
  param_group_cfg groups[TC_MAX_GROUPS];
  int recompute_vit, recompute_llm; /* "recompute": {"vit": true, "llm": false} */
  int shuffle;             /* "data": {"shuffle": true, "seed": 1234} */
  long data_seed;
  int read_collective;     /*   "read_mode": "independent" (default, measured faster) | "collective" */
  long ckpt_every;         /* "checkpoint": {"every_steps": 0 (only at the end), */
  int ckpt_keep;           /*   "keep": 3 (last K checkpoints; 0 keeps all), */
  char ckpt_dir[1024];     /*   "dir": "" (RUNDIR/checkpoints)} */
  double watchdog_timeout; /* "watchdog": {"timeout_s": 600}: abort when a collective waits longer (0: off) */
  char *json_text;         /* the whole file, kept for checkpoints; freed by train_config_free */
} train_config;

/* Defaults for every field (what an empty "{}" gives). */
void train_config_defaults(train_config *t);
/* Parses a training config file; errors name the file and key. */
int train_config_load(train_config *t, const char *path);
int train_config_parse(train_config *t, const char *json_text, const char *what);
void train_config_free(train_config *t);

#endif
