/* app/cmd_scaling.c: `vlmtrain scaling RUNDIR... [--weak] [--plot FILE.png]`:
 * the collector of a scaling study (slurm/scaling.sh, docs/slurm.md). Reads
 * each run's RUNDIR/summary.json (the rank count) and RUNDIR/metrics.jsonl
 * (per step: step_time, t_gather, t_reduce, t_io, tokens, gflops), pools the
 * runs of one rank count, and prints per rank count the median step time
 * (warm-up steps skipped), speedup and strong-scaling efficiency
 * E(p) = T(p0) p0 / (p T(p)) (or weak: T(p0) / T(p)), tokens/s and the share
 * of the step spent in exposed communication and I/O. Writes a two-panel PNG
 * (step time against ranks on log2 axes with the ideal line; efficiency) by
 * running gnuplot on a script it generates next to the PNG. It reads only
 * finished runs' files and starts no MPI communication. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "app/commands.h"
#include "app/options.h"
#include "common/vlm.h"

enum { MAX_RUNS = 256 };

/* One run directory, reduced to what the table needs. */
typedef struct {
  const char *dir;
  int ranks;
  long steps;         /* steps kept (after the skipped warm-up) */
  double median_step; /* seconds */
  double sum_step, sum_comm, sum_io, sum_tokens, median_gflops;
} run_stats;

/* All runs of one rank count. */
typedef struct {
  int ranks, runs;
  long steps;
  double t, t_min, t_max; /* median over runs of the run medians; spread */
  double tokens_per_s, comm_share, io_share, gflops, speedup, eff, ideal_t;
} point;

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, long n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double num(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsNumber(v) ? v->valuedouble : 0.0;
}

static char *read_text(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 4096, len = 0;
  char *s = malloc(cap);
  size_t got;
  while (s && (got = fread(s + len, 1, cap - len - 1, f)) > 0) {
    len += got;
    if (cap - len < 2) {
      char *t = realloc(s, cap *= 2);
      if (!t) free(s);
      s = t;
    }
  }
  fclose(f);
  if (s) s[len] = 0;
  return s;
}

/* Step records of one metrics.jsonl, indexed by step (a resumed run may
 * append a step again: the last record of a step counts). */
typedef struct {
  double step_time, comm, io, tokens, gflops;
  int present;
} step_rec;

static int load_run(run_stats *r, const char *dir, long skip) {
  char path[4096];
  memset(r, 0, sizeof *r);
  r->dir = dir;
  snprintf(path, sizeof path, "%s/summary.json", dir);
  char *text = read_text(path);
  if (!text)
    VLM_FAIL("%s: cannot read it (%s): is %s a finished vlmtrain run directory?", path,
             strerror(errno), dir);
  cJSON *sum = cJSON_Parse(text);
  free(text);
  const cJSON *rk = sum ? cJSON_GetObjectItemCaseSensitive(sum, "ranks") : NULL;
  if (!cJSON_IsNumber(rk) || rk->valueint < 1) {
    cJSON_Delete(sum);
    VLM_FAIL("%s: expected a JSON object with a positive \"ranks\", found %s", path,
             sum ? "none" : "invalid JSON");
  }
  r->ranks = rk->valueint;
  cJSON_Delete(sum);

  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  FILE *f = fopen(path, "r");
  if (!f) VLM_FAIL("%s: cannot read it: %s", path, strerror(errno));
  step_rec *rec = NULL;
  long cap = 0, max_step = 0, lineno = 0;
  char *line = NULL;
  size_t line_cap = 0;
  int ok = 1;
  while (ok && getline(&line, &line_cap, f) > 0) {
    lineno++;
    if (line[strspn(line, " \t\r\n")] == 0) continue;
    cJSON *o = cJSON_Parse(line);
    const cJSON *st = o ? cJSON_GetObjectItemCaseSensitive(o, "step") : NULL;
    const cJSON *tt = o ? cJSON_GetObjectItemCaseSensitive(o, "step_time") : NULL;
    if (!cJSON_IsNumber(st) || !cJSON_IsNumber(tt) || st->valuedouble < 1) {
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "%s:%ld: expected a JSON object with \"step\" >= 1 and \"step_time\"", path,
                   lineno);
      ok = 0;
    } else {
      const long s = (long)st->valuedouble;
      if (s > cap) {
        long ncap = cap ? cap : 64;
        while (ncap < s) ncap *= 2;
        step_rec *t = realloc(rec, (size_t)ncap * sizeof *rec);
        if (!t) {
          vlm_error_at(__FILE__, __LINE__, __func__, "out of memory reading %s", path);
          ok = 0;
        } else {
          memset(t + cap, 0, (size_t)(ncap - cap) * sizeof *rec);
          rec = t;
          cap = ncap;
        }
      }
      if (ok) {
        step_rec *x = &rec[s - 1];
        x->step_time = tt->valuedouble;
        x->comm = num(o, "t_gather") + num(o, "t_reduce");
        x->io = num(o, "t_io");
        x->tokens = num(o, "tokens");
        x->gflops = num(o, "gflops");
        x->present = 1;
        if (s > max_step) max_step = s;
      }
    }
    cJSON_Delete(o);
  }
  free(line);
  fclose(f);
  if (!ok) {
    free(rec);
    return -1;
  }
  double *times = malloc((size_t)(max_step > 0 ? max_step : 1) * sizeof(double));
  double *gf = malloc((size_t)(max_step > 0 ? max_step : 1) * sizeof(double));
  if (!times || !gf) {
    free(rec), free(times), free(gf);
    VLM_FAIL("out of memory reading %s", path);
  }
  for (long s = skip; s < max_step; s++) {
    if (!rec[s].present) continue;
    times[r->steps] = rec[s].step_time;
    gf[r->steps] = rec[s].gflops;
    r->steps++;
    r->sum_step += rec[s].step_time;
    r->sum_comm += rec[s].comm;
    r->sum_io += rec[s].io;
    r->sum_tokens += rec[s].tokens;
  }
  free(rec);
  if (r->steps == 0) {
    free(times), free(gf);
    VLM_FAIL("%s: %ld step(s), none left after skipping the first %ld (run more steps or lower "
             "--skip)", path, max_step, skip);
  }
  r->median_step = median(times, r->steps);
  r->median_gflops = median(gf, r->steps);
  free(times);
  free(gf);
  return 0;
}

static int cmp_ranks(const void *a, const void *b) {
  return ((const run_stats *)a)->ranks - ((const run_stats *)b)->ranks;
}

/* Pools the runs (sorted by ranks) into one point per rank count. */
static int make_points(run_stats *runs, int n, point *pts, int weak) {
  int np = 0;
  for (int i = 0; i < n;) {
    int j = i;
    while (j < n && runs[j].ranks == runs[i].ranks) j++;
    point *p = &pts[np++];
    memset(p, 0, sizeof *p);
    p->ranks = runs[i].ranks;
    p->runs = j - i;
    double med[MAX_RUNS], gfl[MAX_RUNS], sum_step = 0, sum_comm = 0, sum_io = 0, sum_tok = 0;
    p->t_min = INFINITY;
    p->t_max = 0;
    for (int k = i; k < j; k++) {
      med[k - i] = runs[k].median_step;
      gfl[k - i] = runs[k].median_gflops;
      if (runs[k].median_step < p->t_min) p->t_min = runs[k].median_step;
      if (runs[k].median_step > p->t_max) p->t_max = runs[k].median_step;
      p->steps += runs[k].steps;
      sum_step += runs[k].sum_step;
      sum_comm += runs[k].sum_comm;
      sum_io += runs[k].sum_io;
      sum_tok += runs[k].sum_tokens;
    }
    p->t = median(med, p->runs);
    p->gflops = median(gfl, p->runs);
    p->tokens_per_s = sum_step > 0 ? sum_tok / sum_step : 0;
    p->comm_share = sum_step > 0 ? sum_comm / sum_step : 0;
    p->io_share = sum_step > 0 ? sum_io / sum_step : 0;
    i = j;
  }
  const point *b = &pts[0];
  for (int k = 0; k < np; k++) {
    point *p = &pts[k];
    p->speedup = p->t > 0 ? b->t / p->t : 0;
    if (weak) {
      p->eff = p->speedup;
      p->ideal_t = b->t;
    } else {
      p->eff = p->t > 0 ? b->t * b->ranks / (p->ranks * p->t) : 0;
      p->ideal_t = b->t * b->ranks / p->ranks;
    }
  }
  return np;
}

/* PATH.png -> PATH.EXT (or PATH.EXT appended when it does not end in .png). */
static void sibling(char *out, size_t n, const char *png, const char *ext) {
  size_t len = strlen(png);
  if (len > 4 && strcmp(png + len - 4, ".png") == 0) len -= 4;
  snprintf(out, n, "%.*s.%s", (int)len, png, ext);
}

static int run_gnuplot(const char *script) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) VLM_FAIL("cannot start gnuplot: fork: %s", strerror(errno));
  if (pid == 0) {
    char *argv[] = {"gnuplot", (char *)script, NULL};
    execvp(argv[0], argv);
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) VLM_FAIL("waiting for gnuplot: %s", strerror(errno));
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
    VLM_FAIL("cannot run gnuplot: is it installed? (Debian: gnuplot-nox, in "
             "scripts/install-deps.sh); the data and script are in %s", script);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    VLM_FAIL("gnuplot %s failed (status %d): see its messages above", script,
             WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  return 0;
}

static int write_plot(const point *pts, int np, const char *png, int weak) {
  if (strchr(png, '\'') || strchr(png, '\n'))
    VLM_FAIL("--plot %s: the path must not contain a quote or a newline", png);
  char dat[4096], gp[4096];
  sibling(dat, sizeof dat, png, "dat");
  sibling(gp, sizeof gp, png, "gp");
  FILE *f = fopen(dat, "w");
  if (!f) VLM_FAIL("cannot write %s: %s", dat, strerror(errno));
  fprintf(f, "# ranks  median_step_s  min_s  max_s  ideal_s  efficiency  tokens_per_s  comm_share\n");
  double lo = INFINITY, hi = 0;
  for (int k = 0; k < np; k++) {
    const point *p = &pts[k];
    fprintf(f, "%d %.9g %.9g %.9g %.9g %.9g %.9g %.9g\n", p->ranks, p->t, p->t_min, p->t_max,
            p->ideal_t, p->eff, p->tokens_per_s, p->comm_share);
    const double vals[3] = {p->t_min, p->t_max, p->ideal_t};
    for (int v = 0; v < 3; v++) {
      if (vals[v] > 0 && vals[v] < lo) lo = vals[v];
      if (vals[v] > hi) hi = vals[v];
    }
  }
  if (fclose(f) != 0) VLM_FAIL("cannot write %s: %s", dat, strerror(errno));
  if (!(lo > 0)) lo = hi > 0 ? hi / 2 : 1e-3;
  double emax = 1.0;
  for (int k = 0; k < np; k++)
    if (pts[k].eff > emax) emax = pts[k].eff;
  f = fopen(gp, "w");
  if (!f) VLM_FAIL("cannot write %s: %s", gp, strerror(errno));
  fprintf(f,
          "# %s: written by `vlmtrain scaling`; `gnuplot %s` redraws %s\n"
          "set terminal pngcairo size 1200,480 font ',10'\n"
          "set output '%s'\n"
          "set multiplot layout 1,2 title 'vlmtrain %s scaling (median step time, first steps "
          "skipped)'\n"
          "set logscale x 2\n"
          "set xrange [%g:%g]\n"
          "set xlabel 'MPI ranks'\n"
          "set grid\n"
          "set key top right\n"
          "set logscale y 2\n"
          "set yrange [%g:%g]\n"
          "set ylabel 'seconds per step'\n"
          "plot '%s' using 1:5 with lines dashtype 2 lw 2 title 'ideal', \\\n"
          "     '%s' using 1:2:3:4 with yerrorlines lw 2 pt 7 title 'measured (min-max of runs)'\n"
          "unset logscale y\n"
          "set yrange [0:%g]\n"
          "set ylabel '%s'\n"
          "plot 1 with lines dashtype 2 lw 2 title 'ideal', \\\n"
          "     '%s' using 1:6 with linespoints lw 2 pt 7 title 'measured'\n"
          "unset multiplot\n",
          gp, gp, png, png, weak ? "weak" : "strong", pts[0].ranks / 1.5, pts[np - 1].ranks * 1.5,
          lo / 1.5, hi * 1.5, dat, dat, emax * 1.15,
          weak ? "weak-scaling efficiency T(p0) / T(p)" : "efficiency T(p0) p0 / (p T(p))", dat);
  if (fclose(f) != 0) VLM_FAIL("cannot write %s: %s", gp, strerror(errno));
  VLM_CHECK(run_gnuplot(gp));
  return 0;
}

int cmd_scaling(int argc, char **argv) {
  opt o[] = {
      {"--weak", NULL, NULL, "weak scaling: efficiency T(p0)/T(p) (the work per rank is fixed)", 0, 0},
      {"--plot", "FILE.png", "scaling.png", "PNG to write (gnuplot); its .dat and .gp are kept beside it; \"none\": no plot", 0, 0},
      {"--skip", "N", "1", "warm-up steps of each run left out of the medians", 0, 0},
  };
  const char *dirs[MAX_RUNS];
  int n_dirs = 0;
  int rc = opts_parse("scaling", "RUNDIR... [--weak] [--plot FILE.png] [--skip N]", o, 3, argc, argv,
                      dirs, MAX_RUNS, &n_dirs);
  if (rc) return rc > 0 ? 0 : -1;
  if (n_dirs == 0)
    VLM_FAIL("vlmtrain scaling: give one or more run directories (see vlmtrain scaling --help)");
  const int weak = o[0].value[0] == '1';
  long skip;
  VLM_CHECK(opt_long(&o[2], &skip));
  if (skip < 0) VLM_FAIL("option --skip: expected 0 or more steps, found %ld", skip);

  run_stats *runs = calloc((size_t)n_dirs, sizeof *runs);
  point *pts = calloc((size_t)n_dirs, sizeof *pts);
  if (!runs || !pts) {
    free(runs), free(pts);
    VLM_FAIL("out of memory");
  }
  int ok = 1;
  for (int i = 0; i < n_dirs && ok; i++) ok = load_run(&runs[i], dirs[i], skip) == 0;
  if (!ok) {
    free(runs), free(pts);
    return -1;
  }
  qsort(runs, (size_t)n_dirs, sizeof *runs, cmp_ranks);
  const int np = make_points(runs, n_dirs, pts, weak);

  printf("%s scaling over %d run(s); baseline p0 = %d rank%s; medians over steps > %ld of each "
         "run; efficiency %s\n",
         weak ? "weak" : "strong", n_dirs, pts[0].ranks, pts[0].ranks == 1 ? "" : "s", skip,
         weak ? "T(p0) / T(p)" : "T(p0) p0 / (p T(p))");
  printf("%6s %5s %6s %14s %21s %8s %10s %11s %10s %6s %6s\n", "ranks", "runs", "steps",
         "step time (s)", "min-max over runs (s)", "speedup", "efficiency", "tokens/s", "GFLOP/s",
         "comm", "I/O");
  for (int k = 0; k < np; k++) {
    const point *p = &pts[k];
    char spread[48];
    snprintf(spread, sizeof spread, "%.4f-%.4f", p->t_min, p->t_max);
    printf("%6d %5d %6ld %14.4f %21s %8.2f %9.1f%% %11.0f %10.2f %5.1f%% %5.1f%%\n", p->ranks,
           p->runs, p->steps, p->t, spread, p->speedup, 100 * p->eff, p->tokens_per_s, p->gflops,
           100 * p->comm_share, 100 * p->io_share);
  }
  printf("comm: exposed gather + reduce time (t_gather + t_reduce of rank 0) as a share of the "
         "step time; I/O likewise (t_io)\n");
  for (int i = 0; i < n_dirs; i++)
    printf("  run %s: %d rank%s, %ld steps, median %.4f s\n", runs[i].dir, runs[i].ranks,
           runs[i].ranks == 1 ? "" : "s", runs[i].steps, runs[i].median_step);
  if (strcmp(o[1].value, "none") != 0) {
    ok = write_plot(pts, np, o[1].value, weak) == 0;
    if (ok) printf("plot: %s\n", o[1].value);
  }
  free(runs);
  free(pts);
  return ok ? 0 : -1;
}
