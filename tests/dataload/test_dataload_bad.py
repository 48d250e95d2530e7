"""tests/dataload/test_dataload_bad.py: a dataset with one bad token id, written
by h5py into a copy of a good file, read by 3 ranks in both modes of the parallel
reader (io/dataset.c, dataset_read_samples): the run ends with exit code 1 within
a timeout (no hang), and the error names the file, the sample and the token
position; in collective mode on every rank.

usage: test_dataload_bad.py TEST_DATALOAD CONFIG.json
Prints one line per check and "N passed, M failed"; exit 1 on failure."""
import json
import os
import shutil
import subprocess
import sys

import h5py

BAD_SAMPLE, BAD_POS = 23, 3
TIMEOUT = 120

passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
    print(("ok   " if ok else "FAIL ") + what, flush=True)


def mpirun(n, *args):
    cmd = ["timeout", str(TIMEOUT), "mpirun", "-np", str(n), "--oversubscribe"] + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def main():
    tool, config = sys.argv[1], sys.argv[2]
    vocab = json.load(open(config))["vocab_size"]
    work = os.path.join(os.environ.get("VLM_TEST_WORK", "."), "dataload_bad")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    good, bad = os.path.join(work, "good.h5"), os.path.join(work, "bad.h5")
    rc, out, err = mpirun(1, tool, "make", config, good)
    if rc != 0:
        print(out, err)
        check(False, "make the mixed dataset")
        return

    shutil.copyfile(good, bad)
    with h5py.File(bad, "r+") as f:
        at = int(f["samples/offsets"][BAD_SAMPLE]) + BAD_POS
        f["samples/tokens"][at] = vocab
    with h5py.File(bad, "r") as f:
        check(int(f["samples/tokens"][at]) == vocab,
              f"h5py wrote token id {vocab} (= vocab_size) at sample {BAD_SAMPLE}, position {BAD_POS}")

    needle = f"bad.h5: sample {BAD_SAMPLE}, token position {BAD_POS}: token id {vocab} is outside"
    for mode in ("independent", "collective"):
        rc, out, err = mpirun(3, tool, "read", config, good, mode)
        check(rc == 0 and "read: " in out, f"{mode}: the good file reads on 3 ranks (exit {rc})")
        rc, out, err = mpirun(3, tool, "read", config, bad, mode)
        lines = [l for l in err.splitlines() if needle in l]
        ranks = set()
        for l in lines:
            if l.startswith("vlmtrain: error: "):
                ranks.add(0)
            elif l.startswith("vlmtrain: error (rank "):
                ranks.add(int(l.split("(rank ")[1].split(")")[0]))
        check(rc == 1, f"{mode}: the bad file: exit code {rc} (1 expected; 124 = hang, killed)")
        if mode == "collective":
            check(ranks == {0, 1, 2}, f"{mode}: every rank reports it (ranks {sorted(ranks)}): "
                  + (lines[0] if lines else err[-400:]))
        else:
            check(len(ranks) >= 1, f"{mode}: the rank that read it reports it (ranks "
                  f"{sorted(ranks)}): " + (lines[0] if lines else err[-400:]))
    print(f"{passed} passed, {failed} failed")


if __name__ == "__main__":
    main()
    sys.exit(1 if failed else 0)
