/* io/tokenizer.c: Qwen's byte-level BPE tokenizer (interface io/tokenizer.h),
 * giving the same ids as the `tiktoken` package with Qwen's pattern and specials.
 *
 * Load: the ranks file ("BASE64 RANK" per line, tiktoken's format) is read
 * whole and checked: strict base64, a decimal rank, ranks unique and dense
 * (0..N-1, lines in any order), no token twice, all 256 single bytes present;
 * each error names the file and line. Token bytes live in one arena indexed by
 * rank; an open-addressing hash table maps byte strings to ranks, and a merge
 * table maps two adjacent tokens' ids to the rank of their concatenation (built
 * at load from every split of every token, plus a direct 256 x 256 table for
 * byte pairs), so merging never hashes bytes. The special tokens (Qwen's 217,
 * ids N, N+1, ...) sit in a second, small string table.
 *
 * Encode: the text must be valid UTF-8 (invalid input is rejected with the byte
 * offset; tiktoken takes Python str, so it never sees such input). The text is
 * cut into pieces by Qwen's pre-tokenisation regex (PCRE2, UTF + UCP, JIT when
 * available), run on each stretch between special tokens on its own, as
 * tiktoken does. A piece that is a token is emitted whole; otherwise the
 * standard rank merge runs: repeatedly merge the adjacent pair whose
 * concatenation has the lowest rank, the leftmost on ties (a plain array scan
 * for short pieces, a heap over a linked list for long ones). Special tokens are
 * found by longest match at the leftmost position.
 *
 * One difference from a literal reading of the pattern: tiktoken's regex engine
 * (Rust) takes \s as Unicode White_Space; PCRE2's \s under UCP also matches
 * U+180E (MONGOLIAN VOWEL SEPARATOR, not White_Space since Unicode 6.3). The
 * pattern below therefore spells \s out as the White_Space class.
 * \p{L} and \p{N} follow PCRE2's Unicode tables, which may be a version behind
 * Rust's: characters assigned in the newest Unicode versions can split
 * differently. A loaded tokenizer is read-only: threads may share it.
 * Not here: Qwen's NFC normalisation before tokenising, the chat template. */
#define _POSIX_C_SOURCE 200809L
#include "io/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/vlm.h"

/* ---- Qwen's pre-tokenisation pattern and special tokens ---- */

/* Unicode White_Space, which is what \s means to tiktoken's regex engine
 * (PCRE2's \s would add U+180E). */
#define WS                                                                                   \
  "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}" \
  "\\x{205F}\\x{3000}"
/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 * \s*[\r\n]+|\s+(?!\S)|\s+   with \s written as [WS] and \S as [^WS]. */
static const char QWEN_PATTERN[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
                                   "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
                                   "|\\p{N}"
                                   "| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*"
                                   "|[" WS "]*[\\r\\n]+"
                                   "|[" WS "]+(?![^" WS "])"
                                   "|[" WS "]+";

#define N_EXTRA 205
static const char *const SPECIAL_HEAD[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
static const char *const SPECIAL_TAIL[] = {"<ref>",  "</ref>", "<box>", "</box>", "<quad>",
                                           "</quad>", "<img>",  "</img>", "<imgpad>"};
#define N_HEAD ((int)(sizeof SPECIAL_HEAD / sizeof SPECIAL_HEAD[0]))
#define N_TAIL ((int)(sizeof SPECIAL_TAIL / sizeof SPECIAL_TAIL[0]))
#define N_SPECIAL (N_HEAD + N_EXTRA + N_TAIL)
#define MAX_SPECIAL_LEN 63 /* lengths are kept in a 64-bit mask */

#define NO_RANK INT32_MAX
#define SMALL_PIECE 64 /* pieces up to this many bytes merge by array scan */

/* ---- the hash table: byte string -> id ---- */

/* Slot: high 32 bits a tag from the hash, low 32 bits id + 1 (0 = empty). */
typedef struct {
  uint64_t *slot;
  size_t mask;
} str_table;

/* A merge: tokens l and r whose concatenation is token v (l = UINT32_MAX: empty). */
typedef struct {
  uint32_t l, r;
  int32_t v;
} pair_slot;

struct tokenizer {
  int32_t n_ranks;
  unsigned char *bytes;             /* token bytes: ranks 0..n_ranks-1, then the specials */
  size_t *off;                      /* n_ranks + N_SPECIAL + 1 offsets into bytes */
  str_table ranks;                  /* bytes -> rank */
  pair_slot *pairs;                 /* (left id, right id) -> rank of their concatenation */
  size_t pair_mask;
  int32_t byte_rank[256];           /* rank of each single byte */
  int32_t *byte_pair_rank;          /* [a << 8 | b]: rank of the two bytes a b, or NO_RANK */
  str_table specials;               /* text -> id - n_ranks */
  uint64_t special_lens;            /* bit k: some special has k bytes */
  unsigned char special_first[256]; /* 1: some special starts with this byte */
  int special_first_only;           /* the one first byte of every special, or -1 */
  pcre2_code *re;
};

static inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

static inline uint64_t hash_bytes(const unsigned char *p, size_t n) {
  uint64_t h = 0x9e3779b97f4a7c15ull * (n + 1);
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    h = mix64(h ^ w);
    p += 8;
    n -= 8;
  }
  if (n >= 4) { /* 4..7 bytes: two overlapping 4-byte reads */
    uint32_t a, b;
    memcpy(&a, p, 4);
    memcpy(&b, p + n - 4, 4);
    h ^= ((uint64_t)a << 32) | b;
  } else if (n > 0) {
    h ^= (uint64_t)p[0] << 16 | (uint64_t)p[n >> 1] << 8 | p[n - 1];
  }
  return mix64(h);
}

static inline size_t tok_len(const tokenizer *t, int32_t id) {
  return t->off[id + 1] - t->off[id];
}

/* The id whose bytes are p[0..n), or NO_RANK. */
static inline int32_t table_find(const tokenizer *t, const str_table *tb, int32_t id_base,
                                 const unsigned char *p, size_t n) {
  uint64_t h = hash_bytes(p, n);
  uint64_t tag = h & 0xffffffff00000000ull;
  for (size_t i = (size_t)h & tb->mask;; i = (i + 1) & tb->mask) {
    uint64_t s = tb->slot[i];
    if (s == 0) return NO_RANK;
    if ((s & 0xffffffff00000000ull) == tag) {
      int32_t id = (int32_t)(uint32_t)s - 1 + id_base;
      if (tok_len(t, id) == n && memcmp(t->bytes + t->off[id], p, n) == 0) return id - id_base;
    }
  }
}

static inline int32_t rank_of(const tokenizer *t, const unsigned char *p, size_t n) {
  return table_find(t, &t->ranks, 0, p, n);
}

static inline size_t pair_hash(uint32_t l, uint32_t r) {
  return (size_t)(((uint64_t)l << 32 | r) * 0x9e3779b97f4a7c15ull >> 32);
}

/* Rank of the concatenation of tokens l and r, or NO_RANK. */
static inline int32_t pair_rank(const tokenizer *t, int32_t l, int32_t r) {
  for (size_t i = pair_hash((uint32_t)l, (uint32_t)r) & t->pair_mask;; i = (i + 1) & t->pair_mask) {
    const pair_slot *s = &t->pairs[i];
    if (s->l == (uint32_t)l && s->r == (uint32_t)r) return s->v;
    if (s->l == UINT32_MAX) return NO_RANK;
  }
}

/* Inserts id (its bytes already in the arena); returns the id already holding
 * the same bytes, or -1 if inserted. */
static int32_t table_insert(const tokenizer *t, str_table *tb, int32_t id_base, int32_t id) {
  const unsigned char *p = t->bytes + t->off[id_base + id];
  size_t n = tok_len(t, id_base + id);
  int32_t have = table_find(t, tb, id_base, p, n);
  if (have != NO_RANK) return have;
  uint64_t h = hash_bytes(p, n);
  size_t i = (size_t)h & tb->mask;
  while (tb->slot[i] != 0) i = (i + 1) & tb->mask;
  tb->slot[i] = (h & 0xffffffff00000000ull) | (uint32_t)(id + 1);
  return -1;
}

static int table_init(str_table *tb, size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap *= 2;
  tb->slot = vlm_alloc(cap * sizeof *tb->slot, "tokenizer hash table");
  if (!tb->slot) return -1;
  tb->mask = cap - 1;
  return 0;
}

/* ---- loading ---- */

static int b64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* Decodes standard base64 (with padding) s[0..n) into out; returns the decoded
 * length or -1 with *bad the column (0-based) of the offending character, or
 * n when the length is wrong. */
static long b64_decode(const char *s, size_t n, unsigned char *out, size_t *bad) {
  if (n == 0 || n % 4 != 0) {
    *bad = n;
    return -1;
  }
  size_t pad = 0;
  if (s[n - 1] == '=') pad++;
  if (s[n - 2] == '=') pad++;
  long k = 0;
  for (size_t i = 0; i < n; i += 4) {
    uint32_t v = 0;
    for (size_t j = 0; j < 4; j++) {
      size_t c = i + j;
      int d;
      if (c >= n - pad) {
        if (s[c] != '=') {
          *bad = c;
          return -1;
        }
        d = 0;
      } else if ((d = b64_value((unsigned char)s[c])) < 0) {
        *bad = c;
        return -1;
      }
      v = v << 6 | (uint32_t)d;
    }
    out[k++] = (unsigned char)(v >> 16);
    if (i + 4 < n || pad < 2) out[k++] = (unsigned char)(v >> 8);
    if (i + 4 < n || pad < 1) out[k++] = (unsigned char)v;
  }
  return k;
}

static int read_file(const char *path, char **data, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) VLM_FAIL("cannot open tokenizer ranks file %s: %s", path, strerror(errno));
  size_t cap = 1 << 20, n = 0;
  char *buf = malloc(cap + 1);
  for (;;) {
    if (!buf) {
      fclose(f);
      VLM_FAIL("out of memory reading tokenizer ranks file %s", path);
    }
    n += fread(buf + n, 1, cap - n, f);
    if (n < cap) break;
    cap *= 2;
    char *nb = realloc(buf, cap + 1);
    if (!nb) free(buf);
    buf = nb;
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    VLM_FAIL("error reading tokenizer ranks file %s", path);
  }
  buf[n] = 0;
  *data = buf;
  *size = n;
  return 0;
}

typedef struct {
  size_t off;   /* into the arena */
  size_t len;
  int line;
} entry;

static int is_blank(char c) { return c == ' ' || c == '\t'; }

/* Parses every line into entries[rank] (bytes into t->bytes); checks the
 * format, the ranks (unique, 0..n-1) and the tokens (unique). */
static int parse_ranks(tokenizer *t, const char *path, const char *data, size_t size,
                       entry **entries_out, int32_t *n_out) {
  /* count the non-empty lines */
  size_t n_lines = 0;
  for (size_t i = 0; i < size;) {
    const char *nl = memchr(data + i, '\n', size - i);
    size_t e = nl ? (size_t)(nl - data) : size;
    size_t l = e - i;
    if (l > 0 && data[e - 1] == '\r') l--;
    if (l > 0) n_lines++;
    i = e + 1;
  }
  if (n_lines == 0) VLM_FAIL("tokenizer ranks file %s has no ranks (empty file)", path);
  if (n_lines > (size_t)INT32_MAX - N_SPECIAL - 1)
    VLM_FAIL("tokenizer ranks file %s: too many lines (%zu)", path, n_lines);
  int32_t n = (int32_t)n_lines;
  entry *ent = vlm_alloc((size_t)n * sizeof *ent, "tokenizer ranks");
  t->bytes = vlm_alloc(size / 4 * 3 + 16 + N_SPECIAL * (MAX_SPECIAL_LEN + 1), "tokenizer bytes");
  if (!ent || !t->bytes) {
    vlm_free(ent);
    return -1;
  }
  for (int32_t r = 0; r < n; r++) ent[r].line = 0;
  size_t arena = 0;
  int line = 0;
  for (size_t i = 0; i < size;) {
    const char *nl = memchr(data + i, '\n', size - i);
    size_t e = nl ? (size_t)(nl - data) : size;
    const char *s = data + i;
    size_t l = e - i;
    line++;
    i = e + 1;
    if (l > 0 && s[l - 1] == '\r') l--;
    if (l == 0) continue;
    /* fields: BASE64 blanks RANK, blanks allowed around */
    size_t a = 0;
    while (a < l && is_blank(s[a])) a++;
    size_t b = a;
    while (b < l && !is_blank(s[b])) b++;
    size_t c = b;
    while (c < l && is_blank(s[c])) c++;
    size_t d = c;
    while (d < l && !is_blank(s[d])) d++;
    size_t z = d;
    while (z < l && is_blank(s[z])) z++;
    if (a == b || c == d || z != l) {
      vlm_free(ent);
      VLM_FAIL("tokenizer ranks file %s, line %d: expected \"BASE64 RANK\", found \"%.*s\"", path,
               line, (int)(l < 80 ? l : 80), s);
    }
    size_t bad;
    long k = b64_decode(s + a, b - a, t->bytes + arena, &bad);
    if (k <= 0) {
      vlm_free(ent);
      if (k == 0 || bad == b - a)
        VLM_FAIL("tokenizer ranks file %s, line %d: token \"%.*s\" is not valid base64 (its "
                 "length %zu is not a positive multiple of 4)",
                 path, line, (int)(b - a < 80 ? b - a : 80), s + a, b - a);
      VLM_FAIL("tokenizer ranks file %s, line %d: token \"%.*s\" is not valid base64 (character "
               "'%c' at column %zu)",
               path, line, (int)(b - a < 80 ? b - a : 80), s + a, s[a + bad], a + bad + 1);
    }
    int64_t rank = 0;
    for (size_t j = c; j < d; j++) {
      if (s[j] < '0' || s[j] > '9' || rank > INT32_MAX) {
        vlm_free(ent);
        VLM_FAIL("tokenizer ranks file %s, line %d: rank \"%.*s\" is not a non-negative integer",
                 path, line, (int)(d - c < 40 ? d - c : 40), s + c);
      }
      rank = rank * 10 + (s[j] - '0');
    }
    if (rank >= n) {
      vlm_free(ent);
      VLM_FAIL("tokenizer ranks file %s, line %d: rank %lld out of range: the file has %d ranks, "
               "which must be 0..%d, each once",
               path, line, (long long)rank, n, n - 1);
    }
    if (ent[rank].line != 0) {
      int first = ent[rank].line;
      vlm_free(ent);
      VLM_FAIL("tokenizer ranks file %s, line %d: duplicate rank %lld (already on line %d)", path,
               line, (long long)rank, first);
    }
    ent[rank].off = arena;
    ent[rank].len = (size_t)k;
    ent[rank].line = line;
    arena += (size_t)k;
  }
  *entries_out = ent;
  *n_out = n;
  return 0;
}

static int compile_pattern(tokenizer *t) {
  int err;
  PCRE2_SIZE at;
  t->re = pcre2_compile((PCRE2_SPTR)QWEN_PATTERN, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                        &err, &at, NULL);
  if (!t->re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    VLM_FAIL("PCRE2 cannot compile the tokenizer pattern at offset %zu: %s (PCRE2 needs Unicode "
             "support)",
             (size_t)at, (const char *)msg);
  }
  /* JIT when the library has it; the interpreter otherwise (same results;
   * -DVLM_TOKENIZER_NO_JIT forces it, to check that) */
#ifndef VLM_TOKENIZER_NO_JIT
  (void)pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE);
#endif
  return 0;
}

/* The merge table: every token split at every point where both halves are
 * tokens. BPE parts are always tokens, so the rank of two adjacent parts'
 * concatenation is found by their ids alone. */
static int build_pairs(tokenizer *t) {
  size_t n = 0, cap = 1024;
  pair_slot *list = malloc(cap * sizeof *list);
  if (!list) VLM_FAIL("tokenizer: out of memory for the merge table");
  for (int32_t v = 0; v < t->n_ranks; v++) {
    const unsigned char *p = t->bytes + t->off[v];
    size_t len = tok_len(t, v);
    for (size_t k = 1; k < len; k++) {
      int32_t l = rank_of(t, p, k);
      if (l == NO_RANK) continue;
      int32_t r = rank_of(t, p + k, len - k);
      if (r == NO_RANK) continue;
      if (n == cap) {
        cap *= 2;
        pair_slot *nl = realloc(list, cap * sizeof *list);
        if (!nl) {
          free(list);
          VLM_FAIL("tokenizer: out of memory for the merge table");
        }
        list = nl;
      }
      list[n++] = (pair_slot){(uint32_t)l, (uint32_t)r, v};
    }
  }
  size_t slots = 16;
  while (slots < 2 * n) slots *= 2;
  t->pairs = vlm_alloc(slots * sizeof *t->pairs, "tokenizer merge table");
  if (!t->pairs) {
    free(list);
    return -1;
  }
  t->pair_mask = slots - 1;
  for (size_t i = 0; i < slots; i++) t->pairs[i].l = UINT32_MAX;
  for (size_t j = 0; j < n; j++) {
    size_t i = pair_hash(list[j].l, list[j].r) & t->pair_mask;
    while (t->pairs[i].l != UINT32_MAX) i = (i + 1) & t->pair_mask;
    t->pairs[i] = list[j];
  }
  free(list);
  /* the first merges of every piece are of two single bytes: a direct table */
  t->byte_pair_rank = vlm_alloc(65536 * sizeof *t->byte_pair_rank, "tokenizer byte pairs");
  if (!t->byte_pair_rank) return -1;
  for (int a = 0; a < 256; a++)
    for (int b = 0; b < 256; b++)
      t->byte_pair_rank[a << 8 | b] = pair_rank(t, t->byte_rank[a], t->byte_rank[b]);
  return 0;
}

static void add_special(tokenizer *t, int i, const char *text, size_t *arena) {
  size_t l = strlen(text);
  memcpy(t->bytes + *arena, text, l);
  t->off[t->n_ranks + i] = *arena;
  *arena += l;
  t->off[t->n_ranks + i + 1] = *arena;
}

int tokenizer_load(tokenizer **out, const char *ranks_path) {
  if (!out || !ranks_path) VLM_FAIL("tokenizer_load: NULL argument");
  *out = NULL;
  char *data = NULL;
  size_t size = 0;
  VLM_CHECK(read_file(ranks_path, &data, &size));
  tokenizer *t = vlm_alloc(sizeof *t, "tokenizer");
  entry *ent = NULL;
  if (!t) goto fail;
  int32_t n;
  VLM_CHECK_GOTO(parse_ranks(t, ranks_path, data, size, &ent, &n), fail);
  free(data);
  data = NULL;
  t->n_ranks = n;
  /* compact the arena into rank order (entries are already placed by rank but
   * their bytes in line order): build offsets, then move bytes through a copy */
  t->off = vlm_alloc(((size_t)n + N_SPECIAL + 1) * sizeof *t->off, "tokenizer offsets");
  if (!t->off) goto fail;
  size_t total = 0;
  for (int32_t r = 0; r < n; r++) total += ent[r].len;
  unsigned char *sorted =
      vlm_alloc(total + 16 + N_SPECIAL * (MAX_SPECIAL_LEN + 1), "tokenizer bytes");
  if (!sorted) goto fail;
  size_t arena = 0;
  for (int32_t r = 0; r < n; r++) {
    t->off[r] = arena;
    memcpy(sorted + arena, t->bytes + ent[r].off, ent[r].len);
    arena += ent[r].len;
  }
  t->off[n] = arena;
  vlm_free(t->bytes);
  t->bytes = sorted;
  VLM_CHECK_GOTO(table_init(&t->ranks, (size_t)n), fail);
  for (int32_t r = 0; r < n; r++) {
    int32_t have = table_insert(t, &t->ranks, 0, r);
    if (have >= 0) {
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "tokenizer ranks file %s, line %d: token of rank %d has the same bytes as "
                   "rank %d on line %d (each token must appear once)",
                   ranks_path, ent[r].line, r, have, ent[have].line);
      goto fail;
    }
  }
  for (int b = 0; b < 256; b++) {
    unsigned char c = (unsigned char)b;
    t->byte_rank[b] = rank_of(t, &c, 1);
    if (t->byte_rank[b] == NO_RANK) {
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "tokenizer ranks file %s: no line holds the single byte 0x%02x; a byte-level "
                   "BPE needs all 256 single bytes as tokens",
                   ranks_path, b);
      goto fail;
    }
  }
  vlm_free(ent);
  ent = NULL;
  VLM_CHECK_GOTO(build_pairs(t), fail);
  /* special tokens: ids n, n+1, ... */
  int k = 0;
  for (int i = 0; i < N_HEAD; i++) add_special(t, k++, SPECIAL_HEAD[i], &arena);
  for (int i = 0; i < N_EXTRA; i++) {
    char s[32];
    snprintf(s, sizeof s, "<|extra_%d|>", i);
    add_special(t, k++, s, &arena);
  }
  for (int i = 0; i < N_TAIL; i++) add_special(t, k++, SPECIAL_TAIL[i], &arena);
  VLM_CHECK_GOTO(table_init(&t->specials, N_SPECIAL), fail);
  int first = -1;
  for (int i = 0; i < N_SPECIAL; i++) {
    (void)table_insert(t, &t->specials, n, i);
    size_t l = tok_len(t, n + i);
    unsigned char c0 = t->bytes[t->off[n + i]];
    t->special_lens |= 1ull << l;
    t->special_first[c0] = 1;
    first = (first == -1 || first == c0) ? c0 : -2;
  }
  t->special_first_only = first >= 0 ? first : -1;
  VLM_CHECK_GOTO(compile_pattern(t), fail);
  *out = t;
  return 0;
fail:
  free(data);
  vlm_free(ent);
  tokenizer_free(t);
  return -1;
}

void tokenizer_free(tokenizer *t) {
  if (!t) return;
  if (t->re) pcre2_code_free(t->re);
  vlm_free(t->bytes);
  vlm_free(t->off);
  vlm_free(t->ranks.slot);
  vlm_free(t->specials.slot);
  vlm_free(t->pairs);
  vlm_free(t->byte_pair_rank);
  vlm_free(t);
}

int tokenizer_n_vocab(const tokenizer *t) { return t->n_ranks + N_SPECIAL; }

int tokenizer_special_id(const tokenizer *t, const char *text) {
  if (!t || !text) return -1;
  size_t l = strlen(text);
  int32_t i = table_find(t, &t->specials, t->n_ranks, (const unsigned char *)text, l);
  return i == NO_RANK ? -1 : t->n_ranks + i;
}

/* ---- encoding ---- */

typedef struct {
  int32_t **ids;
  size_t *n, *cap;
} id_out;

/* Room for `more` ids. */
static int out_reserve(id_out *o, size_t more) {
  if (*o->n + more <= *o->cap) return 0;
  size_t want = *o->cap * 2;
  if (want < *o->n + more) want = *o->n + more;
  if (want < 256) want = 256;
  int32_t *p = realloc(*o->ids, want * sizeof *p);
  if (!p) VLM_FAIL("tokenizer: out of memory growing the id buffer to %zu ids", want);
  *o->ids = p;
  *o->cap = want;
  return 0;
}

/* Offset of the first byte that is not valid UTF-8 (overlong forms, surrogates
 * and code points above U+10FFFF are invalid), or n. */
static size_t utf8_invalid_at(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    if (i + 8 <= n) {
      uint64_t w;
      memcpy(&w, s + i, 8);
      if (!(w & 0x8080808080808080ull)) {
        i += 8;
        continue;
      }
    }
    unsigned char c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t k;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) k = 1;
    else if (c >= 0xe0 && c <= 0xef) {
      k = 2;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      k = 3;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    } else
      return i;
    if (i + k >= n) return i; /* truncated */
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t j = 2; j <= k; j++)
      if ((s[i + j] & 0xc0) != 0x80) return i;
    i += k + 1;
  }
  return n;
}

/* BPE of a piece of L bytes (2 <= L <= SMALL_PIECE), not itself a token:
 * parts in an array, the lowest-ranked adjacent pair (leftmost on ties)
 * merged until no pair is a token. */
static void bpe_small(const tokenizer *t, const unsigned char *p, int L, int32_t *dst,
                      size_t *nd) {
  int32_t tok[SMALL_PIECE], pr[SMALL_PIECE]; /* pr[i]: rank of parts i and i+1 merged */
  for (int i = 0; i < L; i++) tok[i] = t->byte_rank[p[i]];
  for (int i = 0; i + 1 < L; i++) pr[i] = t->byte_pair_rank[p[i] << 8 | p[i + 1]];
  int m = L; /* parts */
  for (;;) {
    int32_t best = NO_RANK;
    int bi = -1;
    for (int i = 0; i + 1 < m; i++)
      if (pr[i] < best) {
        best = pr[i];
        bi = i;
      }
    if (bi < 0) break;
    /* part bi absorbs part bi+1 */
    tok[bi] = best;
    for (int i = bi + 1; i + 1 < m; i++) tok[i] = tok[i + 1];
    for (int i = bi + 1; i + 2 < m; i++) pr[i] = pr[i + 1];
    m--;
    if (bi + 1 < m) pr[bi] = pair_rank(t, best, tok[bi + 1]);
    if (bi > 0) pr[bi - 1] = pair_rank(t, tok[bi - 1], best);
  }
  for (int i = 0; i < m; i++) dst[(*nd)++] = tok[i];
}

/* min-heap of (rank << 32 | position): lowest rank first, then leftmost */
static void heap_push(uint64_t *h, size_t *n, uint64_t v) {
  size_t i = (*n)++;
  while (i > 0) {
    size_t up = (i - 1) / 2;
    if (h[up] <= v) break;
    h[i] = h[up];
    i = up;
  }
  h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n) {
  uint64_t top = h[0], v = h[--*n];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= *n) break;
    if (c + 1 < *n && h[c + 1] < h[c]) c++;
    if (h[c] >= v) break;
    h[i] = h[c];
    i = c;
  }
  h[i] = v;
  return top;
}

/* BPE of a long piece: doubly linked parts (a part is named by the offset of
 * its first byte), candidate merges in a heap keyed (rank, offset), entries
 * that no longer match their part skipped when popped. Same merges, in the same
 * order, as bpe_small. */
static int bpe_large(const tokenizer *t, const unsigned char *p, size_t L, int32_t *dst,
                     size_t *nd) {
  if (L > (size_t)INT32_MAX) VLM_FAIL("tokenizer: a single pre-token of %zu bytes is too long", L);
  int32_t *nxt = malloc(L * sizeof *nxt), *prv = malloc(L * sizeof *prv);
  int32_t *tok = malloc(L * sizeof *tok), *pr = malloc(L * sizeof *pr);
  uint64_t *heap = malloc(3 * L * sizeof *heap); /* L initial + 2 per merge */
  if (!nxt || !prv || !tok || !pr || !heap) {
    free(nxt), free(prv), free(tok), free(pr), free(heap);
    VLM_FAIL("tokenizer: out of memory for a pre-token of %zu bytes", L);
  }
  int32_t n = (int32_t)L;
  size_t hn = 0;
  for (int32_t i = 0; i < n; i++) {
    nxt[i] = i + 1;
    prv[i] = i - 1;
    tok[i] = t->byte_rank[p[i]];
  }
  for (int32_t i = 0; i < n; i++) {
    pr[i] = i + 1 < n ? t->byte_pair_rank[p[i] << 8 | p[i + 1]] : NO_RANK;
    if (pr[i] != NO_RANK) heap_push(heap, &hn, (uint64_t)pr[i] << 32 | (uint32_t)i);
  }
  while (hn > 0) {
    uint64_t v = heap_pop(heap, &hn);
    int32_t r = (int32_t)(v >> 32), i = (int32_t)(uint32_t)v;
    if (tok[i] < 0 || pr[i] != r) continue; /* stale */
    int32_t j = nxt[i];
    tok[i] = r;
    tok[j] = -1; /* dead */
    nxt[i] = nxt[j];
    if (nxt[i] < n) prv[nxt[i]] = i;
    pr[i] = nxt[i] < n ? pair_rank(t, r, tok[nxt[i]]) : NO_RANK;
    if (pr[i] != NO_RANK) heap_push(heap, &hn, (uint64_t)pr[i] << 32 | (uint32_t)i);
    int32_t h = prv[i];
    if (h >= 0) {
      pr[h] = pair_rank(t, tok[h], r);
      if (pr[h] != NO_RANK) heap_push(heap, &hn, (uint64_t)pr[h] << 32 | (uint32_t)h);
    }
  }
  for (int32_t i = 0; i < n; i = nxt[i]) dst[(*nd)++] = tok[i];
  free(nxt), free(prv), free(tok), free(pr), free(heap);
  return 0;
}

/* Ids of one pre-token p[0..L), L >= 1, appended to o (room reserved). */
static inline int encode_piece(const tokenizer *t, const unsigned char *p, size_t L, id_out *o) {
  int32_t *dst = *o->ids;
  if (L == 1) {
    dst[(*o->n)++] = t->byte_rank[p[0]];
    return 0;
  }
  int32_t whole = rank_of(t, p, L);
  if (whole != NO_RANK) {
    dst[(*o->n)++] = whole;
    return 0;
  }
  if (L <= SMALL_PIECE) {
    bpe_small(t, p, (int)L, dst, o->n);
    return 0;
  }
  return bpe_large(t, p, L, dst, o->n);
}

/* Ordinary text s[0..len), valid UTF-8; the regex sees exactly this stretch. */
static int encode_ordinary(const tokenizer *t, pcre2_match_data *md, const unsigned char *s,
                           size_t len, id_out *o) {
  size_t pos = 0;
  PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
  while (pos < len) {
    int rc = pcre2_match(t->re, s, len, pos, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* the interpreter keeps its state on the heap */
      rc = pcre2_match(t->re, s, len, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      VLM_FAIL("tokenizer: PCRE2 match failed at byte %zu: %s", pos, (const char *)msg);
    }
    size_t a = ov[0], b = ov[1];
    if (b <= a) { /* cannot happen with this pattern; step one character */
      pos = a + 1;
      while (pos < len && (s[pos] & 0xc0) == 0x80) pos++;
      continue;
    }
    VLM_CHECK(out_reserve(o, b - a));
    VLM_CHECK(encode_piece(t, s + a, b - a, o));
    pos = b;
  }
  return 0;
}

/* Finds the leftmost special token in s[from..len), longest at that position:
 * returns its start (len if none) and sets *id and *l. */
static size_t find_special(const tokenizer *t, const unsigned char *s, size_t from, size_t len,
                           int32_t *id, size_t *l) {
  size_t i = from;
  while (i < len) {
    if (t->special_first_only >= 0) {
      const unsigned char *q = memchr(s + i, t->special_first_only, len - i);
      if (!q) return len;
      i = (size_t)(q - s);
    } else if (!t->special_first[s[i]]) {
      i++;
      continue;
    }
    for (int k = MAX_SPECIAL_LEN; k >= 1; k--) {
      if (!(t->special_lens >> k & 1) || i + (size_t)k > len) continue;
      int32_t x = table_find(t, &t->specials, t->n_ranks, s + i, (size_t)k);
      if (x != NO_RANK) {
        *id = t->n_ranks + x;
        *l = (size_t)k;
        return i;
      }
    }
    i++;
  }
  return len;
}

static int encode_common(const tokenizer *t, const char *text, size_t len, int32_t **ids,
                         size_t *n, size_t *cap, int special) {
  if (!t || !ids || !n || !cap || (!text && len > 0))
    VLM_FAIL("tokenizer_encode: NULL argument");
  if (len == 0) return 0;
  const unsigned char *s = (const unsigned char *)text;
  size_t bad = utf8_invalid_at(s, len);
  if (bad < len)
    VLM_FAIL("tokenizer_encode: the text is not valid UTF-8 at byte offset %zu (byte 0x%02x); "
             "the tokenizer takes UTF-8 text only",
             bad, s[bad]);
  pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->re, NULL);
  if (!md) VLM_FAIL("tokenizer_encode: out of memory (PCRE2 match data)");
  size_t n0 = *n;
  id_out o = {ids, n, cap};
  size_t pos = 0;
  while (pos < len) {
    int32_t id = -1;
    size_t l = 0;
    size_t at = special ? find_special(t, s, pos, len, &id, &l) : len;
    if (at > pos) VLM_CHECK_GOTO(encode_ordinary(t, md, s + pos, at - pos, &o), fail);
    if (at == len) break;
    VLM_CHECK_GOTO(out_reserve(&o, 1), fail);
    (*ids)[(*n)++] = id;
    pos = at + l;
  }
  pcre2_match_data_free(md);
  return 0;
fail:
  pcre2_match_data_free(md);
  *n = n0;
  return -1;
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n,
                     size_t *cap) {
  VLM_CHECK(encode_common(t, text, len, ids, n, cap, 0));
  return 0;
}

int tokenizer_encode_special(const tokenizer *t, const char *text, size_t len, int32_t **ids,
                             size_t *n, size_t *cap) {
  VLM_CHECK(encode_common(t, text, len, ids, n, cap, 1));
  return 0;
}

/* ---- decoding ---- */

int tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len) {
  if (!t || !text || !len || (!ids && n > 0)) VLM_FAIL("tokenizer_decode: NULL argument");
  int32_t nv = t->n_ranks + N_SPECIAL;
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= nv)
      VLM_FAIL("tokenizer_decode: id %d at position %zu is outside the vocabulary [0, %d)",
               (int)ids[i], i, (int)nv);
    total += tok_len(t, ids[i]);
  }
  char *s = malloc(total + 1);
  if (!s) VLM_FAIL("tokenizer_decode: out of memory for %zu bytes", total + 1);
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    size_t l = tok_len(t, ids[i]);
    memcpy(s + k, t->bytes + t->off[ids[i]], l);
    k += l;
  }
  s[k] = 0;
  *text = s;
  *len = k;
  return 0;
}
