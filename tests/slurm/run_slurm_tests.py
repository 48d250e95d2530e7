#!/usr/bin/python3
"""tests/slurm/run_slurm_tests.py: vlmtrain on a real one-node Slurm cluster.

The test starts its own cluster and stops it again, also on failure: it writes
a slurm.conf (one node with at least 4 CPUs declared, more than the machine's
cores if need be: SlurmdParameters=config_overrides; proctrack/linuxproc,
task/none, select/cons_tres, MpiDefault=none, free TCP ports), makes a munge
key, starts munged on its own socket, slurmctld and slurmd, all as root with
their pid files, state, spool and logs in a fresh directory under /tmp
(Unix socket paths must stay short), waits for the node to be idle, runs the
tests, and stops exactly the daemons it started, through their pid files.
Nothing is installed here: scripts/install-deps.sh installs slurm-wlm, munge
and gnuplot-nox.

  (a) slurm/train.sbatch with 2 tasks (srun --mpi=pmix) trains the tiny model:
      the job completes, metrics.jsonl has every step, the log says 2 ranks,
      summary.json says 2, and the log has the start-up line (job, restart,
      nodes) of rt_startup_check.
  (b) `scancel --signal=USR1` (twice, the second during the checkpoint) in the
      middle of the same run, and a third SIGUSR1 that `scontrol requeue` gets
      while it runs (an `scontrol` first in the job's PATH that signals itself,
      then runs the real one): vlmtrain checkpoints, requeues its job, the
      restarted job resumes (--resume auto) and its final weights are
      bit-identical to those of (a).
  (c) wrong launches are refused with vlmtrain's clear error, never a silent
      1-rank run: `srun --mpi=none` (refused before MPI_Init: rt_preinit_check
      alone in the test program, then in vlmtrain) and vlmtrain run directly by
      the batch script of a 2-task job (SLURM_NTASKS=2, world 1).
  (d) slurm/scaling.sh over 1 and 2 ranks: the collector job prints the table
      and writes a valid PNG.
  (e) the watchdog under srun --mpi=pmix: a 2-task step whose last rank never
      reaches a barrier is aborted as a whole (MPI_Abort through PMIx) within the
      timeout plus a few seconds, with the waiting rank's message
      (tests/slurm/test_runtime.c, given as the first argument).

VLM_SLURM_TESTS="a c" runs a subset. Prints "N passed, N failed".
"""
import glob
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

VLM = os.environ["VLMTRAIN"]
SRC = os.environ["VLM_SOURCE_DIR"]
WORK = os.path.join(os.environ.get("VLM_TEST_WORK", "."), "slurm")
SELECT = os.environ.get("VLM_SLURM_TESTS", "a b c d e").split()
RUNTIME_TEST = sys.argv[1] if len(sys.argv) > 1 else None
TINY = os.path.join(SRC, "configs", "tiny.json")
TRAIN_CFG = os.path.join(SRC, "configs", "train-tiny.json")
SBATCH_SCRIPT = os.path.join(SRC, "slurm", "train.sbatch")
SCALING_SCRIPT = os.path.join(SRC, "slurm", "scaling.sh")
STEPS = 60
WAIT_LEAD_START = ("waiting for the lead: cmd_train must call rt_startup_check(MPI_COMM_WORLD, "
                   "desc, n) after MPI is up and log desc")
WAIT_LEAD_PREINIT = "waiting for the lead: main() must call rt_preinit_check() before MPI_Init_thread"
WAIT_LEAD_SIGNAL = ("waiting for the lead: cmd_train must call rt_signals_install() and, at each "
                    "step boundary, rt_stop_requested(); then checkpoint, rt_requeue() on rank 0, "
                    "exit 75")

passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}", flush=True)
    else:
        failed += 1
        print(f"FAIL {name}\n     " + str(detail).replace("\n", "\n     "), flush=True)
    return ok


def tail(path, n=25):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
        return "\n".join(lines[-n:])
    except OSError as e:
        return f"({path}: {e})"


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


class Stop(Exception):
    """Raised by SIGTERM/SIGINT (ctest's timeout) so that the cluster is stopped."""


def on_term(signo, frame):
    raise Stop(f"signal {signo}")


# ---------------------------------------------------------------- the cluster

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stop_pidfile(pidfile, must_contain):
    """Stops the daemon of one pid file, if it is still the process we started."""
    try:
        pid = int(open(pidfile).read().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if not pid_alive(pid) or must_contain not in cmdline(pid):
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(150):
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    if must_contain in cmdline(pid):
        os.kill(pid, signal.SIGKILL)


class Cluster:
    DAEMONS = [("slurmd.pid", "slurmd"), ("slurmctld.pid", "slurmctld"), ("munge/munged.pid", "munged")]

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="vlmslurm-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.conf = os.path.join(self.dir, "slurm.conf")
        self.host = socket.gethostname().split(".")[0]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        self.env["SLURM_CONF"] = self.conf
        self.started = False

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def run(self, *cmd, check=True, timeout=60):
        p = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout}{p.stderr}")
        return p

    def write_conf(self):
        for d in ("munge", "state", "spool", "log"):
            os.makedirs(self.path(d), exist_ok=True)
        os.chmod(self.path("munge"), 0o755)  # munged wants its socket's directory executable by all
        os.makedirs(self.path("spool", f"slurmd-{self.host}"), exist_ok=True)
        key = self.path("munge", "munge.key")
        if not os.path.exists(key):
            with open(key, "wb") as f:
                f.write(os.urandom(1024))
            os.chmod(key, 0o400)
        cpus = max(4, os.cpu_count() or 1)
        d = self.dir
        conf = f"""# slurm.conf of the one-node test cluster (tests/slurm/run_slurm_tests.py)
ClusterName=vlmtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# our own munged; cred_expire also sets how long a requeued job waits (cred_expire + 1 s)
AuthInfo=socket={d}/munge/munge.socket,cred_expire=10
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/slurmd-%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=600
MailProg=/bin/true
SlurmdParameters=config_overrides
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""
        with open(self.conf, "w") as f:
            f.write(conf)

    def start(self):
        self.write_conf()
        m = self.path("munge")
        self.started = True
        self.run("munged", f"--socket={m}/munge.socket", f"--key-file={m}/munge.key",
                 f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed")
        self.run("munge", "-n", "-S", f"{m}/munge.socket")  # munged answers
        self.run("slurmctld", "-f", self.conf)
        self.run("slurmd", "-f", self.conf)
        t0 = time.monotonic()
        state = ""
        while time.monotonic() - t0 < 60:
            p = self.run("sinfo", "-h", "-o", "%T", "-n", self.host, check=False)
            state = p.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the node did not become idle in 60 s (state \"{state}\")")

    def stop(self):
        if not self.started:
            return
        p = self.run("squeue", "-h", "-o", "%i", check=False, timeout=20)
        jobs = p.stdout.split() if p.returncode == 0 else []
        if jobs:
            self.run("scancel", *jobs, check=False, timeout=20)
            for _ in range(40):
                if not self.run("squeue", "-h", "-o", "%i", check=False, timeout=20).stdout.strip():
                    break
                time.sleep(0.5)
        for pidfile, name in self.DAEMONS:
            stop_pidfile(self.path(pidfile), name)
        self.started = False

    def logs(self):
        return "\n".join(f"--- {p}\n{tail(self.path(p), 15)}" for p in
                         ("log/slurmctld.log", "log/slurmd.log", "munge/munged.log"))

    # jobs
    def sbatch(self, *args):
        p = self.run("sbatch", "--parsable", *args)
        return p.stdout.strip().split(";")[0]

    def job(self, jobid):
        p = self.run("scontrol", "show", "job", "-o", jobid, check=False)
        fields = {}
        for tok in p.stdout.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                fields.setdefault(k, v)
        return fields

    def wait(self, jobid, timeout):
        """Waits until the job has ended (for good: a requeued job is pending again)."""
        t0 = time.monotonic()
        end = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
               "BOOT_FAIL", "DEADLINE", "PREEMPTED")
        while time.monotonic() - t0 < timeout:
            j = self.job(jobid)
            if j.get("JobState") in end:
                return j
            time.sleep(0.5)
        j = self.job(jobid)
        j["JobState"] = "TIMEOUT_IN_TEST:" + j.get("JobState", "?")
        return j


def stop_leftovers():
    """Daemons of an earlier run of this test that was killed (SIGKILL) before
    it could stop them: their pid files are in the directory it recorded."""
    rec = os.path.join(WORK, "cluster-dir")
    try:
        old = open(rec).read().strip()
    except OSError:
        return
    if old.startswith("/tmp/vlmslurm-") and os.path.isdir(old):
        for pidfile, name in Cluster.DAEMONS:
            stop_pidfile(os.path.join(old, pidfile), name)
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- the tests

def metrics_steps(rundir):
    steps = []
    for line in read(os.path.join(rundir, "metrics.jsonl")).splitlines():
        if line.strip():
            steps.append(json.loads(line))
    return steps


def train_args(rundir, steps=STEPS):
    return ["--model", os.path.join(WORK, "model"), "--data", os.path.join(WORK, "data.h5"),
            "--config", TRAIN_CFG, "--out", rundir, "--steps", str(steps)]


SBATCH_2 = ["--nodes=1", "--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=10"]


def test_a(c):
    run = os.path.join(WORK, "run-a")
    log = os.path.join(WORK, "a.out")
    jid = c.sbatch(*SBATCH_2, "--job-name=vlm-a", f"--output={log}", SBATCH_SCRIPT, *train_args(run))
    j = c.wait(jid, 240)
    out = read(log)
    check(f"(a) 2-task training job {jid} completes", j.get("JobState") == "COMPLETED" and
          j.get("ExitCode") == "0:0", f"state {j.get('JobState')} exit {j.get('ExitCode')}\n{tail(log)}")
    steps = metrics_steps(run)
    check(f"(a) metrics.jsonl has steps 1..{STEPS} with finite losses",
          [s["step"] for s in steps] == list(range(1, STEPS + 1)) and
          all(s["loss"] == s["loss"] and s["loss"] < 1e9 for s in steps),
          f"{len(steps)} lines\n{tail(log)}")
    check("(a) the log says 2 ranks", "2 rank(s) = " in out, tail(log))
    try:
        ranks = json.load(open(os.path.join(run, "summary.json")))["ranks"]
    except (OSError, ValueError, KeyError) as e:
        ranks = str(e)
    check("(a) summary.json says 2 ranks", ranks == 2, f"ranks: {ranks}")
    check("(a) final weights written", os.path.exists(os.path.join(run, "final", "model.safetensors")))
    m = re.search(r"slurm job (\d+), restart 0, nodes \S+ \(1\), 2 ranks on 1 node, 2 per node, srun --mpi=pmix", out)
    check("(a) the log names job, restart count, nodes and ranks per node (rt_startup_check)",
          m is not None and m.group(1) == jid, f"{WAIT_LEAD_START}\n{tail(log, 12)}")
    return run


def signalled_scontrol():
    """A directory whose `scontrol` is the real one, except that `scontrol requeue` first
    sends SIGUSR1 to itself: a repeated `scancel --signal=USR1` that lands while vlmtrain's
    requeue runs, every time rather than by chance. vlmtrain must start scontrol with the
    stop signals ignored, or this kills it and the job is not requeued."""
    d = os.path.join(WORK, "scontrol-signalled")
    os.makedirs(d, exist_ok=True)
    real = shutil.which("scontrol")
    with open(os.path.join(d, "scontrol"), "w") as f:
        f.write(f'#!/bin/sh\nif [ "$1" = requeue ]; then kill -USR1 $$; fi\nexec {real} "$@"\n')
    os.chmod(os.path.join(d, "scontrol"), 0o755)
    return d


def test_b(c, ref):
    run = os.path.join(WORK, "run-b")
    log = os.path.join(WORK, "b.out")
    path = f"{signalled_scontrol()}:{c.env.get('PATH', '/usr/bin:/bin')}"
    jid = c.sbatch(*SBATCH_2, "--job-name=vlm-b", f"--output={log}", f"--export=ALL,PATH={path}",
                   SBATCH_SCRIPT, *train_args(run))
    t0 = time.monotonic()
    signalled_at = None
    while time.monotonic() - t0 < 120:
        n = len(metrics_steps(run)) if os.path.exists(os.path.join(run, "metrics.jsonl")) else 0
        if n >= 10:
            c.run("scancel", "--signal=USR1", jid)
            time.sleep(0.05)
            c.run("scancel", "--signal=USR1", jid, check=False)  # a second one, during the checkpoint
            signalled_at = n
            break
        if c.job(jid).get("JobState") not in ("PENDING", "RUNNING", "CONFIGURING"):
            break
        time.sleep(0.1)
    if not check("(b) USR1 sent in the middle of the run", signalled_at is not None and signalled_at < STEPS,
                 f"metrics lines when signalled: {signalled_at}\n{tail(log)}"):
        c.wait(jid, 120)
        return
    j = c.wait(jid, 240)
    out = read(log)
    check(f"(b) job {jid} was requeued once and then completed",
          j.get("JobState") == "COMPLETED" and j.get("Restarts") == "1" and j.get("ExitCode") == "0:0",
          f"state {j.get('JobState')} restarts {j.get('Restarts')} exit {j.get('ExitCode')}\n"
          f"{WAIT_LEAD_SIGNAL}\n{tail(log, 30)}")
    check("(b) the restarted job says restart 1 and resumed from a checkpoint",
          "restart 1:" in out and re.search(r"resume: \S+: step [1-9]\d*", out) is not None,
          tail(log, 30))
    ck = sorted(glob.glob(os.path.join(run, "checkpoints", "ckpt-*.h5")))
    check("(b) a checkpoint of the stop is kept", len(ck) >= 1, f"checkpoints: {ck}")
    steps = metrics_steps(run)
    check(f"(b) metrics.jsonl has steps 1..{STEPS} once each", [s["step"] for s in steps] ==
          list(range(1, STEPS + 1)), f"steps: {[s['step'] for s in steps]}")
    if ref:
        a = os.path.join(ref, "final", "model.safetensors")
        b = os.path.join(run, "final", "model.safetensors")
        same = os.path.exists(a) and os.path.exists(b) and open(a, "rb").read() == open(b, "rb").read()
        check("(b) final weights bit-identical to the uninterrupted run (a)", same, f"{a} vs {b}")
    else:
        check("(b) final weights bit-identical to the uninterrupted run (a)", False, "(a) did not run")


def test_c(c):
    # c0: rt_preinit_check itself under a real srun, with and without PMIx
    if RUNTIME_TEST:
        log0 = os.path.join(WORK, "c0.out")
        script = os.path.join(WORK, "c0.sbatch")
        with open(script, "w") as f:
            f.write(f"#!/bin/bash\nsrun --mpi=none {RUNTIME_TEST} preinit\necho \"none: exit $?\"\n"
                    f"srun --mpi=pmix {RUNTIME_TEST} preinit\necho \"pmix: exit $?\"\n")
        jid = c.sbatch(*SBATCH_2, "--job-name=vlm-c0", f"--output={log0}", script)
        c.wait(jid, 120)
        out = read(log0)
        check("(c) rt_preinit_check under srun --mpi=none: refused once, naming tasks, type and fix",
              "none: exit 1" in out and out.count("vlmtrain: error: srun started this task") == 1 and
              "SLURM_STEP_NUM_TASKS=2" in out and "SLURM_MPI_TYPE=none" in out and
              "srun --mpi=pmix" in out, tail(log0))
        check("(c) rt_preinit_check under srun --mpi=pmix: both tasks let through",
              "pmix: exit 0" in out and out.count("the pre-MPI_Init check let this launch through") == 2,
              tail(log0))
    # c1: srun without PMIx
    run1 = os.path.join(WORK, "run-c1")
    log1 = os.path.join(WORK, "c1.out")
    script = os.path.join(WORK, "c1.sbatch")
    with open(script, "w") as f:
        f.write("#!/bin/bash\n" + " ".join(["srun", "--mpi=none", VLM, "train", *train_args(run1, 5)]) + "\n")
    jid = c.sbatch(*SBATCH_2, "--job-name=vlm-c1", f"--output={log1}", script)
    j = c.wait(jid, 120)
    out = read(log1)
    check("(c) srun --mpi=none: the job fails and trains nothing",
          j.get("JobState") == "FAILED" and not os.path.exists(os.path.join(run1, "metrics.jsonl")),
          f"state {j.get('JobState')}\n{tail(log1)}")
    check("(c) srun --mpi=none: vlmtrain's error names the tasks and the fix",
          "SLURM_STEP_NUM_TASKS=2" in out and "srun --mpi=pmix" in out and "SLURM_MPI_TYPE=none" in out,
          f"{WAIT_LEAD_PREINIT}\n{tail(log1, 12)}")
    # c2: no srun at all: one process in a 2-task job
    run2 = os.path.join(WORK, "run-c2")
    log2 = os.path.join(WORK, "c2.out")
    script = os.path.join(WORK, "c2.sbatch")
    with open(script, "w") as f:
        f.write("#!/bin/bash\n" + " ".join([VLM, "train", *train_args(run2, 5)]) + "\n")
    jid = c.sbatch(*SBATCH_2, "--job-name=vlm-c2", f"--output={log2}", script)
    j = c.wait(jid, 120)
    out = read(log2)
    check("(c) no srun in a 2-task job: refused, no silent 1-rank run",
          j.get("JobState") == "FAILED" and not os.path.exists(os.path.join(run2, "metrics.jsonl")),
          f"state {j.get('JobState')}; metrics written: "
          f"{os.path.exists(os.path.join(run2, 'metrics.jsonl'))}\n{WAIT_LEAD_START}\n{tail(log2, 8)}")
    check("(c) no srun: the error names both numbers and the fix",
          "SLURM_NTASKS=2 but MPI gives a world of 1" in out and "srun --mpi=pmix" in out,
          f"{WAIT_LEAD_START}\n{tail(log2, 8)}")


def png_size(path):
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def test_d(c):
    study = os.path.join(WORK, "study")
    shutil.rmtree(study, ignore_errors=True)
    p = subprocess.run(["bash", SCALING_SCRIPT, "--ranks", "1 2", "--tasks-per-node", "2",
                        "--cpus-per-task", "1", "--steps", "12", "--repeats", "1", "--out", study,
                        "--sbatch", "--time=10", "--", "--model", os.path.join(WORK, "model"),
                        "--data", os.path.join(WORK, "data.h5"), "--config", TRAIN_CFG],
                       capture_output=True, text=True, env=c.env, timeout=60)
    if not check("(d) scaling.sh submits the sweep", p.returncode == 0, p.stdout + p.stderr):
        return
    print("     | " + p.stdout.strip().replace("\n", "\n     | "))
    cid = read(os.path.join(study, "collector.jobid")).strip()
    j = c.wait(cid, 300)
    table = read(os.path.join(study, "scaling.txt"))
    check(f"(d) the collector job {cid} completes", j.get("JobState") == "COMPLETED",
          f"state {j.get('JobState')} reason {j.get('Reason')}\n{tail(os.path.join(study, 'collect.out'))}\n"
          + "\n".join(tail(f, 6) for f in sorted(glob.glob(os.path.join(study, 'p*.out')))))
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\s+(\d+)\s+1\s+11\s+\S.*$", table, re.M)}
    check("(d) the table has a row for 1 and for 2 ranks (11 steps each after the warm-up)",
          sorted(rows) == [1, 2], table)
    check("(d) the baseline's efficiency is 100%", 1 in rows and " 100.0% " in rows[1], table)
    print("     | " + table.strip().replace("\n", "\n     | "))
    size = png_size(os.path.join(study, "scaling.png"))
    check("(d) scaling.png is a PNG of 1200x480", size == (1200, 480), f"size/signature: {size}")


def test_e(c):
    if not RUNTIME_TEST:
        check("(e) watchdog under srun: test_runtime given", False, "usage: run_slurm_tests.py TEST_RUNTIME")
        return
    log = os.path.join(WORK, "e.out")
    script = os.path.join(WORK, "e.sbatch")
    with open(script, "w") as f:
        f.write("#!/bin/bash\nSECONDS=0\n"
                f"srun --mpi=pmix {RUNTIME_TEST} hang 3\n"
                "echo \"srun exit $? after $SECONDS s\"\n")
    jid = c.sbatch(*SBATCH_2, "--job-name=vlm-e", f"--output={log}", script)
    c.wait(jid, 120)
    out = read(log)
    m = re.search(r"srun exit (\d+) after (\d+) s", out)
    check("(e) the hung step ends with a failure", m is not None and m.group(1) != "0", tail(log))
    check("(e) ... within the 3 s timeout + 10 s", m is not None and int(m.group(2)) <= 13, tail(log))
    check("(e) the waiting rank names the collective, the hung one is silent",
          "watchdog: rank 0 (host" in out and "in barrier after a deliberately hung rank: rank 1 sleeps (timeout" in out
          and "watchdog: rank 1" not in out and "did not fire" not in out, tail(log))


def main():
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    os.makedirs(WORK, exist_ok=True)
    missing = [b for b in ("munged", "munge", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue",
                           "sinfo", "scancel", "srun", "gnuplot") if shutil.which(b) is None]
    if missing:
        check("Slurm, munge and gnuplot are installed", False,
              f"missing: {' '.join(missing)}: run scripts/install-deps.sh (slurm-wlm munge gnuplot-nox)")
        return
    stop_leftovers()
    for d in ("run-a", "run-b", "run-c1", "run-c2", "study"):
        shutil.rmtree(os.path.join(WORK, d), ignore_errors=True)
    for f in glob.glob(os.path.join(WORK, "*.out")):
        os.remove(f)
    c = Cluster()
    with open(os.path.join(WORK, "cluster-dir"), "w") as f:
        f.write(c.dir + "\n")
    ok = False
    try:
        t0 = time.monotonic()
        try:
            c.start()
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            check("the one-node cluster starts (munged, slurmctld, slurmd)", False, f"{e}\n{c.logs()}")
            return
        check(f"the one-node cluster starts ({time.monotonic() - t0:.1f} s; {c.dir})", True)
        for args in (["init", "--config", TINY, "--out", os.path.join(WORK, "model")],
                     ["mkdata", "--synthetic", "--config", TINY, "--out", os.path.join(WORK, "data.h5"),
                      "--samples", "64"]):
            p = subprocess.run([VLM, *args], capture_output=True, text=True, timeout=120)
            if not check(f"vlmtrain {args[0]}", p.returncode == 0, p.stdout + p.stderr):
                return
        ref = None
        for t in SELECT:
            t1 = time.monotonic()
            if t == "a":
                ref = test_a(c)
            elif t == "b":
                test_b(c, ref)
            elif t == "c":
                test_c(c)
            elif t == "d":
                test_d(c)
            elif t == "e":
                test_e(c)
            print(f"     ({t}: {time.monotonic() - t1:.0f} s)", flush=True)
        ok = failed == 0
    except Stop as e:
        check("not interrupted", False, f"stopped by {e}")
    finally:
        if not ok:
            print(c.logs())
        c.stop()
        left = [n for pf, n in Cluster.DAEMONS if pid_alive_file(c.path(pf), n)]
        check("the daemons the test started are stopped", not left, f"still running: {left}")
        shutil.rmtree(c.dir, ignore_errors=True)


def pid_alive_file(pidfile, name):
    try:
        pid = int(open(pidfile).read().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return pid_alive(pid) and name in cmdline(pid)


if __name__ == "__main__":
    main()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
