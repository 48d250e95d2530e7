/* app/options.c: see app/options.h. */
#include "app/options.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/vlm.h"

void opts_print_help(const char *cmd, const char *usage, const opt *o, int n) {
  printf("usage: vlmtrain %s %s\n\noptions:\n", cmd, usage);
  for (int i = 0; i < n; i++) {
    char left[64];
    snprintf(left, sizeof left, "%s%s%s", o[i].name, o[i].arg ? " " : "", o[i].arg ? o[i].arg : "");
    const char *d = !o[i].arg ? "off" : o[i].def ? (o[i].def[0] ? o[i].def : "(none)") : "required";
    printf("  %-22s %s [default: %s]\n", left, o[i].help, d);
  }
  printf("  %-22s %s\n", "--help", "print this help and exit");
}

int opts_parse(const char *cmd, const char *usage, opt *o, int n, int argc, char **argv,
               const char **pos, int max_pos, int *n_pos) {
  if (n_pos) *n_pos = 0;
  for (int i = 0; i < n; i++) {
    o[i].value = o[i].arg ? o[i].def : "0";
    o[i].given = 0;
  }
  for (int a = 0; a < argc; a++) {
    const char *s = argv[a];
    if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
      opts_print_help(cmd, usage, o, n);
      return 1;
    }
    if (strncmp(s, "--", 2) != 0) {
      if (!n_pos || *n_pos >= max_pos)
        VLM_FAIL("vlmtrain %s: unexpected argument \"%s\" (see vlmtrain %s --help)", cmd, s, cmd);
      pos[(*n_pos)++] = s;
      continue;
    }
    int k = -1;
    for (int i = 0; i < n && k < 0; i++)
      if (strcmp(s, o[i].name) == 0) k = i;
    if (k < 0) VLM_FAIL("vlmtrain %s: unknown option \"%s\" (see vlmtrain %s --help)", cmd, s, cmd);
    if (o[k].arg) {
      if (a + 1 >= argc) VLM_FAIL("vlmtrain %s: option %s needs a value (%s)", cmd, s, o[k].arg);
      o[k].value = argv[++a];
    } else {
      o[k].value = "1";
    }
    o[k].given = 1;
  }
  for (int i = 0; i < n; i++)
    if (o[i].arg && !o[i].value)
      VLM_FAIL("vlmtrain %s: option %s %s is required (see vlmtrain %s --help)", cmd, o[i].name,
               o[i].arg, cmd);
  return 0;
}

int opt_long(const opt *o, long *out) {
  char *end = NULL;
  errno = 0;
  long v = strtol(o->value, &end, 10);
  if (errno || !end || *end || end == o->value)
    VLM_FAIL("option %s: expected an integer, found \"%s\"", o->name, o->value);
  *out = v;
  return 0;
}

int opt_double(const opt *o, double *out) {
  char *end = NULL;
  errno = 0;
  double v = strtod(o->value, &end);
  if (errno || !end || *end || end == o->value)
    VLM_FAIL("option %s: expected a number, found \"%s\"", o->name, o->value);
  *out = v;
  return 0;
}
