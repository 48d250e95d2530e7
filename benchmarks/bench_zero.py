#!/usr/bin/python3
"""benchmarks/bench_zero.py: ZeRO-3 numbers on the `small` Monkey config.

(a) bytes per step per rank moved by gathers and reduce-scatters, against the
    volume computed from the registry (each sharded parameter's chunk x S x 4
    bytes per fetch: frozen and trainable modules twice per micro-step, the head
    and the ViT stem once);
(b) peak resident memory per rank at S = 1, 2, 4 against the prediction the
    trainer prints (parameter, gradient and moment shards + gather buffers +
    activations) plus the process's baseline;
(c) 2 ranks x 1 thread against 1 rank x 2 threads, and the exposed
    communication as a share of step time.

usage: bench_zero.py --build BUILD_DIR [--steps N] [--work DIR]
Runs on the machine as it is: take the numbers on an idle machine.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return p.stdout


def train(vlm, work, name, ranks, threads, shard, steps):
    cfg = {"train_batch_size": 4, "gradient_accumulation_steps": 1, "train_steps": steps,
           "steps_per_print": 1, "optimizer": {"type": "AdamW", "params": {"lr": 1e-5}},
           "trainable": "monkey", "recompute": {"vit": True, "llm": False},
           "data": {"shuffle": False},
           "zero_optimization": {"stage": 3, "shard_size": shard}}
    path = os.path.join(work, name + ".json")
    json.dump(cfg, open(path, "w"))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    run = os.path.join(work, name)
    args = [vlm, "train", "--model", os.path.join(work, "model"), "--data", os.path.join(work, "data.h5"),
            "--config", path, "--out", run]
    cmd = args if ranks == 1 else ["mpirun", "--oversubscribe", "-np", str(ranks), *args]
    sh(cmd, env)
    rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    return rows[1:] or rows, json.load(open(os.path.join(run, "summary.json")))


def theory(vlm, S):
    out = sh([vlm, "params", os.path.join(SRC, "configs", "small.json"), "--list"])
    mods = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) < 4 or not f[0].startswith(("transformer.", "lm_head")):
            continue
        name, n, tr = f[0], int(f[2]), f[3] == "trainable"
        if name.startswith("transformer.visual.transformer.resblocks."):
            m = "vit." + name.split(".")[4]
        elif name.startswith(("transformer.visual.attn_pool.", "transformer.visual.ln_post", "transformer.visual.proj")):
            m = "resampler"
        elif name.startswith("transformer.visual."):
            m = "stem"
        elif name.startswith("transformer.h."):
            m = "llm." + name.split(".")[2]
        elif name.startswith("transformer.wte"):
            m = "embed"
        else:
            m = "head"
        sharded = S > 1 and n > 100000
        chunk = -(-n // S)
        g, r = mods.get(m, (0, 0))
        mods[m] = (g + (chunk if sharded else 0), r + (chunk if sharded and tr else 0))
    gather = sum((1 if m in ("stem", "head") else 2) * S * 4 * g for m, (g, _) in mods.items())
    rs = sum(S * 4 * r for _, r in mods.values())
    return gather, rs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--work", default="/tmp/vlm-bench-zero")
    a = ap.parse_args()
    vlm = os.path.join(a.build, "vlmtrain")
    os.makedirs(a.work, exist_ok=True)
    cfg = os.path.join(SRC, "configs", "small.json")
    if not os.path.exists(os.path.join(a.work, "model", "model.safetensors")):
        sh([vlm, "init", "--config", cfg, "--out", os.path.join(a.work, "model")])
    if not os.path.exists(os.path.join(a.work, "data.h5")):
        sh([vlm, "mkdata", "--synthetic", "--config", cfg, "--out", os.path.join(a.work, "data.h5"),
            "--samples", "32", "--filler-min", "180", "--filler-max", "185"])

    print("(a) bytes per step per rank: measured vs the registry's volume")
    print(f"{'S':>3} {'allgather':>14} {'theory':>14} {'reduce-scatter':>15} {'theory':>14}")
    res = {}
    for S in (1, 2, 4):
        rows, summ = train(vlm, a.work, f"s{S}", S, 1 if S > 1 else 2, S, a.steps)
        res[S] = (rows, summ)
        g, r = theory(vlm, S)
        print(f"{S:>3} {rows[-1]['bytes_allgather']:>14.0f} {g:>14.0f} {rows[-1]['bytes_reduce_scatter']:>15.0f} {r:>14.0f}")

    print("\n(b) peak resident memory per rank (MiB) against the prediction")
    base = None
    print(f"{'S':>3} {'params':>8} {'grads':>8} {'moments':>8} {'gather':>8} {'activ.':>8} {'predicted':>10} {'peak RSS max':>13}")
    for S in (1, 2, 4):
        p = res[S][1]["predicted_mib"]
        pred = sum(p.values())
        print(f"{S:>3} {p['parameters']:>8.1f} {p['gradients']:>8.1f} {p['moments']:>8.1f} {p['gather_buffers']:>8.1f} "
              f"{p['activations']:>8.1f} {pred:>10.1f} {res[S][1]['peak_rss_mib']['max']:>13.1f}")
    print("(peak RSS also holds the program, MPI, OpenBLAS and the data reader: the difference is that baseline)")

    print("\n(c) small config, 4 samples per step: 1 rank x 2 threads vs 2 ranks x 1 thread (S=2)")
    one = statistics.median(r["step_time"] for r in res[1][0])
    two = statistics.median(r["step_time"] for r in res[2][0])
    ph = res[2][1]["phases"]
    exposed = (ph["exposed gather"]["max"] + ph["exposed reduce"]["max"])
    total = sum(v["max"] for v in ph.values())
    print(f"1 rank x 2 threads: {one:.3f} s/step ({statistics.median(r['gflops'] for r in res[1][0]):.1f} GFLOP/s)")
    print(f"2 ranks x 1 thread: {two:.3f} s/step ({statistics.median(r['gflops'] for r in res[2][0]):.1f} GFLOP/s), "
          f"ratio {one / two:.2f}x; exposed communication {100 * exposed / total:.1f}% of the run on the slowest rank")


if __name__ == "__main__":
    main()
