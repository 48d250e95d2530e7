#!/usr/bin/python3
"""benchmarks/bench_ckpt.py: checkpoint write and read bandwidth of the `small`
Monkey config at 1, 2 and 4 ranks, against the raw sequential write bandwidth of
the same file system measured in the same run (the same byte count written with
write() + fsync()), and the time from launch to the first step on resume.

usage: bench_ckpt.py --build BUILD_DIR [--work DIR] [--ranks 1,2,4]
The checkpoint write time is the trainer's own (write .tmp, close, agree,
rename, fsync the directory, update `latest`); the read time is the resume's
checkpoint load (every rank reads its shards, checksums verified).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return p.stdout


def raw_write(path, nbytes):
    """Sequential write() of nbytes in 8 MiB pieces, then fsync: seconds."""
    block = os.urandom(8 << 20)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    left = nbytes
    while left > 0:
        left -= os.write(fd, block[: min(left, len(block))])
    os.fsync(fd)
    os.close(fd)
    dt = time.perf_counter() - t0
    os.remove(path)
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--work", default="/tmp/vlm-bench-ckpt")
    ap.add_argument("--ranks", default="1,2,4")
    a = ap.parse_args()
    vlm = os.path.join(a.build, "vlmtrain")
    os.makedirs(a.work, exist_ok=True)
    cfg = os.path.join(SRC, "configs", "small.json")
    model, data = os.path.join(a.work, "model"), os.path.join(a.work, "data.h5")
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        sh([vlm, "init", "--config", cfg, "--out", model])
    if not os.path.exists(data):
        sh([vlm, "mkdata", "--synthetic", "--config", cfg, "--out", data, "--samples", "16",
            "--filler-min", "20", "--filler-max", "30"])
    print(f"{'ranks':>5} {'ckpt GB':>8} {'write s':>8} {'write GB/s':>10} {'raw GB/s':>9} {'% raw':>6} "
          f"{'read s':>7} {'read GB/s':>9} {'launch->step1 (resume) s':>25}")
    for R in (int(x) for x in a.ranks.split(",")):
        run = os.path.join(a.work, f"r{R}")
        subprocess.run(["rm", "-rf", run])
        tc = {"train_batch_size": 4, "train_steps": 1, "optimizer": {"type": "AdamW", "params": {"lr": 1e-5}},
              "data": {"shuffle": False}, "checkpoint": {"keep": 1},
              "zero_optimization": {"stage": 3, "shard_size": R}}
        cpath = os.path.join(a.work, f"t{R}.json")
        json.dump(tc, open(cpath, "w"))
        env = dict(os.environ, OMP_NUM_THREADS="1" if R > 1 else "2", OMPI_ALLOW_RUN_AS_ROOT="1",
                   OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        pre = [] if R == 1 else ["mpirun", "--oversubscribe", "-np", str(R)]
        args = [vlm, "train", "--model", model, "--data", data, "--config", cpath, "--out", run]
        out = sh(pre + args, env)
        wt = float(re.search(r"checkpoint: \S+ \(([\d.]+) s\)", out).group(1))
        ck = os.path.join(run, "checkpoints", "ckpt-00000001.h5")
        size = os.path.getsize(ck)
        raw = raw_write(os.path.join(run, "raw.bin"), size)
        # resume: load the checkpoint again and run one more step
        tc["train_steps"] = 2
        json.dump(tc, open(cpath, "w"))
        out = sh(pre + args + ["--resume", "auto"], env)
        rt = float(re.search(r"checkpoint read in ([\d.]+) s", out).group(1))
        st = float(re.search(r"start-up: ([\d.]+) s", out).group(1))
        print(f"{R:>5} {size / 1e9:>8.3f} {wt:>8.2f} {size / wt / 1e9:>10.2f} {size / raw / 1e9:>9.2f} "
              f"{100 * raw / wt:>6.0f} {rt:>7.2f} {size / rt / 1e9:>9.2f} {st:>25.2f}")


if __name__ == "__main__":
    main()
