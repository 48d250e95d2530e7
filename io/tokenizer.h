/* io/tokenizer.h: Qwen's byte-level BPE tokenizer, read from a tiktoken ranks
 * file (one "BASE64_TOKEN RANK" per line), with Qwen's pre-tokenisation regex
 * (PCRE2, Unicode classes) and its special tokens, whose ids follow the ranks:
 * <|endoftext|> (= number of ranks, 151643 for Qwen), <|im_start|>, <|im_end|>,
 * <|extra_0|> .. <|extra_204|>, then <ref> </ref> <box> </box> <quad> </quad>
 * <img> </img> <imgpad> (151857, 151858, 151859 for Qwen). */
#ifndef VLM_IO_TOKENIZER_H
#define VLM_IO_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer tokenizer;

/* Loads and validates a ranks file; errors name the file and line. */
int tokenizer_load(tokenizer **t, const char *ranks_path);
void tokenizer_free(tokenizer *t);

/* Number of ids: ranks + special tokens. */
int tokenizer_n_vocab(const tokenizer *t);
/* Id of a special token by its text (e.g. "<|endoftext|>", "<img>"), or -1. */
int tokenizer_special_id(const tokenizer *t, const char *text);

/* Encodes UTF-8 text as ordinary text (special-token strings are NOT
 * recognised, like tiktoken's encode_ordinary). Appends to *ids (growing the
 * buffer with realloc; *cap is its capacity) and advances *n. */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n,
                     size_t *cap);
/* Same, but the special-token strings in the text become their ids
 * (tiktoken's encode(..., allowed_special="all")). */
int tokenizer_encode_special(const tokenizer *t, const char *text, size_t len, int32_t **ids,
                             size_t *n, size_t *cap);
/* Decodes ids to bytes (malloc'd, NUL-terminated; *len excludes the NUL). */
int tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len);

#endif
