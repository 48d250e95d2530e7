#!/usr/bin/python3
"""tests/slurm/test_runtime.py: slurm/runtime.c under mpirun -np 2.

1. `test_runtime unit` on 2 ranks: the start-up check, signal agreement (one
   rank raises SIGUSR1, both stop), requeue and the quiet watchdog.
2. `test_runtime hang 2`: the last rank sleeps instead of entering a barrier.
   The job must end, non-zero, within the 2 s timeout plus start-up and a few
   seconds, with the waiting rank's watchdog message naming the collective,
   and no message from the hung rank itself.
"""
import os
import subprocess
import sys
import time

EXE = sys.argv[1]
MPIRUN = ["mpirun", "--oversubscribe", "-np", "2"]
passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}\n     {detail}")


p = subprocess.run(MPIRUN + [EXE, "unit"], capture_output=True, text=True, timeout=120)
check("unit tests on 2 ranks", p.returncode == 0 and " 0 failed" in p.stdout,
      f"rc {p.returncode}\n{p.stdout}\n{p.stderr}")
print(p.stdout.strip())

TIMEOUT = 2.0
t0 = time.monotonic()
p = subprocess.run(MPIRUN + [EXE, "hang", str(TIMEOUT)], capture_output=True, text=True,
                   timeout=120)
dt = time.monotonic() - t0
out = p.stdout + p.stderr
check("hung job ends non-zero", p.returncode != 0, f"rc {p.returncode}")
check(f"hung job aborted within timeout + 10 s ({dt:.1f} s)", dt < TIMEOUT + 10, out)
check("watchdog names the waiting rank and the collective",
      "vlmtrain: watchdog: rank 0 (host" in out and "in barrier after a deliberately hung rank: rank 1 sleeps (timeout" in out,
      out)
check("the hung rank does not report itself", "watchdog: rank 1" not in out, out)
check("the watchdog did fire", "the watchdog did not fire" not in out, out)
print("\n".join("     | " + l for l in out.strip().splitlines()[:8]))
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
