#!/usr/bin/python3
"""tests/slurm/test_scaling.py: `vlmtrain scaling`, the scaling-study collector,
on run directories made up here with known step times, so that every number of
the table can be checked exactly:

- strong-scaling efficiency T(p0) p0 / (p T(p)) and speedup, with the warm-up
  step left out, several runs of one rank count pooled (median of the run
  medians, min-max spread), tokens/s and the comm and I/O shares;
- --weak: efficiency T(p0) / T(p);
- a resumed run whose metrics.jsonl repeats steps: the later line counts;
- the PNG (signature and size) and the .dat/.gp kept beside it; --plot none;
- bad inputs: a missing summary.json, a bad metrics line (named with its line
  number), too few steps, no run directory, each a clear error and exit 1.
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys

VLM = os.environ["VLMTRAIN"]
WORK = os.path.join(os.environ.get("VLM_TEST_WORK", "."), "scaling")
passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}\n     " + str(detail).replace("\n", "\n     "))


def make_run(name, ranks, times, comm=0.0, io=0.0, tokens=1000, steps=None):
    """A run directory: summary.json with `ranks`, one metrics line per step time."""
    d = os.path.join(WORK, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump({"ranks": ranks, "replicas": 1, "shard": ranks, "steps": len(times)}, f)
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        for i, t in enumerate(times):
            step = steps[i] if steps else i + 1
            f.write(json.dumps({"step": step, "loss": 1.0, "step_time": t, "tokens": tokens,
                                "t_gather": comm / 2 * t, "t_reduce": comm / 2 * t, "t_io": io * t,
                                "gflops": 10.0 * ranks}) + "\n")
    return d


def run(*args):
    p = subprocess.run([VLM, "scaling", *args], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def rows(out):
    """ranks -> the columns of its table row."""
    r = {}
    for line in out.splitlines():
        m = re.match(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)-([\d.]+)\s+([\d.]+)\s+([\d.]+)%"
                     r"\s+(\d+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)%$", line)
        if m:
            r[int(m.group(1))] = [float(x) for x in m.groups()[1:]]
    return r


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)

# strong scaling: T(1) = 1.0 s; T(2) = 0.625 s from runs with medians 0.6 and 0.65;
# T(4) = 0.4 s. The first step (10 s) is warm-up and must not count.
r1 = make_run("p1", 1, [10.0, 1.0, 1.0, 1.0], io=0.05)
r2a = make_run("p2a", 2, [10.0, 0.6, 0.6, 0.6], comm=0.2)
r2b = make_run("p2b", 2, [10.0, 0.65, 0.65, 0.65], comm=0.2)
r4 = make_run("p4", 4, [10.0, 0.4, 0.4, 0.4], comm=0.5)
png = os.path.join(WORK, "strong.png")
rc, out, err = run(r4, r2b, r1, r2a, "--plot", png)
check("strong: exit 0", rc == 0, out + err)
t = rows(out)
check("strong: one row per rank count, runs pooled", sorted(t) == [1, 2, 4] and t[2][0] == 2, out)
if sorted(t) == [1, 2, 4]:
    check("strong: medians skip the warm-up step", t[1][2] == 1.0 and t[4][2] == 0.4, out)
    check("strong: T(2) is the median of the run medians, spread min-max",
          t[2][2] == 0.625 and t[2][3] == 0.6 and t[2][4] == 0.65, out)
    check("strong: efficiency T(p0) p0 / (p T(p)): 100.0, 80.0, 62.5 %",
          (t[1][6], t[2][6], t[4][6]) == (100.0, 80.0, 62.5), out)
    check("strong: speedup 1.00, 1.60, 2.50", (t[1][5], t[2][5], t[4][5]) == (1.0, 1.6, 2.5), out)
    check("strong: tokens/s = tokens / step time (1000, 1600, 2500)",
          (t[1][7], t[2][7], t[4][7]) == (1000, 1600, 2500), out)
    check("strong: comm and I/O shares", (t[1][9], t[2][9], t[4][9], t[1][10]) == (0.0, 20.0, 50.0, 5.0), out)
    check("strong: steps counted after the warm-up (3 per run)", (t[1][1], t[2][1]) == (3, 6), out)
check("strong: PNG 1200x480 written", os.path.exists(png) and png_size(png) == (1200, 480),
      png_size(png) if os.path.exists(png) else "missing")
check("strong: .dat and .gp kept beside the PNG",
      os.path.exists(os.path.join(WORK, "strong.dat")) and os.path.exists(os.path.join(WORK, "strong.gp")))

# weak scaling: efficiency T(p0) / T(p) = 1.0 / 1.25 = 80 %
w1 = make_run("w1", 1, [5.0, 1.0, 1.0, 1.0])
w2 = make_run("w2", 2, [5.0, 1.25, 1.25, 1.25])
rc, out, err = run(w1, w2, "--weak", "--plot", "none")
t = rows(out)
check("weak: efficiency T(p0)/T(p) = 80 %", rc == 0 and t.get(2, [0] * 7)[6] == 80.0 and
      out.startswith("weak scaling"), out + err)
check("--plot none writes no PNG", not os.path.exists("scaling.png"), os.getcwd())

# a resumed run: steps 3 and 4 were logged before the stop and again after it
rs = make_run("resumed", 1, [9.0, 2.0, 7.0, 7.0, 2.0, 2.0], steps=[1, 2, 3, 4, 3, 4])
rc, out, err = run(rs, "--skip", "1", "--plot", "none")
t = rows(out)
check("resumed run: a repeated step counts once, the later line", rc == 0 and t.get(1, [0] * 3)[1] == 3
      and t[1][2] == 2.0, out + err)

# bad inputs
os.makedirs(os.path.join(WORK, "empty"), exist_ok=True)
rc, out, err = run(os.path.join(WORK, "empty"), "--plot", "none")
check("missing summary.json: clear error", rc == 1 and "summary.json" in err and "finished" in err, err)
bad = make_run("bad", 1, [1.0, 1.0, 1.0])
with open(os.path.join(bad, "metrics.jsonl"), "a") as f:
    f.write("{\"step\": 4, \"loss\": 1.0}\n")
rc, out, err = run(bad, "--plot", "none")
check("metrics line without step_time: error names file and line", rc == 1 and "metrics.jsonl:4" in err, err)
rc, out, err = run(make_run("short", 1, [1.0]), "--plot", "none")
check("too few steps after the warm-up: clear error", rc == 1 and "--skip" in err, err)
rc, out, err = run()
check("no run directory: clear error", rc == 1 and "run directories" in err, err)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
