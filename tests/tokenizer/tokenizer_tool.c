/* tests/tokenizer/tokenizer_tool.c: io/tokenizer.c as a small command for
 * tests/tokenizer/test_tokenizer.py (not installed):
 *   tokenizer_tool load RANKS                 load, print n_vocab, special ids and
 *                                             PCRE2's Unicode version
 *   tokenizer_tool encode RANKS CASES OUT     (ordinary) \  CASES: records of a u32
 *   tokenizer_tool encode-special RANKS CASES OUT        /  length + bytes; OUT: a line
 *       per case, the ids or "E message"; OUT.dec: C's decode of its own ids, as records
 *   tokenizer_tool decode RANKS IDS OUT       IDS: a line of ids per case; OUT: records
 *   tokenizer_tool api RANKS                  interface checks (appending, errors, NULLs)
 * Exit status 0 when it worked; errors go to stderr as vlmtrain prints them. */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "common/vlm.h"
#include "io/tokenizer.h"

static int read_all(const char *path, char **data, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) VLM_FAIL("cannot open %s", path);
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    n += fread(buf + n, 1, cap - n, f);
    if (n < cap) break;
    char *nb = realloc(buf, cap * 2);
    if (!nb) free(buf);
    buf = nb;
    cap *= 2;
  }
  fclose(f);
  if (!buf) VLM_FAIL("out of memory reading %s", path);
  *data = buf;
  *size = n;
  return 0;
}

static void put_record(FILE *f, const char *s, size_t n) {
  uint32_t l = (uint32_t)n;
  fwrite(&l, 4, 1, f);
  fwrite(s, 1, n, f);
}

static int cmd_load(const char *ranks) {
  tokenizer *t;
  VLM_CHECK(tokenizer_load(&t, ranks));
  printf("n_vocab %d\n", tokenizer_n_vocab(t));
  const char *names[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|extra_0|>",
                         "<|extra_204|>", "<ref>",        "</ref>",     "<box>",
                         "</box>",        "<quad>",       "</quad>",    "<img>",
                         "</img>",        "<imgpad>",     "<|extra_205|>", "hello"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    printf("special %s %d\n", names[i], tokenizer_special_id(t, names[i]));
  char uv[64] = "";
  pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, uv);
  printf("unicode %s\n", uv);
  tokenizer_free(t);
  return 0;
}

static int cmd_encode(const char *ranks, const char *cases, const char *out, int special) {
  tokenizer *t;
  VLM_CHECK(tokenizer_load(&t, ranks));
  char *data = NULL;
  size_t size = 0;
  int rc = -1;
  FILE *fo = NULL, *fd = NULL;
  char dec_path[4096];
  snprintf(dec_path, sizeof dec_path, "%s.dec", out);
  VLM_CHECK_GOTO(read_all(cases, &data, &size), done);
  fo = fopen(out, "w");
  fd = fopen(dec_path, "wb");
  if (!fo || !fd) {
    fprintf(stderr, "cannot write %s\n", out);
    goto done;
  }
  vlm_set_quiet_errors(1);
  int32_t *ids = NULL;
  size_t cap = 0;
  for (size_t p = 0; p + 4 <= size;) {
    uint32_t l;
    memcpy(&l, data + p, 4);
    p += 4;
    size_t n = 0;
    int r = special ? tokenizer_encode_special(t, data + p, l, &ids, &n, &cap)
                    : tokenizer_encode(t, data + p, l, &ids, &n, &cap);
    p += l;
    if (r != 0) {
      fprintf(fo, "E %s\n", vlm_last_error());
      put_record(fd, "", 0);
      continue;
    }
    for (size_t i = 0; i < n; i++) fprintf(fo, i ? " %d" : "%d", (int)ids[i]);
    fprintf(fo, "\n");
    char *text;
    size_t tl;
    if (tokenizer_decode(t, ids, n, &text, &tl) != 0) {
      fprintf(stderr, "decode failed: %s\n", vlm_last_error());
      free(ids);
      goto done;
    }
    put_record(fd, text, tl);
    free(text);
  }
  free(ids);
  rc = 0;
done:
  if (fo) fclose(fo);
  if (fd) fclose(fd);
  free(data);
  tokenizer_free(t);
  return rc;
}

static int cmd_decode(const char *ranks, const char *idfile, const char *out) {
  tokenizer *t;
  VLM_CHECK(tokenizer_load(&t, ranks));
  FILE *fi = fopen(idfile, "r"), *fo = fopen(out, "wb");
  int rc = -1;
  char *line = NULL;
  size_t lcap = 0;
  int32_t *ids = NULL;
  size_t cap = 0;
  if (!fi || !fo) goto done;
  while (getline(&line, &lcap, fi) >= 0) {
    size_t n = 0;
    for (char *s = line, *e;; s = e) {
      long v = strtol(s, &e, 10);
      if (e == s) break;
      if (n == cap) {
        cap = cap ? 2 * cap : 1024;
        int32_t *nb = realloc(ids, cap * sizeof *ids);
        if (!nb) goto done;
        ids = nb;
      }
      ids[n++] = (int32_t)v;
    }
    char *text;
    size_t tl;
    VLM_CHECK_GOTO(tokenizer_decode(t, ids, n, &text, &tl), done);
    put_record(fo, text, tl);
    free(text);
  }
  rc = 0;
done:
  if (fi) fclose(fi);
  if (fo) fclose(fo);
  free(line);
  free(ids);
  tokenizer_free(t);
  return rc;
}

static int n_ok, n_bad;
static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
  ok ? n_ok++ : n_bad++;
  printf("%s ", ok ? "ok  " : "FAIL");
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
}

/* Interface checks that need no reference: appending, empty text, restored
 * count on failure, errors for bad ids, invalid UTF-8 and NULL arguments. */
static int cmd_api(const char *ranks) {
  tokenizer *t;
  VLM_CHECK(tokenizer_load(&t, ranks));
  vlm_set_quiet_errors(1);
  int nv = tokenizer_n_vocab(t), eot = tokenizer_special_id(t, "<|endoftext|>");
  check(eot >= 256 && nv == eot + 217, "n_vocab %d = <|endoftext|> %d + 217", nv, eot);
  check(tokenizer_special_id(t, "<imgpad>") == nv - 1 && tokenizer_special_id(t, "<img>") == nv - 3,
        "<img> and <imgpad> are the last ids but two and the last");
  check(tokenizer_special_id(t, "<|extra_205|>") == -1 && tokenizer_special_id(t, "") == -1 &&
            tokenizer_special_id(t, NULL) == -1,
        "unknown special texts give -1");

  const char *a = "Hello, world! 你好", *b = " again<|endoftext|>";
  int32_t *ids = NULL;
  size_t n = 0, cap = 0;
  int r1 = tokenizer_encode(t, a, strlen(a), &ids, &n, &cap);
  size_t na = n;
  int32_t *copy = malloc((na + 1) * sizeof *copy);
  memcpy(copy, ids, na * sizeof *copy);
  int r2 = tokenizer_encode_special(t, b, strlen(b), &ids, &n, &cap);
  check(r1 == 0 && r2 == 0 && n > na && cap >= n && memcmp(ids, copy, na * sizeof *ids) == 0 &&
            ids[n - 1] == eot,
        "encode appends after the ids already there and grows the buffer");
  char *text = NULL;
  size_t tl = 0;
  int rd = tokenizer_decode(t, ids, n, &text, &tl);
  check(rd == 0 && tl == strlen(a) + strlen(b) && memcmp(text, a, strlen(a)) == 0 &&
            strcmp(text + strlen(a), b) == 0 && text[tl] == 0,
        "decode of both gives both texts, NUL-terminated");
  free(text);

  size_t n0 = n;
  int r = tokenizer_encode(t, "", 0, &ids, &n, &cap);
  check(r == 0 && n == n0, "empty text appends nothing");
  r = tokenizer_encode(t, NULL, 0, &ids, &n, &cap);
  check(r == 0 && n == n0, "NULL text of length 0 appends nothing");
  const char bad[] = "ok text \xe4\xbd then more";
  r = tokenizer_encode(t, bad, sizeof bad - 1, &ids, &n, &cap);
  check(r != 0 && n == n0 && strstr(vlm_last_error(), "UTF-8") &&
            strstr(vlm_last_error(), "offset 8"),
        "invalid UTF-8: error naming the offset, count unchanged (%s)", vlm_last_error());
  r = tokenizer_encode(t, "x", 1, NULL, &n, &cap);
  check(r != 0, "NULL id buffer pointer: error");
  int32_t badids[] = {0, nv};
  r = tokenizer_decode(t, badids, 2, &text, &tl);
  check(r != 0 && strstr(vlm_last_error(), "position 1"), "decode of an id >= n_vocab: error (%s)",
        vlm_last_error());
  badids[1] = -1;
  r = tokenizer_decode(t, badids, 2, &text, &tl);
  check(r != 0, "decode of a negative id: error");
  r = tokenizer_decode(t, NULL, 0, &text, &tl);
  check(r == 0 && tl == 0 && text && text[0] == 0, "decode of no ids: empty string");
  free(text);
  free(ids);
  free(copy);
  tokenizer_free(t);
  printf("api: %d ok, %d failed\n", n_ok, n_bad);
  return n_bad ? -1 : 0;
}

int main(int argc, char **argv) {
  int rc = -1;
  if (argc == 3 && !strcmp(argv[1], "load")) rc = cmd_load(argv[2]);
  else if (argc == 5 && !strcmp(argv[1], "encode")) rc = cmd_encode(argv[2], argv[3], argv[4], 0);
  else if (argc == 5 && !strcmp(argv[1], "encode-special"))
    rc = cmd_encode(argv[2], argv[3], argv[4], 1);
  else if (argc == 5 && !strcmp(argv[1], "decode")) rc = cmd_decode(argv[2], argv[3], argv[4]);
  else if (argc == 3 && !strcmp(argv[1], "api")) rc = cmd_api(argv[2]);
  else fprintf(stderr, "usage: see tests/tokenizer/tokenizer_tool.c\n");
  return rc == 0 ? 0 : 1;
}
