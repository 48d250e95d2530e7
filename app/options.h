/* app/options.h: command-line options of the subcommands. Each command
 * declares a table of options (name, argument, default, help); parsing fills
 * the values, rejects unknown options and missing required ones, and --help
 * prints the table with every default. */
#ifndef VLM_APP_OPTIONS_H
#define VLM_APP_OPTIONS_H

typedef struct {
  const char *name;  /* "--steps" */
  const char *arg;   /* "N", or NULL for a flag */
  const char *def;   /* default value as text, or NULL: required (for options with an argument) */
  const char *help;
  const char *value; /* filled: the given value, or def; "1"/"0" for flags */
  int given;
} opt;

/* Parses argv[0..argc) (the arguments after the command name). Positional
 * arguments go to pos[0..max_pos) and their count to *n_pos (NULL: none
 * allowed). Returns 0 ok, 1 if --help was printed, -1 on error (reported). */
int opts_parse(const char *cmd, const char *usage, opt *o, int n, int argc, char **argv,
               const char **pos, int max_pos, int *n_pos);
void opts_print_help(const char *cmd, const char *usage, const opt *o, int n);
/* Parses an option's value as an integer / number; errors name the option. */
int opt_long(const opt *o, long *out);
int opt_double(const opt *o, double *out);

#endif
