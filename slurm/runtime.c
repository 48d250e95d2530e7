/* slurm/runtime.c: start-up cross-check against Slurm and PMIx, signal
 * flags, self-requeue and the collective watchdog (see slurm/runtime.h and
 * docs/slurm.md). Everything here reads the environment Slurm, PMIx and
 * mpirun give each task; it links no Slurm or PMIx library. */
#define _POSIX_C_SOURCE 200809L
#include "slurm/runtime.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/vlm.h"

/* ---- environment helpers ---- */

static const char *env_str(const char *name) {
  const char *v = getenv(name);
  return v && v[0] ? v : NULL;
}

/* The integer value of an environment variable; -1 when unset or not an integer. */
static long env_long(const char *name) {
  const char *v = env_str(name);
  if (!v) return -1;
  char *end = NULL;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || !end || *end || x < 0) return -1;
  return x;
}

static const char *env_or(const char *name, const char *def) {
  const char *v = env_str(name);
  return v ? v : def;
}

/* How the processes were started. */
typedef enum {
  LAUNCH_NONE,   /* no launcher: a plain process (an MPI singleton) outside Slurm */
  LAUNCH_MPIRUN, /* Open MPI's mpirun (inside a Slurm job or not) */
  LAUNCH_SRUN,   /* srun: each rank is a task of a Slurm job step */
  LAUNCH_BATCH,  /* run directly by the batch script of a Slurm job: no srun, no mpirun */
} launch_kind;

static launch_kind detect_launch(void) {
  if (env_str("OMPI_COMM_WORLD_SIZE")) return LAUNCH_MPIRUN;
  const int in_step = env_str("SLURM_STEP_ID") || env_str("SLURM_STEPID");
  if (in_step && env_str("SLURM_PROCID")) return LAUNCH_SRUN;
  if (env_str("SLURM_JOB_ID")) return LAUNCH_BATCH;
  return LAUNCH_NONE;
}

/* The tasks of this srun step: SLURM_STEP_NUM_TASKS, else SLURM_NTASKS. */
static long step_tasks(const char **name) {
  long v = env_long("SLURM_STEP_NUM_TASKS");
  *name = "SLURM_STEP_NUM_TASKS";
  if (v < 0) {
    v = env_long("SLURM_NTASKS");
    *name = "SLURM_NTASKS";
  }
  return v;
}

int rt_in_slurm(void) { return env_str("SLURM_JOB_ID") != NULL; }

/* ---- start-up checks ---- */

int rt_preinit_check(void) {
#ifdef OPEN_MPI
  /* Open MPI 4 wires the tasks that srun starts through PMIx only. */
  if (detect_launch() != LAUNCH_SRUN || env_str("PMIX_RANK")) return 0;
  const char *tname;
  const long tasks = step_tasks(&tname);
  if (env_long("SLURM_PROCID") > 0) return -1; /* task 0 reports for all */
  fprintf(stderr,
          "vlmtrain: error: srun started this task (job %s, step %s, %s=%ld) without PMIx "
          "(SLURM_MPI_TYPE=%s), so MPI cannot join the %ld tasks into one job and each would run "
          "alone as a 1-rank job.\n  Start vlmtrain with `srun --mpi=pmix vlmtrain ...` (or set "
          "MpiDefault=pmix in slurm.conf); `srun --mpi=list` shows the plugins this Slurm has.\n",
          env_or("SLURM_JOB_ID", "?"), env_or("SLURM_STEP_ID", env_or("SLURM_STEPID", "?")), tname,
          tasks, env_or("SLURM_MPI_TYPE", "none"), tasks);
  return -1;
#else
  return 0;
#endif
}

/* Compares one number from the launcher with MPI's; on a mismatch writes the
 * error into err (when it is still empty) and returns 1. */
static int mismatch(char *err, size_t n, const char *var, long launcher, const char *what, long mpi,
                    const char *fix) {
  if (launcher < 0 || launcher == mpi) return 0;
  if (!err[0])
    snprintf(err, n, "%s=%ld but MPI gives %s %ld: %s", var, launcher, what, mpi, fix);
  return 1;
}

static const char *FIX_SRUN =
    "the tasks were not joined into one MPI job (each started alone, or srun and MPI disagree). "
    "Start vlmtrain with `srun --mpi=pmix vlmtrain ...` (srun --mpi=list shows what this Slurm "
    "offers; MpiDefault=pmix in slurm.conf makes it the default)";
static const char *FIX_BATCH =
    "vlmtrain was started directly by the batch script, so it runs alone as a 1-rank job. Start "
    "it with `srun --mpi=pmix vlmtrain ...` inside the job script";
static const char *FIX_MPIRUN = "mpirun and MPI disagree about this job: check that mpirun and "
                                "the MPI library vlmtrain was built against are the same Open MPI";

int rt_startup_check(MPI_Comm world, char *desc, size_t n) {
  int rank, size, lrank, lsize;
  MPI_Comm_rank(world, &rank);
  MPI_Comm_size(world, &size);
  MPI_Comm node;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &lrank);
  MPI_Comm_size(node, &lsize);
  MPI_Comm_free(&node);
  int nodes = lrank == 0, per_node[2] = {lsize, -lsize}; /* min, -max */
  MPI_Allreduce(MPI_IN_PLACE, &nodes, 1, MPI_INT, MPI_SUM, world);
  MPI_Allreduce(MPI_IN_PLACE, per_node, 2, MPI_INT, MPI_MIN, world);

  const launch_kind how = detect_launch();
  char err[1024] = "";
  int bad = 0;
  const char *tname;
  long tasks;
  switch (how) {
  case LAUNCH_SRUN:
    tasks = step_tasks(&tname);
    bad += mismatch(err, sizeof err, tname, tasks, "a world of", size, FIX_SRUN);
    bad += mismatch(err, sizeof err, "SLURM_PROCID", env_long("SLURM_PROCID"), "rank", rank, FIX_SRUN);
    bad += mismatch(err, sizeof err, "SLURM_LOCALID", env_long("SLURM_LOCALID"), "node-local rank",
                    lrank, FIX_SRUN);
    bad += mismatch(err, sizeof err, "SLURM_STEP_NUM_NODES", env_long("SLURM_STEP_NUM_NODES"),
                    "a node count of", nodes, FIX_SRUN);
    break;
  case LAUNCH_BATCH:
    bad += mismatch(err, sizeof err, "SLURM_NTASKS", env_long("SLURM_NTASKS"), "a world of", size,
                    FIX_BATCH);
    break;
  case LAUNCH_MPIRUN:
    bad += mismatch(err, sizeof err, "OMPI_COMM_WORLD_SIZE", env_long("OMPI_COMM_WORLD_SIZE"),
                    "a world of", size, FIX_MPIRUN);
    bad += mismatch(err, sizeof err, "OMPI_COMM_WORLD_RANK", env_long("OMPI_COMM_WORLD_RANK"),
                    "rank", rank, FIX_MPIRUN);
    bad += mismatch(err, sizeof err, "OMPI_COMM_WORLD_LOCAL_RANK",
                    env_long("OMPI_COMM_WORLD_LOCAL_RANK"), "node-local rank", lrank, FIX_MPIRUN);
    break;
  case LAUNCH_NONE:
    break;
  }
  bad += mismatch(err, sizeof err, "PMIX_RANK", env_long("PMIX_RANK"), "rank", rank,
                  how == LAUNCH_MPIRUN ? FIX_MPIRUN : FIX_SRUN);

  /* Every rank returns the same verdict; the lowest failing rank reports.
   * Singletons are each rank 0 of their own world: only task 0 reports. */
  int first_bad = bad ? rank : size;
  MPI_Allreduce(MPI_IN_PLACE, &first_bad, 1, MPI_INT, MPI_MIN, world);
  if (first_bad < size) {
    const int singleton_echo = size == 1 && env_long("SLURM_PROCID") > 0;
    if (rank == first_bad && !singleton_echo)
      vlm_error_at(__FILE__, __LINE__, __func__, "start-up check failed on rank %d of %d: %s", rank,
                   size, err);
    return -1;
  }

  if (desc && n > 0) {
    char per[32];
    if (per_node[0] == -per_node[1])
      snprintf(per, sizeof per, "%d", per_node[0]);
    else
      snprintf(per, sizeof per, "%d-%d", per_node[0], -per_node[1]);
    const char *launcher = how == LAUNCH_SRUN     ? "srun --mpi="
                           : how == LAUNCH_MPIRUN ? "mpirun"
                           : how == LAUNCH_BATCH  ? "one process of the batch script"
                                                  : "one process, no launcher";
    const char *mpi_type = how == LAUNCH_SRUN ? env_or("SLURM_MPI_TYPE", "?") : "";
    char pmix[48] = "";
    if (env_str("PMIX_VERSION")) snprintf(pmix, sizeof pmix, ", PMIx %s", env_str("PMIX_VERSION"));
    if (rt_in_slurm()) {
      char array[96] = "";
      if (env_str("SLURM_ARRAY_JOB_ID"))
        snprintf(array, sizeof array, " (array %s_%s)", env_str("SLURM_ARRAY_JOB_ID"),
                 env_or("SLURM_ARRAY_TASK_ID", "?"));
      snprintf(desc, n,
               "slurm job %s%s, restart %s, nodes %s (%s), %d rank%s on %d node%s, %s per node, "
               "%s%s%s",
               env_str("SLURM_JOB_ID"), array, env_or("SLURM_RESTART_COUNT", "0"),
               env_or("SLURM_JOB_NODELIST", "?"), env_or("SLURM_JOB_NUM_NODES", "?"), size,
               size == 1 ? "" : "s", nodes, nodes == 1 ? "" : "s", per, launcher, mpi_type, pmix);
    } else {
      snprintf(desc, n, "not under Slurm: %d rank%s on %d node%s, %s per node, %s%s", size,
               size == 1 ? "" : "s", nodes, nodes == 1 ? "" : "s", per, launcher, pmix);
    }
  }
  return 0;
}

/* ---- signals ---- */

static volatile sig_atomic_t g_sig_first; /* first signal received, 0 if none */
static volatile sig_atomic_t g_sig_mask;  /* RT_STOP_* bits of every signal received */

static void on_stop_signal(int signo) {
  if (!g_sig_first) g_sig_first = signo;
  g_sig_mask |= signo == SIGUSR1 ? RT_STOP_REQUEUE : RT_STOP_EXIT;
}

int rt_signals_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaddset(&sa.sa_mask, SIGUSR1); /* one handler at a time */
  sigaddset(&sa.sa_mask, SIGTERM);
  sa.sa_flags = SA_RESTART;
  if (sigaction(SIGUSR1, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0)
    VLM_FAIL("cannot install the SIGUSR1/SIGTERM handlers: %s", strerror(errno));
  return 0;
}

int rt_signal_received(void) { return g_sig_first; }

void rt_signals_reset(void) {
  g_sig_first = 0;
  g_sig_mask = 0;
}

int rt_stop_requested(MPI_Comm world) {
  int mask = g_sig_mask;
  rt_watchdog_arm("the step-boundary agreement on stop signals (allreduce)");
  MPI_Allreduce(MPI_IN_PLACE, &mask, 1, MPI_INT, MPI_BOR, world);
  rt_watchdog_disarm();
  return mask;
}

/* ---- requeue ---- */

int rt_requeue(void) {
  if (!rt_in_slurm()) return RT_EXIT_STOPPED;
  char job[128];
  if (env_str("SLURM_ARRAY_JOB_ID") && env_str("SLURM_ARRAY_TASK_ID"))
    snprintf(job, sizeof job, "%s_%s", env_str("SLURM_ARRAY_JOB_ID"), env_str("SLURM_ARRAY_TASK_ID"));
  else
    snprintf(job, sizeof job, "%s", env_str("SLURM_JOB_ID"));
  fflush(NULL); /* the child must not flush our buffers a second time */
  pid_t pid = fork();
  if (pid < 0) VLM_FAIL("cannot requeue job %s: fork failed: %s", job, strerror(errno));
  if (pid == 0) {
    /* The child is one of the job's processes: a second SIGUSR1 or SIGTERM sent to the
     * job (a repeated `scancel --signal`, the time limit) would kill scontrol midway
     * with its default action. Ignored dispositions survive exec, so it finishes. */
    signal(SIGUSR1, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    char *argv[] = {"scontrol", "requeue", job, NULL};
    execvp(argv[0], argv);
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) VLM_FAIL("cannot requeue job %s: waitpid: %s", job, strerror(errno));
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
    VLM_FAIL("cannot requeue job %s: could not run scontrol (is it in PATH?); resubmit the job "
             "with --resume auto", job);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "`scontrol requeue %s` failed with status %d (was the job submitted with "
                 "--requeue, and does JobRequeue allow it?); the checkpoint is written: resubmit "
                 "with --resume auto", job, code);
    return code;
  }
  return 0;
}

/* ---- watchdog ---- */

static _Atomic(const char *) g_wd_what; /* armed collective, NULL when disarmed */
static _Atomic(const char *) g_wd_name; /* and what it works on (a module name), or NULL */
static _Atomic int64_t g_wd_since;      /* CLOCK_MONOTONIC nanoseconds when armed */
static _Atomic int g_wd_running;
static int g_wd_started, g_wd_rank;
static double g_wd_timeout;
static pthread_t g_wd_thread;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void wd_fire(const char *what, const char *name, double waited) {
  char host[256] = "?";
  gethostname(host, sizeof host - 1);
  char msg[1024];
  int len = snprintf(msg, sizeof msg,
                     "vlmtrain: watchdog: rank %d (host %s, pid %ld) has waited %.1f s in %s%s%s "
                     "(timeout %.0f s): a rank that does not report this is dead, hung or far "
                     "behind; aborting the job (MPI_Abort, exit status %d)\n",
                     g_wd_rank, host, (long)getpid(), waited, what, name ? " " : "",
                     name ? name : "", g_wd_timeout, RT_EXIT_HUNG);
  if (len > 0) {
    ssize_t w = write(STDERR_FILENO, msg, (size_t)len < sizeof msg ? (size_t)len : sizeof msg - 1);
    (void)w;
  }
  MPI_Abort(MPI_COMM_WORLD, RT_EXIT_HUNG);
  _exit(RT_EXIT_HUNG); /* MPI_Abort does not return; if it did, still leave */
}

static void *wd_main(void *arg) {
  (void)arg;
  sigset_t block; /* signals go to the main thread */
  sigemptyset(&block);
  sigaddset(&block, SIGUSR1);
  sigaddset(&block, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &block, NULL);
  double poll = g_wd_timeout / 10;
  if (poll > 1.0) poll = 1.0;
  if (poll < 0.01) poll = 0.01;
  const struct timespec tick = {(time_t)poll, (long)((poll - (double)(time_t)poll) * 1e9)};
  const int64_t limit = (int64_t)(g_wd_timeout * 1e9);
  while (atomic_load(&g_wd_running)) {
    nanosleep(&tick, NULL);
    /* what first, then since: arm stores since before what, so a fresh what
     * never pairs with an old time */
    const char *what = atomic_load_explicit(&g_wd_what, memory_order_acquire);
    if (!what) continue;
    const int64_t since = atomic_load_explicit(&g_wd_since, memory_order_relaxed);
    const char *name = atomic_load_explicit(&g_wd_name, memory_order_relaxed);
    const int64_t waited = now_ns() - since;
    if (waited > limit && atomic_load_explicit(&g_wd_what, memory_order_acquire) == what &&
        atomic_load_explicit(&g_wd_since, memory_order_relaxed) == since)
      wd_fire(what, name, (double)waited * 1e-9);
  }
  return NULL;
}

int rt_watchdog_start(double timeout_s) {
  if (g_wd_started || !(timeout_s > 0)) return 0;
  int init = 0;
  MPI_Initialized(&init);
  if (init) MPI_Comm_rank(MPI_COMM_WORLD, &g_wd_rank);
  g_wd_timeout = timeout_s;
  atomic_store(&g_wd_what, NULL);
  atomic_store(&g_wd_running, 1);
  int rc = pthread_create(&g_wd_thread, NULL, wd_main, NULL);
  if (rc != 0) VLM_FAIL("cannot start the watchdog thread: %s", strerror(rc));
  g_wd_started = 1;
  return 0;
}

void rt_watchdog_arm_of(const char *what, const char *name) {
  if (!g_wd_started) return;
  atomic_store_explicit(&g_wd_since, now_ns(), memory_order_relaxed);
  atomic_store_explicit(&g_wd_name, name, memory_order_relaxed);
  atomic_store_explicit(&g_wd_what, what ? what : "an unnamed collective", memory_order_release);
}

void rt_watchdog_arm(const char *what) { rt_watchdog_arm_of(what, NULL); }

void rt_watchdog_disarm(void) {
  if (g_wd_started) atomic_store_explicit(&g_wd_what, NULL, memory_order_release);
}

void rt_watchdog_stop(void) {
  if (!g_wd_started) return;
  atomic_store(&g_wd_running, 0);
  pthread_join(g_wd_thread, NULL);
  g_wd_started = 0;
}
