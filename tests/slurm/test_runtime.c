/* tests/slurm/test_runtime.c: unit tests of slurm/runtime.{h,c} without a
 * Slurm cluster. Runs as one process or under `mpirun -np N`.
 *
 *   test_runtime unit        start-up check against faked SLURM_*, PMIX_RANK
 *                            and OMPI_* environments (mismatches are errors
 *                            naming both numbers and the fix), the pre-MPI_Init
 *                            srun check, signal flags (raise, agreement over
 *                            ranks, SA_RESTART under a storm of signals),
 *                            requeue through a fake `scontrol` in PATH, and
 *                            the watchdog not firing on collectives that end.
 *   test_runtime preinit     rt_preinit_check() before MPI_Init, as vlmtrain's
 *                            main() does (under srun in tests/slurm/run_slurm_tests.py).
 *   test_runtime hang SECS   the watchdog with a SECS timeout: the last rank
 *                            never reaches the barrier the others wait in, so
 *                            the job must abort with the watchdog's message
 *                            (checked by tests/slurm/test_runtime.py).
 *
 * The real environment of the process is saved and restored around the
 * faked ones, so the test also passes when run inside a Slurm job. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <mpi.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/vlm.h"
#include "slurm/runtime.h"

static int g_rank, g_size, g_lrank, g_pass, g_fail;

#define CHECK(cond, ...)                                   \
  do {                                                     \
    if (cond) {                                            \
      g_pass++;                                            \
    } else {                                               \
      g_fail++;                                            \
      fprintf(stderr, "FAIL (rank %d) %s:%d: ", g_rank, __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                        \
      fprintf(stderr, "\n");                               \
    }                                                      \
  } while (0)

/* Every variable the runtime reads; saved at start, cleared per case. */
static const char *VARS[] = {
    "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_STEPID", "SLURM_PROCID", "SLURM_LOCALID",
    "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES",
    "SLURM_JOB_NODELIST", "SLURM_RESTART_COUNT", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
    "SLURM_MPI_TYPE", "PMIX_RANK", "PMIX_VERSION", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK", "PATH"};
enum { N_VARS = sizeof VARS / sizeof VARS[0] };
static char *g_saved[N_VARS];

static void env_save(void) {
  for (int i = 0; i < N_VARS; i++) {
    const char *v = getenv(VARS[i]);
    g_saved[i] = v ? strdup(v) : NULL;
  }
}

static void env_restore(void) {
  for (int i = 0; i < N_VARS; i++) {
    if (g_saved[i])
      setenv(VARS[i], g_saved[i], 1);
    else
      unsetenv(VARS[i]);
  }
}

/* Clears every runtime variable but PATH. */
static void env_clear(void) {
  for (int i = 0; i < N_VARS; i++)
    if (strcmp(VARS[i], "PATH") != 0) unsetenv(VARS[i]);
}

static void setenv_long(const char *name, long v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%ld", v);
  setenv(name, buf, 1);
}

/* A consistent srun step of this world: job 77, step 0, PMIx. */
static void env_fake_srun(void) {
  env_clear();
  setenv("SLURM_JOB_ID", "77", 1);
  setenv("SLURM_STEP_ID", "0", 1);
  setenv_long("SLURM_PROCID", g_rank);
  setenv_long("SLURM_LOCALID", g_lrank);
  setenv_long("SLURM_NTASKS", g_size);
  setenv_long("SLURM_STEP_NUM_TASKS", g_size);
  setenv("SLURM_STEP_NUM_NODES", "1", 1);
  setenv("SLURM_JOB_NUM_NODES", "1", 1);
  setenv("SLURM_JOB_NODELIST", "node07", 1);
  setenv("SLURM_MPI_TYPE", "pmix", 1);
  setenv_long("PMIX_RANK", g_rank);
}

static int contains(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

/* Runs the start-up check quietly; returns its result, the error in *err. */
static int startup(char *desc, size_t n, const char **err) {
  vlm_set_quiet_errors(1);
  int rc = rt_startup_check(MPI_COMM_WORLD, desc, n);
  vlm_set_quiet_errors(0);
  *err = vlm_last_error();
  return rc;
}

static void test_startup(void) {
  char desc[512];
  const char *err;

  env_clear();
  CHECK(startup(desc, sizeof desc, &err) == 0, "plain start refused: %s", err);
  CHECK(contains(desc, "not under Slurm") && contains(desc, "rank"), "desc: %s", desc);

  env_fake_srun();
  setenv("SLURM_RESTART_COUNT", "2", 1);
  setenv("SLURM_ARRAY_JOB_ID", "76", 1);
  setenv("SLURM_ARRAY_TASK_ID", "3", 1);
  CHECK(startup(desc, sizeof desc, &err) == 0, "consistent srun step refused: %s", err);
  CHECK(contains(desc, "slurm job 77 (array 76_3), restart 2, nodes node07 (1)"), "desc: %s", desc);
  CHECK(contains(desc, "srun --mpi=pmix"), "desc: %s", desc);
  char want[64];
  snprintf(want, sizeof want, "%d rank%s on 1 node", g_size, g_size == 1 ? "" : "s");
  CHECK(contains(desc, want), "desc lacks \"%s\": %s", want, desc);
  if (g_rank == 0) printf("startup line: %s\n", desc);

  /* srun started more tasks than MPI joined: the singleton case */
  env_fake_srun();
  setenv_long("SLURM_STEP_NUM_TASKS", g_size + 1);
  setenv_long("SLURM_NTASKS", g_size + 1);
  CHECK(startup(desc, sizeof desc, &err) == -1, "task-count mismatch accepted");
  if (g_rank == 0) {
    snprintf(want, sizeof want, "SLURM_STEP_NUM_TASKS=%d but MPI gives a world of %d", g_size + 1,
             g_size);
    CHECK(contains(err, want), "error lacks \"%s\": %s", want, err);
    CHECK(contains(err, "srun --mpi=pmix"), "error names no fix: %s", err);
  }

  /* SLURM_NTASKS alone (an older srun without SLURM_STEP_NUM_TASKS) */
  env_fake_srun();
  unsetenv("SLURM_STEP_NUM_TASKS");
  setenv_long("SLURM_NTASKS", g_size + 2);
  CHECK(startup(desc, sizeof desc, &err) == -1, "SLURM_NTASKS mismatch accepted");
  if (g_rank == 0) {
    snprintf(want, sizeof want, "SLURM_NTASKS=%d", g_size + 2);
    CHECK(contains(err, want), "error lacks \"%s\": %s", want, err);
  }

  /* a rank that srun numbered differently: the error comes from that rank */
  env_fake_srun();
  if (g_rank == g_size - 1) setenv_long("SLURM_PROCID", g_rank + 5);
  CHECK(startup(desc, sizeof desc, &err) == -1, "SLURM_PROCID mismatch accepted");
  if (g_rank == g_size - 1 && g_size > 1) { /* 1 rank: looks like an echoing singleton */
    snprintf(want, sizeof want, "SLURM_PROCID=%d but MPI gives rank %d", g_rank + 5, g_rank);
    CHECK(contains(err, want), "error lacks \"%s\": %s", want, err);
  }

  env_fake_srun();
  setenv("SLURM_STEP_NUM_NODES", "3", 1);
  CHECK(startup(desc, sizeof desc, &err) == -1, "node-count mismatch accepted");

  env_fake_srun();
  setenv_long("PMIX_RANK", g_rank + 1);
  CHECK(startup(desc, sizeof desc, &err) == -1, "PMIX_RANK mismatch accepted");
  if (g_rank == 0) CHECK(contains(err, "PMIX_RANK=1 but MPI gives rank 0"), "error: %s", err);

  /* vlmtrain run directly by a batch script of a 2-task (or larger) job */
  env_clear();
  setenv("SLURM_JOB_ID", "78", 1);
  setenv_long("SLURM_NTASKS", g_size + 1);
  setenv("SLURM_PROCID", "0", 1);
  CHECK(startup(desc, sizeof desc, &err) == -1, "batch-script singleton accepted");
  if (g_rank == 0) {
    snprintf(want, sizeof want, "SLURM_NTASKS=%d but MPI gives a world of %d", g_size + 1, g_size);
    CHECK(contains(err, want) && contains(err, "srun --mpi=pmix"), "error: %s", err);
  }
  setenv_long("SLURM_NTASKS", g_size);
  CHECK(startup(desc, sizeof desc, &err) == 0, "matching batch start refused: %s", err);

  /* mpirun inside a job: SLURM_PROCID describes the batch step, not the ranks */
  env_clear();
  setenv("SLURM_JOB_ID", "79", 1);
  setenv("SLURM_NTASKS", "64", 1);
  setenv("SLURM_PROCID", "0", 1);
  setenv_long("OMPI_COMM_WORLD_SIZE", g_size);
  setenv_long("OMPI_COMM_WORLD_RANK", g_rank);
  setenv_long("OMPI_COMM_WORLD_LOCAL_RANK", g_lrank);
  CHECK(startup(desc, sizeof desc, &err) == 0, "mpirun in a job refused: %s", err);
  CHECK(contains(desc, "mpirun"), "desc: %s", desc);
  setenv_long("OMPI_COMM_WORLD_SIZE", g_size + 1);
  CHECK(startup(desc, sizeof desc, &err) == -1, "OMPI_COMM_WORLD_SIZE mismatch accepted");
  env_clear();
}

static void test_preinit(void) {
  fflush(stderr);
  env_fake_srun();
  CHECK(rt_preinit_check() == 0, "srun --mpi=pmix refused before MPI_Init");
  unsetenv("PMIX_RANK");
  setenv("SLURM_MPI_TYPE", "none", 1);
  setenv("SLURM_PROCID", "1", 1); /* task 0 reports; this one only refuses */
  CHECK(rt_preinit_check() == -1, "srun --mpi=none accepted before MPI_Init");
  env_clear();
  setenv("SLURM_JOB_ID", "80", 1); /* the batch script itself is not a srun task */
  CHECK(rt_preinit_check() == 0, "batch script refused before MPI_Init");
  env_clear();
  CHECK(rt_preinit_check() == 0, "plain process refused before MPI_Init");
}

/* ---- signals ---- */

static pthread_t g_main_thread;

static void *signal_storm(void *arg) {
  int *fds = arg;
  const struct timespec gap = {0, 20 * 1000 * 1000};
  for (int i = 0; i < 5; i++) {
    nanosleep(&gap, NULL);
    pthread_kill(g_main_thread, i % 2 ? SIGUSR1 : SIGTERM);
  }
  nanosleep(&gap, NULL);
  char c = 'x';
  ssize_t w = write(fds[1], &c, 1);
  (void)w;
  return NULL;
}

static void test_signals(void) {
  CHECK(rt_signals_install() == 0, "install failed");
  rt_signals_reset();
  CHECK(rt_stop_requested(MPI_COMM_WORLD) == 0, "stop requested without a signal");
  if (g_rank == g_size - 1) raise(SIGUSR1); /* one rank only: all must agree */
  CHECK(rt_stop_requested(MPI_COMM_WORLD) == RT_STOP_REQUEUE, "SIGUSR1 on the last rank not agreed");
  if (g_rank == g_size - 1) {
    CHECK(rt_signal_received() == SIGUSR1, "first signal %d", rt_signal_received());
    raise(SIGTERM); /* a second signal: recorded, nothing else */
    raise(SIGUSR1);
    CHECK(rt_signal_received() == SIGUSR1, "first signal overwritten: %d", rt_signal_received());
  } else {
    CHECK(rt_signal_received() == 0, "a rank without a signal has one: %d", rt_signal_received());
  }
  CHECK(rt_stop_requested(MPI_COMM_WORLD) == (RT_STOP_REQUEUE | RT_STOP_EXIT), "USR1+TERM mask");
  rt_signals_reset();
  raise(SIGTERM);
  CHECK(rt_stop_requested(MPI_COMM_WORLD) == RT_STOP_EXIT, "SIGTERM alone must not requeue");

  /* SA_RESTART: a blocking read is not broken by five signals arriving in it */
  rt_signals_reset();
  int fds[2];
  CHECK(pipe(fds) == 0, "pipe: %s", strerror(errno));
  g_main_thread = pthread_self();
  pthread_t th;
  pthread_create(&th, NULL, signal_storm, fds);
  char c = 0;
  ssize_t r = read(fds[0], &c, 1);
  int e = errno;
  pthread_join(th, NULL);
  CHECK(r == 1 && c == 'x', "read interrupted by signals: %zd (%s)", r, strerror(e));
  CHECK(rt_signal_received() == SIGTERM, "storm's first signal %d", rt_signal_received());
  close(fds[0]);
  close(fds[1]);
  rt_signals_reset();
}

/* ---- requeue through a fake scontrol ---- */

static void test_requeue(void) {
  env_clear();
  CHECK(rt_requeue() == RT_EXIT_STOPPED, "outside Slurm rt_requeue must return %d", RT_EXIT_STOPPED);
  if (g_rank != 0) return;
  char dir[256], script[320], log[320], path[4096];
  snprintf(dir, sizeof dir, "slurm-fake-bin-%ld", (long)getpid());
  mkdir(dir, 0755);
  snprintf(script, sizeof script, "%s/scontrol", dir);
  snprintf(log, sizeof log, "%s/args", dir);
  FILE *f = fopen(script, "w");
  CHECK(f != NULL, "cannot write %s", script);
  if (!f) return;
  fprintf(f, "#!/bin/sh\necho \"$@\" > '%s'\nexit ${FAKE_SCONTROL_RC:-0}\n", log);
  fclose(f);
  chmod(script, 0755);
  char cwd[2048];
  if (!getcwd(cwd, sizeof cwd)) snprintf(cwd, sizeof cwd, ".");
  const char *old_path = g_saved[N_VARS - 1] ? g_saved[N_VARS - 1] : "/usr/bin:/bin";
  snprintf(path, sizeof path, "%s/%s:%s", cwd, dir, old_path);
  setenv("PATH", path, 1);

  char got[256] = "";
  setenv("SLURM_JOB_ID", "81", 1);
  CHECK(rt_requeue() == 0, "fake scontrol requeue failed");
  f = fopen(log, "r");
  if (f) {
    if (!fgets(got, sizeof got, f)) got[0] = 0;
    fclose(f);
  }
  CHECK(strcmp(got, "requeue 81\n") == 0, "scontrol got \"%s\"", got);

  setenv("SLURM_ARRAY_JOB_ID", "80", 1);
  setenv("SLURM_ARRAY_TASK_ID", "4", 1);
  CHECK(rt_requeue() == 0, "fake scontrol requeue (array) failed");
  f = fopen(log, "r");
  if (f) {
    if (!fgets(got, sizeof got, f)) got[0] = 0;
    fclose(f);
  }
  CHECK(strcmp(got, "requeue 80_4\n") == 0, "scontrol got \"%s\" for an array task", got);

  setenv("FAKE_SCONTROL_RC", "3", 1);
  vlm_set_quiet_errors(1);
  int rc = rt_requeue();
  vlm_set_quiet_errors(0);
  CHECK(rc == 3, "scontrol's status 3 came back as %d", rc);
  CHECK(contains(vlm_last_error(), "--resume auto"), "error: %s", vlm_last_error());
  unsetenv("FAKE_SCONTROL_RC");

  setenv("PATH", "/nonexistent", 1);
  vlm_set_quiet_errors(1);
  rc = rt_requeue();
  vlm_set_quiet_errors(0);
  CHECK(rc == -1 && contains(vlm_last_error(), "could not run scontrol"), "missing scontrol: %d %s",
        rc, vlm_last_error());
  env_restore();
  unlink(log);
  unlink(script);
  rmdir(dir);
}

/* ---- watchdog ---- */

static void sleep_s(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static void test_watchdog_quiet(void) {
  CHECK(rt_watchdog_start(0) == 0, "disabled start");
  rt_watchdog_arm("nothing"); /* no thread: a no-op */
  sleep_s(0.05);
  rt_watchdog_disarm();
  CHECK(rt_watchdog_start(0.5) == 0, "start");
  for (int i = 0; i < 3; i++) { /* collectives that end in time never fire */
    rt_watchdog_arm("a barrier that ends in time");
    MPI_Barrier(MPI_COMM_WORLD);
    sleep_s(0.3);
    rt_watchdog_disarm();
  }
  sleep_s(1.0); /* disarmed: no firing however long */
  const double t0 = vlm_now();
  for (int i = 0; i < 1000000; i++) {
    rt_watchdog_arm_of("cost", "of arming");
    rt_watchdog_disarm();
  }
  const double per = (vlm_now() - t0) / 1e6;
  CHECK(per < 1e-6, "arm+disarm costs %.0f ns", per * 1e9);
  if (g_rank == 0) printf("watchdog arm+disarm: %.1f ns\n", per * 1e9);
  rt_watchdog_stop();
}

static int run_hang(double timeout) {
  if (rt_watchdog_start(timeout) != 0) return 1;
  if (g_rank == g_size - 1) {
    fprintf(stderr, "rank %d: hanging on purpose\n", g_rank);
    sleep_s(timeout * 10 + 30); /* the dead rank: never reaches the barrier in time */
  } else {
    rt_watchdog_arm_of("barrier after a deliberately hung rank:", "rank 1 sleeps");
    MPI_Barrier(MPI_COMM_WORLD);
    rt_watchdog_disarm();
  }
  fprintf(stderr, "rank %d: the watchdog did not fire\n", g_rank);
  return 1;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "preinit") == 0) { /* as main() of vlmtrain does */
    if (rt_preinit_check() != 0) return 1;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    printf("rank %d: the pre-MPI_Init check let this launch through\n", g_rank);
    MPI_Finalize();
    return 0;
  }
  int provided;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  vlm_set_rank(g_rank);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_rank, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &g_lrank);
  MPI_Comm_free(&node);
  env_save();
  int rc = 0;
  if (argc == 3 && strcmp(argv[1], "hang") == 0) {
    rc = run_hang(atof(argv[2]));
  } else if (argc == 2 && strcmp(argv[1], "unit") == 0) {
    test_startup();
    env_restore();
    test_preinit();
    env_restore();
    test_signals();
    test_requeue();
    env_restore();
    test_watchdog_quiet();
    int counts[2] = {g_pass, g_fail};
    MPI_Allreduce(MPI_IN_PLACE, counts, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (g_rank == 0) printf("%d passed, %d failed\n", counts[0], counts[1]);
    rc = counts[1] != 0;
  } else {
    if (g_rank == 0) fprintf(stderr, "usage: test_runtime unit | preinit | hang SECONDS\n");
    rc = 2;
  }
  MPI_Finalize();
  return rc;
}
