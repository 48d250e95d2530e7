# benchmarks/bench_train_step.py: time one full training step (forward + backward +
# gradient clipping + AdamW) of vlmtrain and of the PyTorch reference model
# (tests/reference/monkey_ref.py) on the same model, data, threads and machine, in
# one run, and put both against the machine's fp32 peak. A program, not a test.
#
# Per config (tiny, small):
#   1. vlmtrain init (seed 0) and vlmtrain mkdata --synthetic (16 samples) in a
#      work directory; a training config with the Monkey preset ("trainable":
#      "monkey": ViT LoRA + resampler + LLM trained, ViT trunk/ln_post/proj frozen),
#      recomputation off, file order, AdamW, cosine schedule, clipping 1.0;
#   2. vlmtrain train with OMP_NUM_THREADS=N; step times, losses, tokens and the
#      counted FLOPs (gflops x step_time) per step from RUN/metrics.jsonl;
#   3. the same steps in PyTorch (float32, torch.set_num_threads(N)): the same
#      safetensors weights and samples, step s on the same micro-batch as
#      vlmtrain's step s, each step = grads to None, forward + backward, clip_grad_norm_
#      (1.0), torch.optim.AdamW.step (monkey_ref.ReferenceTrainer.step), timed
#      with time.perf_counter;
#   4. steps 2 and 3 again, PyTorch first this time (--repeat R, default 2: R runs
#      of each side in the order A B B A A B ..., so that a machine load that
#      changes during the run weighs on both sides alike); timed steps are pooled;
#   5. medians and minima over the steps after each run's first (warm-up), the ratio
#      PyTorch / vlmtrain, GFLOP/s of both from vlmtrain's FLOP count of each step,
#      against the peak and the sgemm rate of benchmarks/peak.py; the first-step
#      losses of both, which must agree (same weights, same data).
#
# Usage (from anywhere; vlmtrain from --vlmtrain, $VLMTRAIN or <repo>/build/vlmtrain):
#   /usr/bin/python3 benchmarks/bench_train_step.py [--configs tiny,small]
#       [--threads N] [--steps N] [--repeat R] [--vlmtrain PATH] [--work DIR]
#       [--json OUT.json]
# Defaults: both configs, N = nproc, 30 steps (tiny) / 6 steps (small), R = 2.
# About 2 minutes on 2 idle cores. Exit status 1 when the first-step losses or
# the trainable parameter counts of the two sides disagree. See
# benchmarks/README.md.
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# Per config: model config, micro-batch, default steps, mkdata filler range (None:
# mkdata's defaults). small: fillers of 180-185 tokens make samples of ~512 tokens
# (322 of them image slots), the model's seq_length.
CONFIGS = {
    "tiny": {"config": "configs/tiny.json", "micro_batch": 8, "steps": 30, "filler": None},
    "small": {"config": "configs/small.json", "micro_batch": 1, "steps": 6, "filler": (180, 185)},
}
SAMPLES = 16
# per-step phase times of metrics.jsonl (the rest of step_time is compute)
PHASES = ("t_optimizer", "t_io", "t_gather", "t_reduce")
LOSS_RTOL = 1e-4  # first-step loss, vlmtrain vs PyTorch, relative


def parse_args():
    ap = argparse.ArgumentParser(
        description="Training-step time of vlmtrain vs the PyTorch reference model.")
    ap.add_argument("--configs", default="tiny,small",
                    help="comma-separated, of: %s (default: tiny,small)" % ",".join(CONFIGS))
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads for both sides (default: nproc = %d)" % os.cpu_count())
    ap.add_argument("--steps", type=int, default=None,
                    help="optimizer steps per side and config, the first one untimed "
                         "(default: tiny 30, small 6)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs of each side per config, in the order vlmtrain, PyTorch, "
                         "PyTorch, vlmtrain, ...; timed steps are pooled (default 2)")
    ap.add_argument("--vlmtrain", default=None,
                    help="the vlmtrain program (default: $VLMTRAIN, else <repo>/build/vlmtrain)")
    ap.add_argument("--work", default=None,
                    help="work directory, kept (default: a temporary one, removed)")
    ap.add_argument("--sgemm-n", type=int, default=2048, help="sgemm size (default 2048)")
    ap.add_argument("--flop-per-cycle", type=float, default=None,
                    help="override the fp32 FLOP/cycle/core derived from the CPU")
    ap.add_argument("--clock-mhz", type=float, default=None,
                    help="override the clock read from /proc/cpuinfo")
    ap.add_argument("--no-probe", action="store_true",
                    help="skip the measured clock (benchmarks/clock_probe.c)")
    ap.add_argument("--json", default=None, help="also write every number to this file")
    a = ap.parse_args()
    a.configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    for c in a.configs:
        if c not in CONFIGS:
            ap.error("unknown config %r (known: %s)" % (c, ", ".join(CONFIGS)))
    if a.threads < 1:
        ap.error("--threads must be >= 1")
    if a.repeat < 1:
        ap.error("--repeat must be >= 1")
    if a.steps is not None and a.steps < 2:
        ap.error("--steps must be >= 2 (the first step is not timed)")
    return a


ARGS = parse_args()
# Thread counts must be in the environment before numpy/torch load their BLAS.
for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_k] = str(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "reference"))
import flop_ref  # noqa: E402
import monkey_ref as mr  # noqa: E402
import peak  # noqa: E402


def log(msg):
    print(msg, flush=True)


def find_vlmtrain(arg):
    exe = arg or os.environ.get("VLMTRAIN") or os.path.join(REPO, "build", "vlmtrain")
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        sys.exit("bench_train_step: no vlmtrain program at %s; build it (cmake -S %s -B build "
                 "&& cmake --build build -j) or give --vlmtrain PATH" % (exe, REPO))
    return os.path.abspath(exe)


def run(cmd, env=None, log_path=None):
    """Runs cmd; on failure prints its output and exits."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if log_path:
        with open(log_path, "w") as f:
            f.write(r.stdout + r.stderr)
    if r.returncode != 0:
        sys.exit("bench_train_step: %s failed (exit %d):\n%s%s" % (
            " ".join(cmd), r.returncode, r.stdout[-2000:], r.stderr[-2000:]))
    return r


def train_config(micro_batch, steps):
    """The training config both sides run (vlmtrain reads it; ReferenceTrainer too)."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "steps_per_print": steps,
        "train_steps": steps,
        "seed": 7,
        "optimizer": {"type": "AdamW",
                      "params": {"lr": 1e-5, "betas": [0.9, 0.95], "eps": 1e-8,
                                 "weight_decay": 0.1}},
        "scheduler": {"type": "cosine",
                      "params": {"warmup_num_steps": 0, "total_num_steps": steps}},
        "trainable": "monkey",
        "param_groups": [
            {"name": "no_decay", "patterns": ["*bias", "*lora_scale", "transformer.visual.*ln_*"],
             "weight_decay": 0.0},
            {"name": "default", "patterns": ["*"]},
        ],
        "recompute": {"vit": False, "llm": False},
        "data": {"shuffle": False},
    }


def prepare(vlm, name, spec, steps, wd):
    """Model directory, dataset and training config of one config in wd."""
    os.makedirs(wd, exist_ok=True)
    model_dir, data, train = (os.path.join(wd, "model"), os.path.join(wd, "data.h5"),
                              os.path.join(wd, "train.json"))
    cfg_path = os.path.join(REPO, spec["config"])
    run([vlm, "init", "--config", cfg_path, "--out", model_dir, "--seed", "0"],
        log_path=os.path.join(wd, "init.log"))
    cmd = [vlm, "mkdata", "--synthetic", "--config", cfg_path, "--out", data,
           "--samples", str(SAMPLES), "--seed", "1"]
    if spec["filler"]:
        cmd += ["--filler-min", str(spec["filler"][0]), "--filler-max", str(spec["filler"][1])]
    run(cmd, log_path=os.path.join(wd, "mkdata.log"))
    tc = train_config(spec["micro_batch"], steps)
    with open(train, "w") as f:
        json.dump(tc, f, indent=2)
    return model_dir, data, train, tc


def vlmtrain_side(vlm, model_dir, data, train, threads, wd):
    """[{step, loss, step_time, flops, tokens}] of every step, read from metrics.jsonl."""
    out = os.path.join(wd, "run")
    if os.path.isdir(out):
        shutil.rmtree(out)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    run([vlm, "train", "--model", model_dir, "--data", data, "--config", train, "--out", out],
        env=env, log_path=os.path.join(wd, "train.log"))
    wall = time.perf_counter() - t0
    rows = []
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            row = {"step": m["step"], "loss": m["loss"], "step_time": m["step_time"],
                   "flops": m["gflops"] * 1e9 * m["step_time"], "tokens": m["tokens"]}
            for k in PHASES:  # phase times, where this vlmtrain reports them
                if k in m:
                    row[k] = m[k]
            rows.append(row)
    n_train = n_all = None
    with open(os.path.join(wd, "train.log")) as f:
        for line in f:  # "trainable params: N || all params: M || ..."
            if line.startswith("trainable params:"):
                parts = line.replace("||", ":").split(":")
                n_train, n_all = int(parts[1]), int(parts[3])
    return rows, wall, n_all, n_train


def torch_side(cfg, model_dir, data, tc, steps, threads):
    """[{step, loss, step_time}] of the PyTorch reference, float32, same steps."""
    torch.set_num_threads(threads)
    weights = mr.load_safetensors(os.path.join(model_dir, "model.safetensors"))
    model = mr.MonkeyRef(cfg, weights, torch.float32)
    del weights
    samples = [(t, l, list(im)) for t, l, im in mr.read_dataset(data)]
    trainer = mr.ReferenceTrainer(model, tc, mr.trainable_names(cfg, tc["trainable"]))
    rows = []
    for s in range(steps):
        t0 = time.perf_counter()
        r = trainer.step(s, samples)  # grad=None, fwd+bwd, clip_grad_norm_, AdamW.step
        dt = time.perf_counter() - t0
        rows.append({"step": s + 1, "loss": r["loss"], "step_time": dt})
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    return rows, n_all, n_train


def reference_extra_flops(cfg, data, micro_batch, steps):
    """Per step, the FLOPs the PyTorch reference executes beyond vlmtrain's count
    (flop_ref.extra_flops, which test model_train_steps checks against PyTorch's
    profiler): lm_head and the last LLM block's c_proj and MLP at every row, that
    block's q projection and attention before each sample's first target, the
    masked half of causal attention, the resampler's query projection per view."""
    samples = mr.read_dataset(data)
    return [flop_ref.extra_flops(cfg, [samples[(st * micro_batch + j) % len(samples)]
                                       for j in range(micro_batch)])
            for st in range(steps)]


def summarize(runs, flops, tokens):
    """Median/min over the steps after the first of every run (runs: lists of rows
    with step_time; step i of every run did the work flops[i] on tokens[i])."""
    t, rate, tps = [], [], []
    for rows in runs:
        for i, r in enumerate(rows[1:], start=1):
            x = r["step_time"]
            t.append(x)
            rate.append(flops[i] / x * 1e-9)
            tps.append(tokens[i] / x)
    return {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
            "gflops": statistics.median(rate), "tokens_per_s": statistics.median(tps),
            "timed_steps": len(t)}


def bench_config(vlm, name, a, base):
    spec = CONFIGS[name]
    steps = a.steps or spec["steps"]
    wd = os.path.join(base, name)
    log("== %s: preparing (%s, micro-batch %d, %d samples, %d steps x %d repeat(s))" % (
        name, spec["config"], spec["micro_batch"], SAMPLES, steps, a.repeat))
    model_dir, data, train, tc = prepare(vlm, name, spec, steps, wd)
    cfg = mr.MonkeyConfig.load(os.path.join(model_dir, "config.json"))

    vruns, pruns, vwall, pwall = [], [], 0.0, 0.0
    v_counts = p_counts = None
    for rep in range(a.repeat):
        # order vlmtrain, PyTorch, then PyTorch, vlmtrain, ... so that a load that
        # grows or fades during the run weighs on both sides alike
        for side in (("vlmtrain", "torch") if rep % 2 == 0 else ("torch", "vlmtrain")):
            if side == "vlmtrain":
                log("== %s [%d]: vlmtrain train, OMP_NUM_THREADS=%d" % (name, rep + 1, a.threads))
                rows, wall, n_all, n_train = vlmtrain_side(vlm, model_dir, data, train,
                                                           a.threads, wd)
                vruns.append(rows)
                vwall += wall
                v_counts = (n_all, n_train)
            else:
                log("== %s [%d]: PyTorch %s reference, %d threads" % (
                    name, rep + 1, torch.__version__, a.threads))
                t0 = time.perf_counter()
                rows, n_all, n_train = torch_side(cfg, model_dir, data, tc, steps, a.threads)
                pwall += time.perf_counter() - t0
                pruns.append(rows)
                p_counts = (n_all, n_train)
            log("   step times (s): " + " ".join("%.3f" % r["step_time"] for r in rows))

    vrows, prows = vruns[0], pruns[0]
    flops = [r["flops"] for r in vrows]
    tokens = [r["tokens"] for r in vrows]
    v = summarize(vruns, flops, tokens)
    p = summarize(pruns, flops, tokens)
    extra = reference_extra_flops(cfg, data, spec["micro_batch"], steps)
    p_exec = summarize(pruns, [f + e for f, e in zip(flops, extra)], tokens)
    phases = {}
    for k in PHASES:
        vals = [r[k] for rows in vruns for r in rows[1:] if k in r]
        if vals:
            phases[k] = statistics.median(vals)
    lv, lp = vrows[0]["loss"], prows[0]["loss"]
    loss_rel = abs(lv - lp) / max(abs(lv), 1e-30)
    all_rel = max(abs(x["loss"] - y["loss"]) / max(abs(x["loss"]), 1e-30)
                  for x, y in zip(vrows, prows))
    return {
        "config": name, "model_config": spec["config"], "micro_batch": spec["micro_batch"],
        "steps": steps, "repeat": a.repeat, "params": p_counts[0], "trainable": p_counts[1],
        "same_trainable": v_counts == p_counts,
        "tokens_per_step": statistics.median(tokens[1:]),
        "gflop_per_step": statistics.median(flops[1:]) * 1e-9,
        "torch_executed_gflop_per_step": statistics.median(
            [f + e for f, e in zip(flops[1:], extra[1:])]) * 1e-9,
        "torch_executed_gflops": p_exec["gflops"], "vlmtrain_phases_median_s": phases,
        "vlmtrain": v, "torch": p, "vlmtrain_wall_s": vwall, "torch_wall_s": pwall,
        "ratio_median": p["median_s"] / v["median_s"], "ratio_min": p["min_s"] / v["min_s"],
        "loss_first": {"vlmtrain": lv, "torch": lp, "rel_diff": loss_rel,
                       "ok": loss_rel <= LOSS_RTOL},
        "loss_max_rel_diff_all_steps": all_rel,
        "vlmtrain_runs": vruns, "torch_runs": pruns,
    }


def fmt_table(r, pk, pk_meas, sgemm):
    """Markdown table of one config."""
    head = ("| %s | step median (s) | step min (s) | GFLOP/s | %% of peak | %%"
            " of peak @ measured clock | %% of sgemm | tokens/s |" % r["config"])
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, k in (("vlmtrain", "vlmtrain"), ("PyTorch %s" % torch.__version__, "torch")):
        s = r[k]
        lines.append("| %s | %.3f | %.3f | %.1f | %.1f%% | %s | %.1f%% | %.0f |" % (
            label, s["median_s"], s["min_s"], s["gflops"], 100.0 * s["gflops"] / pk,
            ("%.1f%%" % (100.0 * s["gflops"] / pk_meas)) if pk_meas else "n/a",
            100.0 * s["gflops"] / sgemm, s["tokens_per_s"]))
    return "\n".join(lines)


def main():
    a = ARGS
    vlm = find_vlmtrain(a.vlmtrain)
    base = a.work or tempfile.mkdtemp(prefix="vlm-bench-")
    os.makedirs(base, exist_ok=True)
    t_start = time.perf_counter()
    torch.set_num_threads(a.threads)

    load0 = os.getloadavg()
    facts = peak.cpu_facts()
    if load0[0] > 0.5:
        log("warning: load average %.2f before the benchmark starts: other work is running, "
            "the timings will be noisy (compare minima, or re-run on an idle machine)" % load0[0])
    pk = peak.theoretical_peak(facts, a.threads, a.flop_per_cycle, a.clock_mhz)
    log("== machine and peak")
    log(pk["text"])
    if a.threads > facts["cores"]:
        log("note: %d threads on %d physical cores: the peak counts %d cores" % (
            a.threads, facts["cores"], facts["cores"]))
    mc = {"error": "skipped (--no-probe)"} if a.no_probe else peak.measured_clock(a.threads)
    pk_meas = None
    if "error" in mc:
        log("clock probe: " + mc["error"])
    else:
        pk_meas = pk["cores_used"] * mc["clock_mhz_mean"] * 1e-3 * pk["fpc"]
        log("clock probe (benchmarks/clock_probe.c): cores run at %.0f MHz (min over threads "
            "%.0f), sustain %.2f fp32 FLOP/cycle with %d-lane FMAs -> peak at the measured clock "
            "= %d x %.3f GHz x %g = %.1f GFLOP/s" % (
                mc["clock_mhz_mean"], mc["clock_mhz_min"], mc["fma_flop_per_cycle"],
                mc["fma_lanes"], pk["cores_used"], mc["clock_mhz_mean"] * 1e-3, pk["fpc"],
                pk_meas))
    sg = peak.sgemm_rates(a.sgemm_n, a.threads)
    for k in ("torch", "numpy"):
        log("sgemm %d^3 fp32 via %s (%d threads): median %.1f GFLOP/s, best %.1f = %.0f%% of "
            "peak%s" % (a.sgemm_n, "torch.mm" if k == "torch" else "numpy.dot", a.threads,
                        sg[k]["median_gflops"], sg[k]["best_gflops"],
                        100.0 * sg[k]["median_gflops"] / pk["gflops"],
                        (", %.0f%% at the measured clock" % (
                            100.0 * sg[k]["median_gflops"] / pk_meas)) if pk_meas else ""))
    # the achievable reference: the best repetition of either (both call the same
    # OpenBLAS); medians are printed too, but on a busy machine they measure the load
    sgemm_ref = max(sg["torch"]["best_gflops"], sg["numpy"]["best_gflops"])
    blas = peak.mapped_blas()
    log("BLAS in this process (torch, numpy): " + ", ".join(blas))
    r = subprocess.run(["ldd", vlm], capture_output=True, text=True)
    vblas = [ln.split("=>")[-1].split("(")[0].strip() for ln in r.stdout.splitlines()
             if any(x in ln for x in ("blas", "gomp", "lapack"))]
    log("BLAS of vlmtrain (ldd): " + ", ".join(vblas))

    results = []
    for name in a.configs:
        results.append(bench_config(vlm, name, a, base))

    log("")
    log("== results: %d threads, recomputation off on both sides (vlmtrain recompute.vit and "
        "recompute.llm false; the PyTorch reference keeps every activation)" % a.threads)
    log("peak %.1f GFLOP/s (%s); sgemm %d^3 %.1f GFLOP/s (best repetition of torch.mm "
        "and numpy.dot)" % (pk["gflops"], "%d cores x %.3f GHz x %g FLOP/cycle" % (
            pk["cores_used"], pk["mhz"] * 1e-3, pk["fpc"]), a.sgemm_n, sgemm_ref)
        + ("; peak at the measured clock %.1f GFLOP/s" % pk_meas if pk_meas else ""))
    for r in results:
        log("")
        log("%s (%s): %s parameters, %s trained (Monkey preset; %s); micro-batch %d; "
            "%d runs of %d steps per side, median/min over the %d steps after each run's first; "
            "%.0f tokens and %.2f counted GFLOP per step" % (
                r["config"], r["model_config"], format(r["params"], ","),
                format(r["trainable"], ","), "same counts in both" if r["same_trainable"] else
                "MISMATCH: vlmtrain trains a different set", r["micro_batch"], r["repeat"],
                r["steps"], r["vlmtrain"]["timed_steps"], r["tokens_per_step"],
                r["gflop_per_step"]))
        log("")
        log(fmt_table(r, pk["gflops"], pk_meas, sgemm_ref))
        log("")
        lf = r["loss_first"]
        log("ratio PyTorch / vlmtrain: %.2fx (medians), %.2fx (minima)" % (
            r["ratio_median"], r["ratio_min"]))
        ph = r["vlmtrain_phases_median_s"]
        if ph:
            med = r["vlmtrain"]["median_s"]
            log("vlmtrain phases (medians, s): " + ", ".join(
                "%s %.4f (%.1f%%)" % (k[2:], x, 100.0 * x / med) for k, x in ph.items() if x > 0)
                + "; the rest of the step is forward + backward")
        log("GFLOP/s above credit both sides with vlmtrain's count; the reference executes "
            "about %.2f GFLOP per step (%.0f%% more: lm_head and its gradients at every "
            "position, and the last LLM block's c_proj and MLP at every row, where vlmtrain "
            "computes both at the target positions only, and that block's q projection and "
            "attention at every row, where vlmtrain runs them from the first target on; the "
            "masked half of causal attention; the resampler's query projection per view), "
            "%.1f GFLOP/s of executed arithmetic" % (
                r["torch_executed_gflop_per_step"],
                100.0 * (r["torch_executed_gflop_per_step"] / r["gflop_per_step"] - 1.0),
                r["torch_executed_gflops"]))
        log("first-step loss: vlmtrain %.7f, PyTorch %.7f, relative difference %.1e (%s); "
            "largest over all %d steps %.1e" % (
                lf["vlmtrain"], lf["torch"], lf["rel_diff"],
                "same work" if lf["ok"] else "MISMATCH: the two did not compute the same thing",
                r["steps"], r["loss_max_rel_diff_all_steps"]))
    total = time.perf_counter() - t_start
    load1 = os.getloadavg()
    log("")
    log("load average (1, 5, 15 min) at the start %.2f %.2f %.2f, at the end %.2f %.2f %.2f on "
        "%d logical CPUs; this benchmark alone accounts for about %d, more means other work "
        "shared the cores" % (load0 + load1 + (facts["logical_cpus"], a.threads)))
    if max(load0[0], load1[0]) > a.threads + 0.5:
        log("warning: the machine was busy: medians are unreliable, minima less so; re-take "
            "the numbers on an idle machine")
    log("total %.0f s; work directory %s%s" % (total, base, "" if a.work else " (removed)"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"threads": a.threads, "peak": {k: pk[k] for k in ("gflops", "cores_used",
                                                                           "fpc", "mhz")},
                       "peak_text": pk["text"], "clock_probe": mc, "peak_measured_clock": pk_meas,
                       "sgemm": sg, "blas_torch_numpy": blas, "blas_vlmtrain": vblas,
                       "torch": torch.__version__, "numpy": np.__version__,
                       "loadavg_start": load0, "loadavg_end": load1,
                       "results": results, "total_s": total}, f, indent=2)
    if not a.work:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if all(r["loss_first"]["ok"] and r["same_trainable"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
