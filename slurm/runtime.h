/* slurm/runtime.h: what vlmtrain needs from the batch system at run time,
 * kept apart from the training code (docs/slurm.md).
 *
 *  - Start-up check: rank, size, local rank and node-local peers from MPI,
 *    cross-checked against what Slurm (SLURM_*) and PMIx (PMIX_RANK) say the
 *    job is, so a wrong launch (every task an MPI singleton because of a
 *    missing or wrong `srun --mpi=`) is an error, never a silent 1-rank run.
 *  - Signals: SIGUSR1 (Slurm's warning before the time limit or a
 *    pre-emption) and SIGTERM only set a flag; the training loop asks at each
 *    step boundary whether any rank saw one, checkpoints, and then requeues
 *    the job (in Slurm) or exits with RT_EXIT_STOPPED (outside it).
 *  - Watchdog: one thread per rank that aborts the whole job when a
 *    collective it was told about has not finished after a timeout, naming the
 *    rank and the collective, so a dead rank does not burn the allocation.
 *
 * It does not talk to slurmctld except through `scontrol requeue`, and it does
 * not start MPI: main() does. All functions that take a communicator are
 * collective over it. */
#ifndef VLM_SLURM_RUNTIME_H
#define VLM_SLURM_RUNTIME_H

#include <mpi.h>
#include <stddef.h>

/* Exit status of a run that stopped on a signal after writing its checkpoint,
 * outside Slurm or when the requeue failed (EX_TEMPFAIL of sysexits.h): rerun
 * the same command with --resume auto to continue. */
#define RT_EXIT_STOPPED 75
/* Exit status (through MPI_Abort) of a job the watchdog aborted. */
#define RT_EXIT_HUNG 124

/* Before MPI_Init: refuses a task that srun started without a PMIx wire-up
 * (srun --mpi=none or --mpi=pmi2 with an Open MPI that speaks only PMIx). Open
 * MPI would otherwise abort inside MPI_Init with a generic message, or another
 * MPI would start every task as a singleton. Prints the error (naming
 * SLURM_STEP_NUM_TASKS, SLURM_MPI_TYPE and the fix) to stderr and returns -1;
 * returns 0 when the launch looks right or is not a srun step. */
int rt_preinit_check(void);

/* After MPI_Init, collective over `world`: compares MPI's rank, size, local
 * rank and node count with SLURM_PROCID, SLURM_STEP_NUM_TASKS / SLURM_NTASKS,
 * SLURM_LOCALID, SLURM_STEP_NUM_NODES and PMIX_RANK (whichever are set; when
 * the ranks were started by mpirun inside a job, only with what mpirun says).
 * On a mismatch reports an error naming both numbers and the fix, and returns
 * -1 on every rank. Otherwise fills desc (n bytes, may be NULL) with one line
 * for the log, e.g. "slurm job 42 (array 41_3), restart 1, nodes n[01-02] (2),
 * 8 ranks, 4 per node, srun --mpi=pmix" or "not under Slurm: 2 ranks on 1
 * node, 2 per node (mpirun)". */
int rt_startup_check(MPI_Comm world, char *desc, size_t n);

/* Installs handlers for SIGUSR1 and SIGTERM that only record the signal
 * (async-signal-safe; SA_RESTART, so system calls resume). A second signal,
 * e.g. SIGTERM at the time limit while the checkpoint of SIGUSR1 is being
 * written, is recorded and nothing else: it never interrupts the write. */
int rt_signals_install(void);
/* This rank's record: the first signal number received, 0 if none. */
int rt_signal_received(void);
/* What rt_stop_requested returns, bits ORed over all ranks. */
#define RT_STOP_REQUEUE 1 /* SIGUSR1 (Slurm's warning): checkpoint, requeue, exit */
#define RT_STOP_EXIT 2    /* SIGTERM (scancel, time limit, pre-emption): checkpoint, exit */
/* Collective over `world` (call at a step boundary, on every rank): the
 * RT_STOP_* bits of the signals any rank received, 0 if none. Non-zero means:
 * all ranks write a checkpoint now and stop; requeue when RT_STOP_REQUEUE is
 * set. SIGTERM alone does not requeue, so a plain `scancel` still ends the job
 * for good (with a checkpoint if KillWait leaves time for it). */
int rt_stop_requested(MPI_Comm world);
/* Test hook: forget received signals. */
void rt_signals_reset(void);

/* 1 when running inside a Slurm job (SLURM_JOB_ID is set). */
int rt_in_slurm(void);
/* Call on one rank (rank 0) after the checkpoint is committed. Inside Slurm
 * runs `scontrol requeue JOB` (JOB = SLURM_ARRAY_JOB_ID_SLURM_ARRAY_TASK_ID for
 * an array task, else SLURM_JOB_ID) with fork/exec and returns its exit
 * status: 0 requeued (Slurm then ends this run and starts the same batch
 * script again, SLURM_RESTART_COUNT + 1); > 0 scontrol failed (reported);
 * -1 scontrol could not be started (reported). Outside Slurm does nothing
 * and returns RT_EXIT_STOPPED. Either way the program should then exit with
 * RT_EXIT_STOPPED. */
int rt_requeue(void);

/* Watchdog. rt_watchdog_start starts this rank's thread; timeout_s <= 0
 * leaves it off (arm/disarm then cost a store each and do nothing). arm
 * records `what` (a string that must stay valid until disarm, e.g. a literal
 * or a name in the registry) and the time; disarm clears it. If an armed
 * collective is still armed after timeout_s, the thread prints
 * "vlmtrain: watchdog: rank R (host H, pid P) has waited S s in WHAT ..." to
 * stderr and calls MPI_Abort(MPI_COMM_WORLD, RT_EXIT_HUNG). Arm and disarm
 * from the main thread only, around a blocking collective or MPI_Wait, one
 * at a time (arm replaces what was armed); rt_stop_requested arms itself.
 * rt_watchdog_start runs once: later calls change nothing. */
int rt_watchdog_start(double timeout_s);
void rt_watchdog_arm(const char *what);
/* The same with the object apart, so that neither string needs formatting:
 * rt_watchdog_arm_of("allgather of module", reg->modules[k].name) reports
 * "... in allgather of module llm.block.3 ...". Both must stay valid until
 * disarm. */
void rt_watchdog_arm_of(const char *what, const char *name);
void rt_watchdog_disarm(void);
void rt_watchdog_stop(void);

#endif
