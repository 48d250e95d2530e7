#!/usr/bin/env python3
"""tests/dataset/test_mkdata_cli.py: `vlmtrain mkdata` from the command line.

Usage: test_mkdata_cli.py CONFIG.json   (env VLMTRAIN = the program; run in VLM_TEST_WORK)

Checks --help (every option with its default), errors for unknown and missing
options and for a missing --synthetic, and a real run (summary line, file in
place, no .tmp, the h5py view agrees). Exits 77 (ctest: skipped) while the
program does not dispatch `mkdata` yet. Ends with "N passed, M failed"."""
import os
import subprocess
import sys

import h5py

CONFIG = sys.argv[1]
VLMTRAIN = os.environ["VLMTRAIN"]
passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS {name}")
    else:
        failed += 1
        print(f"FAIL {name}" + (f": {detail}" if detail else ""))


# Under -DVLMTRAIN_SANITIZE=ON, LeakSanitizer reports Open MPI's own allocations from
# MPI_Init/MPI_Finalize and exits 1 (losing buffered stdout), for every MPI program. Leaks
# of the dataset code are checked by dataset_unit and dataset_tool, which do not start MPI.
ENV = dict(os.environ)
ENV["ASAN_OPTIONS"] = (ENV.get("ASAN_OPTIONS", "") + ":detect_leaks=0").lstrip(":")


def mkdata(*args):
    r = subprocess.run([VLMTRAIN, "mkdata", *args], capture_output=True, text=True, timeout=120,
                       env=ENV)
    return r.returncode, r.stdout, r.stderr


rc, out, err = mkdata("--help")
if (rc == 0 and not out.strip() and not err.strip()) or "unknown command" in err:
    print("SKIP: app/main.c does not dispatch `vlmtrain mkdata` to cmd_mkdata yet")
    sys.exit(77)

defaults = {"--synthetic": None, "--config": "required", "--out": "required", "--samples": "256",
            "--seed": "1", "--filler-min": "4", "--filler-max": "12", "--multi-image-every": "0",
            "--help": None}
lines = {o: next((l for l in out.splitlines() if l.strip().startswith(o + " ") or l.strip() == o), "")
         for o in defaults}
check("--help exits 0 and lists every option", rc == 0 and all(lines.values()), out)
check("--help states each option's default",
      all(d is None or d in lines[o] for o, d in defaults.items()), out)

rc, out, err = mkdata("--synthetic", "--config", CONFIG, "--out", "x.h5", "--bogus")
check("unknown option: error naming it", rc != 0 and "--bogus" in err, err)
rc, out, err = mkdata("--synthetic", "--config", CONFIG)
check("missing --out: error naming it", rc != 0 and "--out" in err, err)
rc, out, err = mkdata("--synthetic", "--out", "x.h5")
check("missing --config: error naming it", rc != 0 and "--config" in err, err)
rc, out, err = mkdata("--config", CONFIG, "--out", "x.h5")
check("without --synthetic: names issue 6 and --synthetic",
      rc != 0 and "issue 6" in err and "--synthetic" in err, err)
rc, out, err = mkdata("--synthetic", "--config", CONFIG, "--out", "x.h5", "--samples", "ten")
check("non-numeric --samples: error", rc != 0 and "--samples" in err, err)
rc, out, err = mkdata("--synthetic", "--config", CONFIG, "--out", "x.h5", "--filler-min", "9",
                      "--filler-max", "5")
check("--filler-max < --filler-min: error", rc != 0 and "--filler-max" in err, err)
rc, out, err = mkdata("--synthetic", "--config", CONFIG, "--out", "x.h5", "--samples")
check("option without its value: error", rc != 0 and "--samples" in err, err)

OUT = "dataset_cli.h5"
rc, out, err = mkdata("--synthetic", "--config", CONFIG, "--out", OUT, "--samples", "20",
                      "--seed", "3", "--multi-image-every", "4", "--filler-min", "2", "--filler-max", "6")
lines = [l for l in out.splitlines() if l.strip()]
check("a run: exit 0, one summary line naming samples, tokens, images and the file",
      rc == 0 and len(lines) == 1 and "20 samples" in out and "tokens" in out
      and "25 images" in out and OUT in out, out + err)
check("a run: file in place, no .tmp", os.path.exists(OUT) and not os.path.exists(OUT + ".tmp"))
with h5py.File(OUT, "r") as f:
    off = f["samples/offsets"][...]
    check("a run: h5py sees 20 samples, 25 images",
          len(off) == 21 and f["images/pixels"].shape[0] == 25, str(f["images/pixels"].shape))

rc, out, err = mkdata("--synthetic", "--config", CONFIG, "--out", "dataset_cli_long.h5",
                      "--filler-max", "100000")
check("a sample over seq_length: error, no file",
      rc != 0 and "seq_length" in err and not os.path.exists("dataset_cli_long.h5"), err)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
