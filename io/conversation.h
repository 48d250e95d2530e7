/* io/conversation.h: one training sample from one JSON conversation: token ids,
 * labels and the image paths, following Monkey's and Qwen-VL's fine-tuning
 * preprocessing (docs/formats.md, "Real data (mkdata --json)").
 *
 * Input: a JSON list of {"id": ..., "conversations": [{"from": ROLE, "value":
 * TEXT}, ...]}. Every <img>PATH</img> in a TEXT becomes <img>, img_slots x
 * <imgpad>, </img>, and PATH is recorded (the k-th span is the sample's k-th
 * image). Two templates:
 *   CONV_MONKEY (Monkey's finetune_multitask.py): the values are tokenised one
 *     by one and concatenated, no chat template; turns alternate user,
 *     assistant by position; user turns are -100, each assistant turn's tokens
 *     are their own labels and are followed by <|endoftext|>, a target too.
 *   CONV_CHATML (Qwen-VL's finetune.py): <|im_start|>system\nSYSTEM<|im_end|>\n
 *     then <|im_start|>ROLE\nTEXT<|im_end|>\n per turn; which tokens are
 *     targets is chosen by chatml_targets (see there).
 * Image spans are never targets. Not done: Unicode NFC normalisation of the
 * text (upstream normalises; JSON that is already NFC, as nearly all is, gives
 * the same ids).
 *
 * A bad conversation is not a program error but a reason to skip a sample:
 * conv_build returns a conv_status and a one-line reason, and prints nothing. */
#ifndef VLM_IO_CONVERSATION_H
#define VLM_IO_CONVERSATION_H

#include <stddef.h>
#include <stdint.h>

#include "io/config.h"
#include "io/tokenizer.h"

typedef enum { CONV_MONKEY = 0, CONV_CHATML = 1 } conv_format;

typedef enum {
  /* Exactly Qwen-VL's finetune.py: in every turn (system and user too) the
   * <|im_start|>, the <|im_end|> and the "\n" after it are targets; in
   * assistant turns also the content. The role name and the "\n" after it,
   * and the content of system and user turns, are -100. */
  CHATML_TARGETS_QWEN = 0,
  /* Only each assistant turn's content and its <|im_end|> are targets;
   * everything else (system and user turns whole) is -100. */
  CHATML_TARGETS_ASSISTANT = 1
} chatml_targets;

typedef enum {
  CONV_OK = 0,
  CONV_BAD_JSON,         /* the element does not parse as JSON */
  CONV_BAD_CONVERSATION, /* not {"conversations": [{"from", "value"}...]}, unknown roles, ... */
  CONV_BAD_IMAGE_TAG,    /* <img> without </img>, </img> without <img>, nested <img> */
  CONV_BAD_TEXT,         /* the tokenizer refused the text (invalid UTF-8) */
  CONV_CUTS_IMAGE,       /* truncation to seq_length would cut through an image span */
  CONV_NO_TARGETS,       /* no token is a target (after truncation) */
  CONV_NO_MEMORY,
  CONV_STATUS_COUNT
} conv_status;

/* Short stable name of a status ("bad JSON", "no targets", ...). */
const char *conv_status_name(int status);

typedef struct {
  const tokenizer *tok;
  conv_format format;
  chatml_targets targets;
  char system_message[1024];
  int img_slots;
  /* ids, from the tokenizer (checked against the config by conv_options_init) */
  int32_t img_start, img_end, img_pad, eod, im_start, im_end;
} conv_options;

/* Checks the tokenizer against the model config (every id below vocab_size;
 * <img>, </img>, <imgpad> equal to image_start_id, +1, +2) and fills o.
 * system_message: ChatML's default system text (NULL: "You are a helpful
 * assistant."). Errors (common/vlm.h style) name both files' values. */
int conv_options_init(conv_options *o, const tokenizer *tok, const monkey_config *c,
                      conv_format format, chatml_targets targets, const char *system_message);

typedef struct {
  int32_t *tokens; /* n of them; grown with realloc (tokenizer.h protocol) */
  int32_t *labels; /* n of them */
  size_t n, cap, label_cap;
  char **images;     /* n_images paths, as written between the tags (malloc'd) */
  size_t *image_pos; /* token position of each image's <img> */
  int n_images, image_cap;
  int image_span; /* tokens per image span: <img> + img_slots + </img> */
  char id[80];    /* the sample's "id" as text ("" when absent), for messages */
} conv_sample;

void conv_sample_free(conv_sample *s);

/* Builds sample s (emptied first; reuse it across calls) from one JSON element
 * json[0..len). Returns a conv_status; on failure why holds the reason. */
int conv_build(const conv_options *o, const char *json, size_t len, conv_sample *s, char *why,
               size_t why_len);

/* Keeps the first seq_length tokens (images wholly after the cut are dropped
 * from s->images). Returns CONV_CUTS_IMAGE, leaving s as it was, when the cut
 * falls inside an image span; CONV_NO_TARGETS when no target is left.
 * *truncated is set to 1 when tokens were cut. */
int conv_truncate(conv_sample *s, int seq_length, int *truncated, char *why, size_t why_len);

/* Number of labels that are not -100. */
long conv_count_targets(const conv_sample *s);

/* Splits the text of a JSON file whose top level is an array into the byte
 * ranges [start[i], end[i]) of its elements (leading BOM and whitespace
 * allowed). Only the nesting is checked here; each element is parsed later on
 * its own. Errors name the file, line and column. *start and *end are malloc'd. */
int conv_split_array(const char *path, const char *text, size_t len, size_t **start, size_t **end,
                     long *n);

#endif
