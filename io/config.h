/* io/config.h: the Monkey-format model configuration (HF config.json) as a C
 * struct, with every derived dimension computed once. Nothing about the model's
 * size is hard-coded elsewhere: every dimension comes from here. */
#ifndef VLM_IO_CONFIG_H
#define VLM_IO_CONFIG_H

typedef struct {
  int width, layers, heads, patch_size;
  double mlp_ratio;
  int output_dim, image_size, image_start_id, lora_repeat_num;
  /* optional keys (defaults = upstream): n_queries 256, window_size 448,
   * resampler_heads output_dim/128, lora_rank 16, lora_mlp_rank 32 */
  int n_queries, window_size, resampler_heads, lora_rank, lora_mlp_rank;
  /* derived */
  int head_dim;         /* width / heads */
  int mlp_width;        /* (int)(width * mlp_ratio) */
  int windows_per_side; /* (image_size - window_size) / window_size + 1 */
  int n_windows;        /* windows_per_side^2 (must equal lora_repeat_num) */
  int grid;             /* window_size / patch_size: patch grid side of one view */
  int n_patches;        /* grid^2 tokens per view */
  int query_grid;       /* sqrt(n_queries) */
  int img_slots;        /* (n_windows + 1) * n_queries: slots between <img> and </img> */
} visual_config;

typedef struct {
  int hidden_size, intermediate_size, kv_channels, num_attention_heads, num_hidden_layers;
  double layer_norm_epsilon, rotary_emb_base, rotary_pct;
  int seq_length, vocab_size, tie_word_embeddings;
  visual_config visual;
  /* derived */
  int head_dim;    /* hidden_size / num_attention_heads (== kv_channels) */
  int ffn;         /* intermediate_size / 2: SwiGLU branch width */
  int rotary_dim;  /* (int)(head_dim * rotary_pct), even */
  int img_end_id;  /* image_start_id + 1 */
  int img_pad_id;  /* image_start_id + 2 */
  int eos_id;      /* <|endoftext|>: 151643 when inside the vocabulary, else image_start_id - 1 */
} monkey_config;

/* Parses and validates a Monkey-format config.json; errors name the file and key. */
int monkey_config_load(monkey_config *c, const char *path);
/* Same from a JSON text already in memory; `what` names its origin in errors. */
int monkey_config_parse(monkey_config *c, const char *json_text, const char *what);
/* Writes a config.json holding every key (optional visual keys included). */
int monkey_config_write(const monkey_config *c, const char *path);

/* Added by io: reads a whole (small, text) file into a NUL-terminated buffer
 * from malloc (free() it); *len gets its length (may be NULL). Errors name the
 * file. Used for config files and for copying config.json into a model dir. */
int config_read_file(const char *path, char **text, long *len);
/* Added by io: writes buf[n] to PATH.tmp, fsyncs, renames it to PATH and
 * fsyncs the directory: PATH is never left half-written. */
int config_write_file(const char *path, const char *buf, long n);

#endif
