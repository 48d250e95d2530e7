/* app/main.c: the vlmtrain program: starts MPI, dispatches to a subcommand,
 * and turns its result into the exit status (0 success, 1 error, 2 usage). */
#define _POSIX_C_SOURCE 200809L /* setenv, execv */
#include <mpi.h>
#include <omp.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app/commands.h"
#include "common/cpus.h"
#include "common/vlm.h"
#include "slurm/runtime.h"

typedef struct {
  const char *name;
  int (*run)(int, char **);
  const char *help;
} command;

static const command COMMANDS[] = {
    {"params", cmd_params, "print the parameter registry summary of a model config"},
    {"init", cmd_init, "write a randomly initialised model directory (config.json + model.safetensors)"},
    {"mkdata", cmd_mkdata, "write an HDF5 dataset from Monkey/ChatML JSON, images and a tokenizer (--json), or a synthetic one"},
    {"train", cmd_train, "train a model on a dataset; writes RUNDIR/metrics.jsonl and RUNDIR/final/"},
    {"scaling", cmd_scaling, "scaling-study table and PNG from run directories (docs/slurm.md)"},
    {"import", cmd_import, "convert a HF safetensors model directory to one vlmtrain model file (HDF5)"},
    {"export", cmd_export, "write a HF safetensors directory from a vlmtrain model or checkpoint file"},
};
static const int N_COMMANDS = sizeof COMMANDS / sizeof COMMANDS[0];

/* OpenMP threads that wait at a barrier spin first, then sleep. libgomp's default spin
 * (300,000 iterations when OMP_WAIT_POLICY is unset) cost 10-15 % of a `small` training
 * step on 2 cores, and far more when another program shares the cores; sleeping at once
 * (OMP_WAIT_POLICY=passive) fixed that but made the `tiny` step 2-3x slower (its many
 * short parallel regions then pay a wake-up each). A short spin, GOMP_SPINCOUNT=1000,
 * was as fast as either on both (benchmarks/README.md, "OpenMP wait policy"). libgomp
 * reads these variables once, when it is loaded, before main runs; so when the user has
 * set neither, vlmtrain sets GOMP_SPINCOUNT and executes itself again (same process,
 * same arguments) before anything else happens. */
static void default_omp_spin(char **argv) {
  if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
  if (setenv("GOMP_SPINCOUNT", "1000", 1) != 0) return;
  /* With OMP_PROC_BIND or OMP_PLACES set, libgomp has bound this thread to the first
   * place already, and the new image would inherit that one CPU as the process's
   * mask: every thread of the run would then be bound to it. */
  if (vlm_cpus_restore_process_mask() != 0)
    fprintf(stderr, "vlmtrain: warning: cannot restore the CPU mask before re-executing (%s); "
                    "OpenMP threads may be confined to one CPU\n", strerror(errno));
  execv("/proc/self/exe", argv);
  fprintf(stderr, "vlmtrain: warning: cannot re-execute with GOMP_SPINCOUNT=1000 (%s); "
                  "OpenMP threads keep libgomp's long default spin\n", strerror(errno));
}

static void usage(FILE *f) {
  fprintf(f, "usage: vlmtrain COMMAND [OPTIONS]\n\ncommands:\n");
  for (int i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-8s %s\n", COMMANDS[i].name, COMMANDS[i].help);
  fprintf(f, "\n'vlmtrain COMMAND --help' lists a command's options with their defaults.\n"
             "Run under MPI with mpirun or srun --mpi=pmix; without either it runs as one process.\n"
             "GOMP_SPINCOUNT defaults to 1000 unless GOMP_SPINCOUNT or OMP_WAIT_POLICY is set.\n");
}

int main(int argc, char **argv) {
  default_omp_spin(argv);
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
    usage(stdout);
    return 0;
  }
  const command *cmd = NULL;
  for (int i = 0; i < N_COMMANDS; i++)
    if (strcmp(argv[1], COMMANDS[i].name) == 0) cmd = &COMMANDS[i];
  if (!cmd) {
    fprintf(stderr, "vlmtrain: error: unknown command \"%s\"\n\n", argv[1]);
    usage(stderr);
    return 2;
  }
  if (rt_preinit_check() != 0) return 1; /* srun without PMIx: say so before MPI_Init fails */
  int provided = 0, rank = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  vlm_set_rank(rank);
  omp_set_max_active_levels(1); /* kernels called inside a parallel region run single-threaded */
  int rc = cmd->run(argc - 2, argv + 2);
  MPI_Finalize();
  return rc == 0 ? 0 : rc == RT_EXIT_STOPPED ? RT_EXIT_STOPPED : rc == CMD_USAGE_ERROR ? 2 : 1;
}
