/* io/conversation.c: JSON conversations to token ids, labels and image paths
 * (io/conversation.h), the templates of Monkey's finetune_multitask.py and of
 * Qwen-VL's finetune.py, written from their documented behaviour. Also splits a
 * training JSON file into its elements so that each rank parses only its own.
 * It does not read images and does not write datasets (app/cmd_mkdata.c). */
#define _POSIX_C_SOURCE 200809L
#include "io/conversation.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/vlm.h"

#define LABEL_IGNORE (-100)

static const char *const STATUS_NAMES[CONV_STATUS_COUNT] = {
    [CONV_OK] = "ok",
    [CONV_BAD_JSON] = "bad JSON",
    [CONV_BAD_CONVERSATION] = "bad conversation",
    [CONV_BAD_IMAGE_TAG] = "bad image tag",
    [CONV_BAD_TEXT] = "text the tokenizer refuses",
    [CONV_CUTS_IMAGE] = "truncation cuts an image",
    [CONV_NO_TARGETS] = "no targets",
    [CONV_NO_MEMORY] = "out of memory",
};

const char *conv_status_name(int status) {
  return status >= 0 && status < CONV_STATUS_COUNT ? STATUS_NAMES[status] : "?";
}

static int skip_why(char *why, size_t n, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int skip_why(char *why, size_t n, int status, const char *fmt, ...) {
  if (why && n) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
  }
  return status;
}

/* ------------------------------------------------------------------------------
 * Options: the tokenizer's special ids, checked against the model config. */

static int special(const tokenizer *t, const char *text, const char *ranks_hint, int32_t *id) {
  int v = tokenizer_special_id(t, text);
  if (v < 0) VLM_FAIL("tokenizer%s has no special token %s", ranks_hint, text);
  *id = v;
  return 0;
}

int conv_options_init(conv_options *o, const tokenizer *tok, const monkey_config *c,
                      conv_format format, chatml_targets targets, const char *system_message) {
  memset(o, 0, sizeof *o);
  o->tok = tok;
  o->format = format;
  o->targets = targets;
  o->img_slots = c->visual.img_slots;
  if (!system_message) system_message = "You are a helpful assistant.";
  if (strlen(system_message) >= sizeof o->system_message)
    VLM_FAIL("system message too long (%zu bytes, at most %zu)", strlen(system_message),
             sizeof o->system_message - 1);
  snprintf(o->system_message, sizeof o->system_message, "%s", system_message);
  VLM_CHECK(special(tok, "<img>", "", &o->img_start));
  VLM_CHECK(special(tok, "</img>", "", &o->img_end));
  VLM_CHECK(special(tok, "<imgpad>", "", &o->img_pad));
  VLM_CHECK(special(tok, "<|endoftext|>", "", &o->eod));
  VLM_CHECK(special(tok, "<|im_start|>", "", &o->im_start));
  VLM_CHECK(special(tok, "<|im_end|>", "", &o->im_end));
  const int vis = c->visual.image_start_id;
  if (o->img_start != vis || o->img_end != c->img_end_id || o->img_pad != c->img_pad_id)
    VLM_FAIL(
        "the tokenizer's image tokens <img> %d, </img> %d, <imgpad> %d do not match the model "
        "config's visual.image_start_id %d (+1 = %d, +2 = %d): the ranks file and the config "
        "belong to different models (for Qwen's 151643 ranks, image_start_id is 151857; in "
        "general it is the number of ranks + 214)",
        o->img_start, o->img_end, o->img_pad, vis, c->img_end_id, c->img_pad_id);
  int nv = tokenizer_n_vocab(tok);
  if (nv > c->vocab_size)
    VLM_FAIL(
        "the tokenizer has %d ids (ranks + special tokens), more than the model config's "
        "vocab_size %d",
        nv, c->vocab_size);
  if (o->img_slots < 1) VLM_FAIL("model config has img_slots %d", o->img_slots);
  return 0;
}

/* ------------------------------------------------------------------------------
 * The sample under construction: tokens and labels grow together. */

void conv_sample_free(conv_sample *s) {
  free(s->tokens);
  free(s->labels);
  for (int k = 0; k < s->n_images; k++) free(s->images[k]);
  free(s->images);
  free(s->image_pos);
  memset(s, 0, sizeof *s);
}

static void sample_reset(conv_sample *s) {
  for (int k = 0; k < s->n_images; k++) free(s->images[k]);
  s->n_images = 0;
  s->n = 0;
  s->id[0] = '\0';
}

/* Labels hold as many entries as the token buffer can. */
static int labels_fit(conv_sample *s) {
  if (s->label_cap >= s->cap) return 0;
  int32_t *l = realloc(s->labels, s->cap * sizeof *l);
  if (!l) return -1;
  s->labels = l;
  s->label_cap = s->cap;
  return 0;
}

static int reserve(conv_sample *s, size_t more) {
  if (s->n + more > s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 256;
    while (cap < s->n + more) cap *= 2;
    int32_t *t = realloc(s->tokens, cap * sizeof *t);
    if (!t) return -1;
    s->tokens = t;
    s->cap = cap;
  }
  return labels_fit(s);
}

static int emit_id(conv_sample *s, int32_t id, int target) {
  if (reserve(s, 1)) return -1;
  s->tokens[s->n] = id;
  s->labels[s->n] = target ? id : LABEL_IGNORE;
  s->n++;
  return 0;
}

typedef struct {
  const conv_options *o;
  conv_sample *s;
  char *why;
  size_t wn;
} builder;

/* Tokenises text[0..len) (special-token strings become their ids when
 * `specials`), appending; labels are the ids when target, else -100. */
static int emit_text(builder *b, const char *text, size_t len, int target, int specials) {
  if (len == 0) return CONV_OK;
  conv_sample *s = b->s;
  size_t old = s->n;
  /* a refused text skips the sample: keep the tokenizer's message as the reason, unprinted */
  vlm_set_quiet_errors(1);
  int rc = specials ? tokenizer_encode_special(b->o->tok, text, len, &s->tokens, &s->n, &s->cap)
                    : tokenizer_encode(b->o->tok, text, len, &s->tokens, &s->n, &s->cap);
  vlm_set_quiet_errors(0);
  if (rc != 0) {
    s->n = old;
    return skip_why(b->why, b->wn, CONV_BAD_TEXT, "%s", vlm_last_error());
  }
  if (labels_fit(s)) return skip_why(b->why, b->wn, CONV_NO_MEMORY, "out of memory");
  for (size_t i = old; i < s->n; i++) s->labels[i] = target ? s->tokens[i] : LABEL_IGNORE;
  return CONV_OK;
}

/* First occurrence of needle in [p, end), or NULL. */
static const char *find_in(const char *p, const char *end, const char *needle) {
  size_t k = strlen(needle);
  for (; p + k <= end; p++)
    if (*p == needle[0] && memcmp(p, needle, k) == 0) return p;
  return NULL;
}

static int add_image(builder *b, const char *path, size_t len) {
  conv_sample *s = b->s;
  if (s->n_images == s->image_cap) {
    int cap = s->image_cap ? 2 * s->image_cap : 4;
    char **im = realloc(s->images, (size_t)cap * sizeof *im);
    if (!im) return -1;
    s->images = im;
    size_t *pos = realloc(s->image_pos, (size_t)cap * sizeof *pos);
    if (!pos) return -1;
    s->image_pos = pos;
    s->image_cap = cap;
  }
  char *p = malloc(len + 1);
  if (!p) return -1;
  memcpy(p, path, len);
  p[len] = '\0';
  s->images[s->n_images] = p;
  s->image_pos[s->n_images] = s->n;
  s->n_images++;
  return 0;
}

/* A turn's text: ordinary text (special-token strings allowed, as upstream's
 * tokenizer(text) allows them) with <img>PATH</img> spans, which become
 * <img> <imgpad> x img_slots </img>, all -100. */
static int emit_value(builder *b, const char *text, int target) {
  static const char OPEN[] = "<img>", CLOSE[] = "</img>";
  const char *p = text, *end = text + strlen(text);
  for (;;) {
    const char *open = find_in(p, end, OPEN), *close = find_in(p, end, CLOSE);
    if (close && (!open || close < open))
      return skip_why(b->why, b->wn, CONV_BAD_IMAGE_TAG,
                      "</img> without <img> at byte %zu of \"%.40s\"", (size_t)(close - text),
                      text);
    if (!open) return emit_text(b, p, (size_t)(end - p), target, 1);
    int rc = emit_text(b, p, (size_t)(open - p), target, 1);
    if (rc != CONV_OK) return rc;
    const char *path = open + sizeof OPEN - 1;
    const char *path_end = find_in(path, end, CLOSE);
    if (!path_end)
      return skip_why(b->why, b->wn, CONV_BAD_IMAGE_TAG,
                      "<img> without </img> at byte %zu of \"%.40s\"", (size_t)(open - text), text);
    if (find_in(path, path_end, OPEN))
      return skip_why(b->why, b->wn, CONV_BAD_IMAGE_TAG, "<img> inside <img>...</img> at byte %zu",
                      (size_t)(open - text));
    if (add_image(b, path, (size_t)(path_end - path)) || reserve(b->s, (size_t)b->o->img_slots + 2))
      return skip_why(b->why, b->wn, CONV_NO_MEMORY, "out of memory");
    emit_id(b->s, b->o->img_start, 0);
    for (int k = 0; k < b->o->img_slots; k++) emit_id(b->s, b->o->img_pad, 0);
    emit_id(b->s, b->o->img_end, 0);
    p = path_end + sizeof CLOSE - 1;
  }
}

enum { ROLE_NONE, ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT };

static int role_of(const char *from) {
  if (strcmp(from, "user") == 0 || strcmp(from, "human") == 0) return ROLE_USER;
  if (strcmp(from, "assistant") == 0 || strcmp(from, "gpt") == 0) return ROLE_ASSISTANT;
  if (strcmp(from, "system") == 0) return ROLE_SYSTEM;
  return ROLE_NONE;
}

/* Turn i of the conversations array: its role and text, or a reason. */
static int turn_at(builder *b, const cJSON *conv, int i, int *role, const char **value) {
  const cJSON *t = cJSON_GetArrayItem(conv, i);
  const cJSON *from = cJSON_GetObjectItemCaseSensitive(t, "from");
  const cJSON *val = cJSON_GetObjectItemCaseSensitive(t, "value");
  if (!cJSON_IsObject(t) || !cJSON_IsString(from) || !cJSON_IsString(val))
    return skip_why(b->why, b->wn, CONV_BAD_CONVERSATION,
                    "turn %d is not an object with string \"from\" and \"value\"", i);
  *role = role_of(from->valuestring);
  if (*role == ROLE_NONE)
    return skip_why(b->why, b->wn, CONV_BAD_CONVERSATION,
                    "turn %d: unknown role \"from\": \"%.40s\" (user, human, assistant, gpt, "
                    "system)",
                    i, from->valuestring);
  *value = val->valuestring;
  return CONV_OK;
}

/* Monkey: values concatenated without template; even turns user (-100), odd
 * turns assistant (targets) each closed by <|endoftext|> (a target). */
static int build_monkey(builder *b, const cJSON *conv, int n) {
  for (int i = 0; i < n; i++) {
    int role, rc;
    const char *value;
    if ((rc = turn_at(b, conv, i, &role, &value)) != CONV_OK) return rc;
    int want = i % 2 == 0 ? ROLE_USER : ROLE_ASSISTANT;
    if (role != want)
      return skip_why(b->why, b->wn, CONV_BAD_CONVERSATION,
                      "turn %d is a %s turn, but Monkey's format alternates user, assistant, "
                      "user, ... (use --format chatml for system turns)",
                      i,
                      role == ROLE_SYSTEM ? "system"
                      : role == ROLE_USER ? "user"
                                          : "assistant");
    if ((rc = emit_value(b, value, want == ROLE_ASSISTANT)) != CONV_OK) return rc;
    if (want == ROLE_ASSISTANT && emit_id(b->s, b->o->eod, 1))
      return skip_why(b->why, b->wn, CONV_NO_MEMORY, "out of memory");
  }
  return CONV_OK;
}

/* One ChatML block: <|im_start|>ROLE\nTEXT<|im_end|>\n with the labels of the
 * chosen target rule. */
static int chatml_block(builder *b, int role, const char *text) {
  const int qwen = b->o->targets == CHATML_TARGETS_QWEN, asst = role == ROLE_ASSISTANT;
  const char *name = role == ROLE_SYSTEM ? "system" : role == ROLE_USER ? "user" : "assistant";
  int rc;
  if (emit_id(b->s, b->o->im_start, qwen))
    return skip_why(b->why, b->wn, CONV_NO_MEMORY, "out of memory");
  if ((rc = emit_text(b, name, strlen(name), 0, 0)) != CONV_OK) return rc;
  if ((rc = emit_text(b, "\n", 1, 0, 0)) != CONV_OK) return rc;
  if ((rc = emit_value(b, text, asst)) != CONV_OK) return rc;
  if (emit_id(b->s, b->o->im_end, qwen || asst))
    return skip_why(b->why, b->wn, CONV_NO_MEMORY, "out of memory");
  return emit_text(b, "\n", 1, qwen, 0);
}

/* ChatML: a leading system turn replaces the default system message; a
 * leading assistant turn is dropped (as upstream drops a first turn that is
 * not the user's); then every turn in order. */
static int build_chatml(builder *b, const cJSON *conv, int n) {
  int i = 0, role, rc;
  const char *value, *system = b->o->system_message;
  if (n > 0) {
    if ((rc = turn_at(b, conv, 0, &role, &value)) != CONV_OK) return rc;
    if (role == ROLE_SYSTEM) system = value, i = 1;
  }
  if (i < n) {
    if ((rc = turn_at(b, conv, i, &role, &value)) != CONV_OK) return rc;
    if (role == ROLE_ASSISTANT) i++;
  }
  if ((rc = chatml_block(b, ROLE_SYSTEM, system)) != CONV_OK) return rc;
  for (; i < n; i++) {
    if ((rc = turn_at(b, conv, i, &role, &value)) != CONV_OK) return rc;
    if (role == ROLE_SYSTEM)
      return skip_why(b->why, b->wn, CONV_BAD_CONVERSATION,
                      "turn %d: a system turn is allowed only first", i);
    if ((rc = chatml_block(b, role, value)) != CONV_OK) return rc;
  }
  return CONV_OK;
}

int conv_build(const conv_options *o, const char *json, size_t len, conv_sample *s, char *why,
               size_t why_len) {
  sample_reset(s);
  s->image_span = o->img_slots + 2;
  if (why && why_len) why[0] = '\0';
  builder b = {o, s, why, why_len};
  const char *parse_end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(json, len, &parse_end, 0);
  if (!root) {
    size_t at = parse_end && parse_end >= json ? (size_t)(parse_end - json) : 0;
    return skip_why(why, why_len, CONV_BAD_JSON,
                    "does not parse as JSON (near byte %zu of the element)", at);
  }
  int rc = CONV_OK;
  const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "id");
  if (cJSON_IsString(id))
    snprintf(s->id, sizeof s->id, "%s", id->valuestring);
  else if (cJSON_IsNumber(id))
    snprintf(s->id, sizeof s->id, "%.17g", id->valuedouble);
  const cJSON *conv = cJSON_GetObjectItemCaseSensitive(root, "conversations");
  if (!cJSON_IsObject(root)) {
    rc = skip_why(why, why_len, CONV_BAD_CONVERSATION, "the element is not a JSON object");
  } else if (!cJSON_IsArray(conv)) {
    rc = skip_why(why, why_len, CONV_BAD_CONVERSATION, "no \"conversations\" array");
  } else {
    int n = cJSON_GetArraySize(conv);
    if (n < 1)
      rc = skip_why(why, why_len, CONV_BAD_CONVERSATION, "\"conversations\" is empty");
    else
      rc = o->format == CONV_MONKEY ? build_monkey(&b, conv, n) : build_chatml(&b, conv, n);
  }
  cJSON_Delete(root);
  return rc;
}

long conv_count_targets(const conv_sample *s) {
  long k = 0;
  for (size_t i = 0; i < s->n; i++) k += s->labels[i] != LABEL_IGNORE;
  return k;
}

int conv_truncate(conv_sample *s, int seq_length, int *truncated, char *why, size_t why_len) {
  *truncated = 0;
  if (seq_length > 0 && s->n > (size_t)seq_length) {
    const size_t cut = (size_t)seq_length;
    int keep = 0;
    for (int k = 0; k < s->n_images; k++) {
      size_t first = s->image_pos[k], last = first + (size_t)s->image_span - 1;
      if (first < cut && last >= cut)
        return skip_why(why, why_len, CONV_CUTS_IMAGE,
                        "%zu tokens; keeping the first %d would cut image %d (tokens %zu..%zu)",
                        s->n, seq_length, k, first, last);
      if (first < cut) keep = k + 1;
    }
    for (int k = keep; k < s->n_images; k++) free(s->images[k]);
    s->n_images = keep;
    s->n = cut;
    *truncated = 1;
  }
  if (conv_count_targets(s) == 0)
    return skip_why(why, why_len, CONV_NO_TARGETS, "%s no token is a target",
                    *truncated ? "after truncation" : "");
  return CONV_OK;
}

/* ------------------------------------------------------------------------------
 * Splitting the top-level array. */

static void line_col(const char *text, size_t at, long *line, long *col) {
  *line = 1;
  *col = 1;
  for (size_t i = 0; i < at; i++) {
    if (text[i] == '\n')
      (*line)++, *col = 1;
    else
      (*col)++;
  }
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

int conv_split_array(const char *path, const char *text, size_t len, size_t **start, size_t **end,
                     long *n) {
  *start = *end = NULL;
  *n = 0;
  size_t i = 0, cap = 0;
  long line, col;
  if (len >= 3 && (unsigned char)text[0] == 0xEF && (unsigned char)text[1] == 0xBB &&
      (unsigned char)text[2] == 0xBF)
    i = 3;
  while (i < len && is_ws(text[i])) i++;
  if (i >= len || text[i] != '[') {
    line_col(text, i, &line, &col);
    VLM_FAIL(
        "%s: line %ld, column %ld: the top level must be a JSON array of samples "
        "([{\"id\": ..., \"conversations\": [...]}, ...]), found %s",
        path, line, col, i >= len ? "the end of the file" : "something else");
  }
  i++;
  while (i < len && is_ws(text[i])) i++;
  int closed = i < len && text[i] == ']';
  if (closed) i++;
  while (!closed) {
    while (i < len && is_ws(text[i])) i++;
    size_t s0 = i;
    int depth = 0, in_str = 0;
    for (; i < len; i++) {
      char c = text[i];
      if (in_str) {
        if (c == '\\')
          i++;
        else if (c == '"')
          in_str = 0;
        continue;
      }
      if (c == '"')
        in_str = 1;
      else if (c == '{' || c == '[')
        depth++;
      else if (c == '}' || c == ']') {
        if (depth == 0) break;
        depth--;
      } else if (c == ',' && depth == 0)
        break;
    }
    if (i >= len) {
      free(*start);
      free(*end);
      *start = *end = NULL;
      line_col(text, s0, &line, &col);
      VLM_FAIL(
          "%s: the top-level array is not closed: the element that starts at line %ld, column "
          "%ld runs to the end of the file (%s)",
          path, line, col, in_str ? "inside a string" : "unbalanced brackets");
    }
    size_t e0 = i;
    while (e0 > s0 && is_ws(text[e0 - 1])) e0--;
    if (e0 == s0 || text[i] == '}') {
      free(*start);
      free(*end);
      *start = *end = NULL;
      line_col(text, i, &line, &col);
      VLM_FAIL("%s: line %ld, column %ld: %s in the top-level array", path, line, col,
               e0 == s0 ? "an empty element" : "an unmatched '}'");
    }
    if ((size_t)*n == cap) {
      cap = cap ? 2 * cap : 1024;
      size_t *a = realloc(*start, cap * sizeof *a);
      if (a) *start = a;
      size_t *b = a ? realloc(*end, cap * sizeof *b) : NULL;
      if (b) *end = b;
      if (!a || !b) {
        free(*start);
        free(*end);
        *start = *end = NULL;
        VLM_FAIL("%s: out of memory splitting %ld samples", path, *n);
      }
    }
    (*start)[*n] = s0;
    (*end)[*n] = e0;
    (*n)++;
    closed = text[i] == ']';
    i++;
  }
  while (i < len && is_ws(text[i])) i++;
  if (i < len) {
    free(*start);
    free(*end);
    *start = *end = NULL;
    *n = 0;
    line_col(text, i, &line, &col);
    VLM_FAIL("%s: line %ld, column %ld: text after the top-level array's closing ]", path, line,
             col);
  }
  return 0;
}
