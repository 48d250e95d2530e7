/* tests/io/test_config.c: unit tests of io/config.c and io/train_config.c.
 * Model configs: the three shipped configs parse, the derived sizes of the
 * real Monkey config are upstream's, write + load round-trips, and each bad
 * config is rejected with a message naming the key. Training configs: the
 * defaults, a vlmtrain config using every key, DeepSpeed/HF configs with "auto"
 * and unused keys (warnings only), and each bad config rejected with a message
 * naming the key. Usage: test_config SOURCE_DIR (defaults to $VLM_SOURCE_DIR). */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/vlm.h"
#include "io/config.h"
#include "io/train_config.h"

static int n_pass, n_fail;

static void check(int ok, const char *what) {
  if (ok) n_pass++;
  else n_fail++;
  printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  fflush(stdout);
}

/* The call fails and its message contains every one of the substrings. */
static void check_error(int rc, const char *what, const char *const *subs) {
  int ok = rc != 0;
  const char *msg = vlm_last_error();
  for (int i = 0; ok && subs[i]; i++) ok = strstr(msg, subs[i]) != NULL;
  if (ok) n_pass++;
  else n_fail++;
  printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  printf("       -> %s\n", rc != 0 ? msg : "(no error)");
  fflush(stdout);
}
#define EXPECT_ERROR(rc, what, ...)                       \
  do {                                                    \
    const char *const _subs[] = {__VA_ARGS__, NULL};      \
    check_error((rc), (what), _subs);                     \
  } while (0)

static char g_src[1024];
static char *g_monkey_text;

/* ---- model config ------------------------------------------------------ */

/* monkey.json with one change applied by `edit`, parsed as "bad.json". */
typedef void (*edit_fn)(cJSON *root);
static int parse_edited(edit_fn edit, monkey_config *c) {
  cJSON *root = cJSON_Parse(g_monkey_text);
  edit(root);
  char *text = cJSON_Print(root);
  cJSON_Delete(root);
  int rc = monkey_config_parse(c, text, "bad.json");
  cJSON_free(text);
  return rc;
}
static cJSON *vis(cJSON *root) { return cJSON_GetObjectItem(root, "visual"); }
static void set_num(cJSON *o, const char *k, double x) {
  cJSON_DeleteItemFromObject(o, k);
  cJSON_AddNumberToObject(o, k, x);
}
static void e_no_hidden(cJSON *r) { cJSON_DeleteItemFromObject(r, "hidden_size"); }
static void e_hidden_str(cJSON *r) {
  cJSON_DeleteItemFromObject(r, "hidden_size");
  cJSON_AddStringToObject(r, "hidden_size", "4096");
}
static void e_hidden_frac(cJSON *r) { set_num(r, "hidden_size", 4096.5); }
static void e_no_visual(cJSON *r) { cJSON_DeleteItemFromObject(r, "visual"); }
static void e_visual_num(cJSON *r) {
  cJSON_DeleteItemFromObject(r, "visual");
  cJSON_AddNumberToObject(r, "visual", 1);
}
static void e_no_vheads(cJSON *r) { cJSON_DeleteItemFromObject(vis(r), "heads"); }
static void e_vheads_15(cJSON *r) { set_num(vis(r), "heads", 15); }
static void e_kv_100(cJSON *r) { set_num(r, "kv_channels", 100); }
static void e_heads_30(cJSON *r) { set_num(r, "num_attention_heads", 30); }
static void e_inter_odd(cJSON *r) { set_num(r, "intermediate_size", 22017); }
static void e_tie(cJSON *r) {
  cJSON_DeleteItemFromObject(r, "tie_word_embeddings");
  cJSON_AddTrueToObject(r, "tie_word_embeddings");
}
static void e_tie_num(cJSON *r) { set_num(r, "tie_word_embeddings", 0); }
static void e_nq_200(cJSON *r) { set_num(vis(r), "n_queries", 200); }
static void e_lrn_6(cJSON *r) { set_num(vis(r), "lora_repeat_num", 6); }
static void e_win_450(cJSON *r) { set_num(vis(r), "window_size", 450); }
static void e_rh_30(cJSON *r) { set_num(vis(r), "resampler_heads", 30); }
static void e_outdim_64(cJSON *r) { set_num(vis(r), "output_dim", 64); }
static void e_isi_top(cJSON *r) { set_num(vis(r), "image_start_id", 151934); }
static void e_rot_odd(cJSON *r) { set_num(r, "rotary_pct", 0.0234375); }
static void e_img_small(cJSON *r) { set_num(vis(r), "image_size", 300); }
static void e_width_neg(cJSON *r) { set_num(vis(r), "width", -1664); }
static void e_eps_str(cJSON *r) {
  cJSON_DeleteItemFromObject(r, "layer_norm_epsilon");
  cJSON_AddStringToObject(r, "layer_norm_epsilon", "1e-6");
}
static void e_mlp_zero(cJSON *r) { set_num(vis(r), "mlp_ratio", 0); }
static void e_unknown_ok(cJSON *r) {
  cJSON_AddStringToObject(r, "transformers_version", "4.32.0");
  cJSON_AddNumberToObject(vis(r), "some_future_key", 1); /* a warning */
}
static void e_1344(cJSON *r) { /* 1344 = 3 x 448: 9 windows, so lora_repeat_num 9 */
  set_num(vis(r), "image_size", 1344);
  set_num(vis(r), "lora_repeat_num", 9);
}

static void test_model_configs(void) {
  monkey_config c, c2, t, s;
  char path[1200];
  snprintf(path, sizeof path, "%s/configs/monkey.json", g_src);
  check(monkey_config_load(&c, path) == 0, "configs/monkey.json parses");
  snprintf(path, sizeof path, "%s/configs/tiny.json", g_src);
  check(monkey_config_load(&t, path) == 0, "configs/tiny.json parses");
  snprintf(path, sizeof path, "%s/configs/small.json", g_src);
  check(monkey_config_load(&s, path) == 0, "configs/small.json parses");

  const visual_config *v = &c.visual;
  check(v->head_dim == 104 && v->mlp_width == 8192 && v->n_windows == 4 && v->grid == 32 &&
            v->img_slots == 1280 && c.head_dim == 128 && c.ffn == 11008,
        "monkey: ViT head 104, MLP 8192, 4 windows, grid 32, 1280 slots, LLM head 128, ffn 11008");
  check(v->windows_per_side == 2 && v->n_patches == 1024 && v->query_grid == 16 &&
            v->n_queries == 256 && v->window_size == 448 && v->resampler_heads == 32 &&
            v->lora_rank == 16 && v->lora_mlp_rank == 32 && c.rotary_dim == 128,
        "monkey: optional visual keys take upstream's defaults; rotary dim 128");
  check(c.eos_id == 151643 && c.img_end_id == 151858 && c.img_pad_id == 151859 &&
            c.tie_word_embeddings == 0 && c.vocab_size == 151936 && c.layer_norm_epsilon == 1e-6,
        "monkey: token ids eos 151643, </img> 151858, <imgpad> 151859");
  check(t.eos_id == 508 && t.img_end_id == 510 && t.img_pad_id == 511 && t.visual.grid == 4 &&
            t.visual.img_slots == 80 && t.visual.head_dim == 12 && t.visual.mlp_width == 96 &&
            t.ffn == 88 && t.head_dim == 16 && t.visual.query_grid == 4,
        "tiny: eos 508 (image_start_id - 1), grid 4, 80 slots, ViT head 12, ffn 88");
  check(s.visual.n_windows == 4 && s.visual.img_slots == 320 && s.visual.grid == 16 &&
            s.visual.mlp_width == 1890 && s.eos_id == 31996 && s.head_dim == 128,
        "small: 4 windows, 320 slots, grid 16, MLP int(384 * 4.9231) = 1890, eos 31996");

  check(monkey_config_write(&c, "io/monkey_written.json") == 0 &&
            monkey_config_load(&c2, "io/monkey_written.json") == 0 && memcmp(&c, &c2, sizeof c) == 0,
        "monkey_config_write + load round-trips every field");

  monkey_config b;
  check(parse_edited(e_unknown_ok, &b) == 0, "unknown top-level key accepted, unknown visual key a warning");
  check(parse_edited(e_1344, &b) == 0 && b.visual.n_windows == 9 && b.visual.img_slots == 2560,
        "image_size 1344: 3 x 3 windows with lora_repeat_num 9");

  vlm_set_quiet_errors(1);
  EXPECT_ERROR(parse_edited(e_no_hidden, &b), "missing hidden_size", "bad.json", "\"hidden_size\"", "missing");
  EXPECT_ERROR(parse_edited(e_hidden_str, &b), "hidden_size as a string", "\"hidden_size\"", "string \"4096\"");
  EXPECT_ERROR(parse_edited(e_hidden_frac, &b), "hidden_size 4096.5", "\"hidden_size\"", "integer");
  EXPECT_ERROR(parse_edited(e_no_visual, &b), "missing visual", "\"visual\"", "missing");
  EXPECT_ERROR(parse_edited(e_visual_num, &b), "visual not an object", "\"visual\"", "object", "number");
  EXPECT_ERROR(parse_edited(e_no_vheads, &b), "missing visual.heads", "\"visual.heads\"", "missing");
  EXPECT_ERROR(parse_edited(e_vheads_15, &b), "width not divisible by visual.heads", "\"visual.heads\"", "15");
  EXPECT_ERROR(parse_edited(e_kv_100, &b), "hidden != heads * kv_channels", "\"kv_channels\"", "100");
  EXPECT_ERROR(parse_edited(e_heads_30, &b), "hidden not divisible by heads", "\"num_attention_heads\"", "30");
  EXPECT_ERROR(parse_edited(e_inter_odd, &b), "odd intermediate_size", "\"intermediate_size\"", "22017");
  EXPECT_ERROR(parse_edited(e_tie, &b), "tie_word_embeddings true", "\"tie_word_embeddings\"", "not supported");
  EXPECT_ERROR(parse_edited(e_tie_num, &b), "tie_word_embeddings a number", "\"tie_word_embeddings\"", "number");
  EXPECT_ERROR(parse_edited(e_nq_200, &b), "n_queries not a square", "\"visual.n_queries\"", "200");
  EXPECT_ERROR(parse_edited(e_lrn_6, &b), "lora_repeat_num != windows", "\"visual.lora_repeat_num\"", "6", "4");
  EXPECT_ERROR(parse_edited(e_win_450, &b), "window_size not divisible by patch", "\"visual.window_size\"", "450");
  EXPECT_ERROR(parse_edited(e_rh_30, &b), "output_dim not divisible by resampler_heads", "\"visual.resampler_heads\"", "30");
  EXPECT_ERROR(parse_edited(e_outdim_64, &b), "output_dim 64 gives no default resampler_heads", "\"visual.resampler_heads\"");
  EXPECT_ERROR(parse_edited(e_isi_top, &b), "image tokens outside the vocabulary", "\"visual.image_start_id\"", "\"vocab_size\"");
  EXPECT_ERROR(parse_edited(e_rot_odd, &b), "odd rotary dimension", "\"rotary_pct\"", "even");
  EXPECT_ERROR(parse_edited(e_img_small, &b), "image_size below window_size", "\"visual.image_size\"", "300");
  EXPECT_ERROR(parse_edited(e_width_neg, &b), "negative width", "\"visual.width\"", "-1664");
  EXPECT_ERROR(parse_edited(e_eps_str, &b), "layer_norm_epsilon a string", "\"layer_norm_epsilon\"", "string");
  EXPECT_ERROR(parse_edited(e_mlp_zero, &b), "mlp_ratio 0", "\"visual.mlp_ratio\"", "> 0");
  EXPECT_ERROR(monkey_config_parse(&b, "{\"hidden_size\": 64,", "trunc.json"), "truncated JSON", "trunc.json", "invalid JSON");
  EXPECT_ERROR(monkey_config_parse(&b, "[1, 2]", "list.json"), "top level a list", "list.json", "object");
  EXPECT_ERROR(monkey_config_parse(&b, "{\"hidden_size\": 1, \"hidden_size\": 2}", "dup.json"), "duplicate key", "\"hidden_size\"", "duplicate");
  EXPECT_ERROR(monkey_config_load(&b, "io/no_such_config.json"), "missing file", "io/no_such_config.json", "cannot open");
  vlm_set_quiet_errors(0);
}

/* ---- training config --------------------------------------------------- */

static void test_train_configs(void) {
  train_config t;
  char path[1200];

  check(train_config_parse(&t, "{}", "empty.json") == 0 && t.micro_batch == 1 &&
            t.grad_accum == 1 && t.train_batch_size == 0 && t.grad_clip == 1.0 &&
            t.steps_per_print == 1 && strcmp(t.opt_type, "AdamW") == 0 && t.lr == 1e-5 &&
            t.beta1 == 0.9 && t.beta2 == 0.95 && t.eps == 1e-8 && t.weight_decay == 0.1 &&
            strcmp(t.sched_type, "cosine") == 0 && t.warmup_steps == 0 && t.warmup_ratio == 0 &&
            t.total_steps == 100 && t.num_cycles == 0.5 && t.zero_stage == 3 && t.shard_size == 0 &&
            t.persistence_threshold == 100000 && t.max_live_parameters == 1000000000 &&
            t.replicate_frozen == 0 && t.bf16 == 0 && t.comm_bf16 == 0 && t.train_steps == 100 &&
            t.seed == 42 && strcmp(t.preset, "monkey") == 0 && t.n_rules == 0 && t.n_groups == 0 &&
            t.recompute_vit == 1 && t.recompute_llm == 0 && t.shuffle == 1 && t.data_seed == 1234 &&
            t.json_text && strcmp(t.json_text, "{}") == 0,
        "\"{}\" gives every documented default, json_text kept");
  train_config_free(&t);

  const char *full =
      "{\"train_micro_batch_size_per_gpu\": 2, \"gradient_accumulation_steps\": 4,"
      " \"train_batch_size\": 64, \"gradient_clipping\": 0.5, \"steps_per_print\": 10,"
      " \"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 2e-5, \"betas\": [0.8, 0.99],"
      "   \"eps\": 1e-6, \"weight_decay\": 0.05}},"
      " \"scheduler\": {\"type\": \"constant\", \"params\": {\"warmup_num_steps\": 7,"
      "   \"total_num_steps\": 900, \"num_cycles\": 1.5}},"
      " \"zero_optimization\": {\"stage\": 2, \"shard_size\": 4,"
      "   \"stage3_param_persistence_threshold\": 1e4, \"stage3_max_live_parameters\": 3e8,"
      "   \"replicate_frozen\": true},"
      " \"bf16\": {\"enabled\": true}, \"train_steps\": 1000, \"seed\": 7,"
      " \"trainable\": [\"transformer.h.*\", \"!*.lora_*\", \"lm_head.weight\"],"
      " \"param_groups\": [{\"name\": \"lora\", \"patterns\": [\"*lora*\"], \"lr_scale\": 10},"
      "   {\"patterns\": [\"*bias\", \"*ln_*\"], \"lr\": 3e-5, \"weight_decay\": 0}],"
      " \"recompute\": {\"vit\": false, \"llm\": true}, \"data\": {\"shuffle\": false, \"seed\": 99}}";
  int rc = train_config_parse(&t, full, "full.json");
  check(rc == 0 && t.micro_batch == 2 && t.grad_accum == 4 && t.train_batch_size == 64 &&
            t.grad_clip == 0.5 && t.steps_per_print == 10 && t.lr == 2e-5 && t.beta1 == 0.8 &&
            t.beta2 == 0.99 && t.eps == 1e-6 && t.weight_decay == 0.05 &&
            strcmp(t.sched_type, "constant") == 0 && t.warmup_steps == 7 && t.total_steps == 900 &&
            t.num_cycles == 1.5 && t.zero_stage == 2 && t.shard_size == 4 &&
            t.persistence_threshold == 10000 && t.max_live_parameters == 300000000 &&
            t.replicate_frozen == 1 && t.bf16 == 1 && t.train_steps == 1000 && t.seed == 7 &&
            t.recompute_vit == 0 && t.recompute_llm == 1 && t.shuffle == 0 && t.data_seed == 99,
        "every key of a full vlmtrain config is read");
  check(rc == 0 && t.n_rules == 3 && strcmp(t.rules[1], "!*.lora_*") == 0 && t.preset[0] == '\0' &&
            t.n_groups == 2 && strcmp(t.groups[0].name, "lora") == 0 && t.groups[0].lr < 0 &&
            t.groups[0].lr_scale == 10 && t.groups[0].weight_decay < 0 &&
            strcmp(t.groups[1].name, "group1") == 0 && t.groups[1].n_patterns == 2 &&
            strcmp(t.groups[1].patterns[1], "*ln_*") == 0 && t.groups[1].lr == 3e-5 &&
            t.groups[1].weight_decay == 0,
        "trainable rules and param_groups (lr, lr_scale, weight_decay, default name)");
  train_config_free(&t);

  check(train_config_parse(&t, "{\"communication_data_type\": \"bf16\"}", "c.json") == 0 &&
            t.comm_bf16 == 1,
        "communication_data_type \"bf16\"");
  train_config_free(&t);
  check(train_config_parse(&t, "{\"communication_data_type\": \"fp32\"}", "c.json") == 0 &&
            t.comm_bf16 == 0,
        "communication_data_type \"fp32\"");
  train_config_free(&t);

  check(train_config_parse(&t, "{\"trainable\": \"lora-only\", \"train_steps\": 500}", "p.json") == 0 &&
            strcmp(t.preset, "lora-only") == 0 && t.total_steps == 500,
        "preset string; total_num_steps defaults to train_steps");
  train_config_free(&t);

  snprintf(path, sizeof path, "%s/tests/io/ds_config_zero2.json", g_src);
  rc = train_config_load(&t, path);
  check(rc == 0 && t.zero_stage == 2 && t.steps_per_print == 100 && t.lr == 1e-5 &&
            t.beta2 == 0.95 && t.grad_accum == 1 && t.micro_batch == 1 && t.train_batch_size == 0 &&
            t.grad_clip == 1.0 && t.bf16 == 0 && strcmp(t.sched_type, "constant") == 0 &&
            t.json_text && strstr(t.json_text, "WarmupLR"),
        "Monkey's finetune/ds_config_zero2.json loads (warnings only): \"auto\" = defaults, WarmupLR = constant");
  train_config_free(&t);

  snprintf(path, sizeof path, "%s/tests/io/ds_config_hf_auto.json", g_src);
  rc = train_config_load(&t, path);
  check(rc == 0 && t.zero_stage == 3 && t.lr == 1e-5 && t.eps == 1e-8 && t.warmup_steps == 0 &&
            t.total_steps == 100 && strcmp(t.sched_type, "cosine") == 0 &&
            t.persistence_threshold == 100000,
        "HF Trainer ZeRO-3 ds_config with \"auto\" everywhere and stage3 tuning keys loads");
  train_config_free(&t);

  /* every shipped training config (configs/train*.json) must load */
  char dir[1100];
  snprintf(dir, sizeof dir, "%s/configs", g_src);
  DIR *dp = opendir(dir);
  int n_train = 0, n_ok = 0;
  for (struct dirent *de = dp ? readdir(dp) : NULL; de; de = readdir(dp)) {
    size_t L = strlen(de->d_name);
    if (strncmp(de->d_name, "train", 5) != 0 || L < 5 || strcmp(de->d_name + L - 5, ".json") != 0)
      continue;
    snprintf(path, sizeof path, "%.900s/%.250s", dir, de->d_name);
    n_train++;
    if (train_config_load(&t, path) == 0) n_ok++;
    else printf("       %s: %s\n", de->d_name, vlm_last_error());
    train_config_free(&t);
  }
  if (dp) closedir(dp);
  char what[128];
  snprintf(what, sizeof what, "every configs/train*.json loads (%d of %d)", n_ok, n_train);
  check(n_ok == n_train, what);

  vlm_set_quiet_errors(1);
  EXPECT_ERROR(train_config_parse(&t, "{\"optimizer\": {\"params\": {\"lrr\": 1}}}", "train.json"),
               "one unknown key", "train.json: unknown key \"optimizer.params.lrr\"",
               "did you mean \"optimizer.params.lr\"");
  EXPECT_ERROR(train_config_parse(&t,
                                  "{\"foo\": 1, \"optimizer\": {\"params\": {\"lrr\": 1}},"
                                  " \"data\": {\"shufle\": true}, \"param_groups\": [{\"patterns\": [\"*\"], \"lrscale\": 2}]}",
                                  "train.json"),
               "every unknown key at once", "4 unknown keys", "\"foo\"", "\"optimizer.params.lrr\"",
               "\"data.shufle\"", "\"param_groups[0].lrscale\"");
  EXPECT_ERROR(train_config_parse(&t, "{\"train_steps\": \"100\"}", "train.json"),
               "train_steps as a string", "\"train_steps\"", "string \"100\"");
  EXPECT_ERROR(train_config_parse(&t, "{\"optimizer\": {\"params\": {\"lr\": true}}}", "train.json"),
               "lr as a bool", "\"optimizer.params.lr\"", "number", "true");
  EXPECT_ERROR(train_config_parse(&t, "{\"seed\": \"auto\"}", "train.json"),
               "\"auto\" for a vlmtrain key", "\"seed\"", "only for DeepSpeed keys");
  EXPECT_ERROR(train_config_parse(&t, "{\"bf16\": {\"enabled\": 1}}", "train.json"),
               "bf16.enabled a number", "\"bf16.enabled\"", "true or false");
  EXPECT_ERROR(train_config_parse(&t, "{\"communication_data_type\": \"fp16\"}", "train.json"),
               "communication_data_type fp16", "\"communication_data_type\"", "\"fp16\"",
               "\"fp32\" or \"bf16\"");
  EXPECT_ERROR(train_config_parse(&t, "{\"optimizer\": 3}", "train.json"),
               "optimizer not an object", "\"optimizer\"", "object");
  EXPECT_ERROR(train_config_parse(&t, "{\"trainable\": \"everything\"}", "train.json"),
               "unknown preset", "\"trainable\"", "everything");
  EXPECT_ERROR(train_config_parse(&t, "{\"trainable\": []}", "train.json"),
               "empty rule list", "\"trainable\"", "empty");
  EXPECT_ERROR(train_config_parse(&t, "{\"param_groups\": [{\"patterns\": [\"*\"], \"lr\": 1, \"lr_scale\": 2}]}", "train.json"),
               "lr and lr_scale both", "param_groups[0]", "\"lr_scale\"");
  EXPECT_ERROR(train_config_parse(&t, "{\"param_groups\": [{\"name\": \"x\"}]}", "train.json"),
               "group without patterns", "\"param_groups[0].patterns\"", "missing");
  EXPECT_ERROR(train_config_parse(&t, "{\"optimizer\": {\"params\": {\"betas\": [0.9]}}}", "train.json"),
               "betas of length 1", "\"optimizer.params.betas\"", "two numbers");
  EXPECT_ERROR(train_config_parse(&t, "{\"optimizer\": {\"params\": {\"betas\": [0.9, 1.5]}}}", "train.json"),
               "beta2 out of range", "\"optimizer.params.betas[1]\"", "1.5");
  EXPECT_ERROR(train_config_parse(&t, "{\"zero_optimization\": {\"stage\": 4}}", "train.json"),
               "ZeRO stage 4", "\"zero_optimization.stage\"", "4");
  EXPECT_ERROR(train_config_parse(&t, "{\"gradient_accumulation_steps\": 0}", "train.json"),
               "zero accumulation steps", "\"gradient_accumulation_steps\"", "0");
  EXPECT_ERROR(train_config_parse(&t, "{\"train_micro_batch_size_per_gpu\": 1.5}", "train.json"),
               "fractional micro batch", "\"train_micro_batch_size_per_gpu\"", "integer");
  EXPECT_ERROR(train_config_parse(&t, "{\"scheduler\": {\"type\": \"linear\"}}", "train.json"),
               "unsupported scheduler", "\"scheduler.type\"", "linear");
  EXPECT_ERROR(train_config_parse(&t, "{\"optimizer\": {\"type\": \"SGD\"}}", "train.json"),
               "unsupported optimizer", "\"optimizer.type\"", "SGD");
  EXPECT_ERROR(train_config_parse(&t, "{\"optimizer\": {\"params\": {\"adam_w_mode\": false}}}", "train.json"),
               "adam_w_mode false", "\"optimizer.params.adam_w_mode\"", "not supported");
  EXPECT_ERROR(train_config_parse(&t, "{\"scheduler\": {\"params\": {\"warmup_num_steps\": 5, \"warmup_ratio\": 0.1}}}", "train.json"),
               "warmup steps and ratio both", "\"warmup_num_steps\"", "\"warmup_ratio\"");
  EXPECT_ERROR(train_config_parse(&t, "{\"seed\": 1, \"seed\": 2}", "train.json"),
               "duplicate key", "\"seed\"", "duplicate");
  EXPECT_ERROR(train_config_parse(&t, "{\"seed\": 1,}", "train.json"),
               "invalid JSON", "train.json", "invalid JSON", "line 1");
  EXPECT_ERROR(train_config_load(&t, "io/no_such_train.json"), "missing file",
               "io/no_such_train.json", "cannot open");
  check(t.json_text == NULL, "a failed parse leaves no json_text allocated");
  vlm_set_quiet_errors(0);
}

int main(int argc, char **argv) {
  const char *src = argc > 1 ? argv[1] : getenv("VLM_SOURCE_DIR");
  if (!src) {
    fprintf(stderr, "usage: test_config SOURCE_DIR (or set VLM_SOURCE_DIR)\n");
    return 2;
  }
  snprintf(g_src, sizeof g_src, "%s", src);
  if (mkdir("io", 0755) != 0 && errno != EEXIST) return 2;
  char path[1200];
  snprintf(path, sizeof path, "%s/configs/monkey.json", g_src);
  if (config_read_file(path, &g_monkey_text, NULL) != 0) return 2;
  test_model_configs();
  test_train_configs();
  free(g_monkey_text);
  printf("%d passed, %d failed\n", n_pass, n_fail);
  return n_fail ? 1 : 0;
}
