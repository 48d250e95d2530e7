# tests/reference/test_train_steps.py: ten AdamW steps of the C trainer against
# the same ten steps of the PyTorch reference (monkey_ref.ReferenceTrainer).
#
# Writes a tiny model with random weights, a 7-sample dataset (one sample with two
# images, one text-only; the data wraps around) and a training config with the
# Monkey preset, three parameter groups (LoRA at 10x lr, no-decay, rest), AdamW,
# cosine schedule with 3 warmup steps, clipping 1.0, micro-batch 2 x accumulation
# 2, then runs
#     $VLMTRAIN train --model MODEL --data DATA.h5 --config TRAIN.json --out RUN --steps 10
# and compares RUN/metrics.jsonl (loss, lr, grad_norm per step) and
# RUN/final/model.safetensors (every parameter, F32) with the reference: frozen
# tensors must be bit-identical to the initial ones, trainable ones must have
# changed and agree with the reference. The FLOPs vlmtrain reports per step
# (gflops x step_time) must equal what PyTorch's profiler counts in the
# reference's matrix products for the same step, less the work vlmtrain skips by
# design (flop_ref.py).
#
# Usage: test_train_steps.py [--reference-only]   (prints "N passed, M failed")
import json
import os
import sys

import numpy as np
import torch

import flop_ref
import testlib as tl
from testlib import mr

STEPS = 10
LOSS_TOL = 1e-4     # relative, per step
NORM_TOL = 1e-4     # relative, per step
LR_TOL = 1e-6       # relative, per step (0 at step 1 with warmup: absolute 1e-12)
WEIGHT_TOL = 1e-4   # max|w_c - w_ref| / max|w_ref|, per tensor
FLOP_TOL = 1e-4     # relative, per step (metrics.jsonl holds 6 significant digits)

TRAIN = {
    "trainable": "monkey",
    "param_groups": [
        {"name": "lora", "patterns": ["*lora_a*", "*lora_b*"], "lr_scale": 10.0,
         "weight_decay": 0.1},
        {"name": "no_decay", "patterns": ["*bias", "*lora_scale", "transformer.visual.*ln_*"],
         "weight_decay": 0.0},
        {"name": "rest", "patterns": ["*"]},
    ],
    "optimizer": {"type": "AdamW",
                  "params": {"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}},
    "scheduler": {"type": "cosine", "params": {"warmup_num_steps": 3, "total_num_steps": STEPS}},
    "gradient_clipping": 1.0,
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 2,
    "train_steps": STEPS,
    "data": {"shuffle": False},
}


def setup(wd):
    cfg_dict = tl.tiny_config_dict()
    cfg = mr.MonkeyConfig(cfg_dict)
    weights = mr.random_weights(cfg, 4242)
    model_dir = os.path.join(wd, "model")
    mr.write_model_dir(model_dir, cfg_dict, weights)
    data = os.path.join(wd, "data.h5")
    mr.write_dataset(data, tl.make_samples(cfg, 77, 7, two_image_at=2, text_only_at=5),
                     cfg.image_size)
    train = os.path.join(wd, "train.json")
    with open(train, "w") as f:
        json.dump(TRAIN, f, indent=2)
    return cfg, model_dir, data, train


def reference_run(cfg, model_dir, data, dtype):
    w0 = mr.load_safetensors(os.path.join(model_dir, "model.safetensors"))
    m = mr.MonkeyRef(cfg, w0, dtype)
    samples = [(t, l, list(im)) for t, l, im in mr.read_dataset(data)]
    tr = mr.ReferenceTrainer(m, TRAIN, mr.trainable_names(cfg, TRAIN["trainable"]))
    metrics = []
    for s in range(STEPS):  # each step's FLOPs: profiled, less what vlmtrain skips
        r, flops = flop_ref.profiled_step_flops(tr, s, samples)
        r["flops"] = flops - sum(flop_ref.extra_flops(cfg, mb)
                                 for mb in tr.microbatches(s, samples))
        metrics.append(r)
    final = {n: p.detach().to(torch.float64).numpy().copy() for n, p in m.p.items()}
    return metrics, final, tr


def compare_metrics(C, tag, got, ref):
    """got: list of dicts by step 1..STEPS."""
    rows, bad = [], []
    for r in ref:
        g = got.get(r["step"])
        if g is None:
            bad.append("step %d missing" % r["step"])
            continue
        le = abs(g["loss"] - r["loss"]) / abs(r["loss"])
        ne = abs(g["grad_norm"] - r["grad_norm"]) / max(abs(r["grad_norm"]), 1e-12)
        lre = abs(g["lr"] - r["lr"]) / r["lr"] if r["lr"] > 0 else abs(g["lr"])
        rows.append((r["step"], g["loss"], r["loss"], le, g["grad_norm"], r["grad_norm"], ne,
                     g["lr"], r["lr"]))
        if le > LOSS_TOL:
            bad.append("step %d loss %.2e" % (r["step"], le))
        if ne > NORM_TOL:
            bad.append("step %d grad_norm %.2e" % (r["step"], ne))
        if lre > (LR_TOL if r["lr"] > 0 else 1e-12):
            bad.append("step %d lr %g vs %g" % (r["step"], g["lr"], r["lr"]))
    print("   %s   step  loss C / ref (rel)                 grad_norm C / ref (rel)          lr C / ref" % tag)
    for s, lc, lr_, le, nc, nr, ne, lrc, lrr in rows:
        print("   %4d  %.8f / %.8f (%.1e)  %.6e / %.6e (%.1e)  %.3e / %.3e" %
              (s, lc, lr_, le, nc, nr, ne, lrc, lrr))
    C.check("%s: per-step loss, grad_norm, lr" % tag, not bad and len(rows) == len(ref),
            "; ".join(bad[:12]) if bad else "worst loss %.1e, grad_norm %.1e" %
            (max(r[3] for r in rows), max(r[6] for r in rows)))


def compare_flops(C, got, ref):
    """vlmtrain's FLOP count per step against the reference's, profiled."""
    errs = []
    for r in ref:
        g = got.get(r["step"])
        if g is not None:
            errs.append((r["step"], g["flops"], r["flops"], abs(g["flops"] - r["flops"]) / r["flops"]))
    print("   step  FLOPs vlmtrain / reference profiled less skipped work (rel)")
    for s, a, b, e in errs:
        print("   %4d  %.6e / %.6e (%.1e)" % (s, a, b, e))
    C.check("FLOPs per step: vlmtrain's count = the reference's profiled products less the "
            "work vlmtrain skips (flop_ref.py)", len(errs) == len(ref) and
            all(e <= FLOP_TOL for _, _, _, e in errs),
            "worst %.1e (tolerance %.0e)" % (max(e for _, _, _, e in errs), FLOP_TOL)
            if errs else "no steps")


def compare_weights(C, tag, cfg, final_path, init_path, ref_final, tol):
    raw = mr.read_safetensors_raw(final_path)
    init = mr.read_safetensors_raw(init_path)
    names = [n for n, _ in mr.param_shapes(cfg)]
    trainable = set(mr.trainable_names(cfg, TRAIN["trainable"]))
    missing = [n for n in names if n not in raw]
    extra = [n for n in raw if n not in set(names)]
    not_f32 = [n for n in raw if raw[n][0] != "F32"]
    C.check("%s: final/model.safetensors holds every parameter as F32" % tag,
            not missing and not extra and not not_f32,
            "missing %s unexpected %s non-F32 %s" % (missing[:4], extra[:4], not_f32[:4]))
    frozen_changed = [n for n in names if n not in trainable and n in raw
                      and raw[n][2] != init[n][2]]
    C.check("%s: every frozen parameter bit-identical to the initial weights (%d)" %
            (tag, len(names) - len(trainable)), not frozen_changed, ", ".join(frozen_changed[:8]))
    final = mr.load_safetensors(final_path)
    unchanged = [n for n in trainable if n in raw and raw[n][2] == init[n][2]]
    C.check("%s: every trainable parameter changed (%d)" % (tag, len(trainable)),
            not unchanged, ", ".join(unchanged[:8]))
    check_weights(C, tag, cfg, {n: final[n] for n in trainable if n in final}, ref_final,
                  mr.load_safetensors(init_path), tol)


def zero_gradient_slices(cfg):
    """Elements whose exact gradient is 0: the resampler's key bias (softmax over
    the keys is invariant to adding q.b_k to every key of a query's row). Their
    computed gradient is rounding noise (~1e-9 in fp32), which Adam's
    normalisation m/(sqrt(v)+eps) turns into O(lr) steps of random sign: fp32
    torch vs float64 already differ by 1.7e-4 of max|w| there after 10 steps, and
    no fp32 program can do better than chance. They are checked against Adam's
    bound instead (|w - w0| <= 3 * sum of lr), the rest of the tensor at tol."""
    E = cfg.output_dim
    return {"transformer.visual.attn_pool.attn.in_proj_bias": slice(E, 2 * E)}


def adam_excursion_bound():
    lrs = [TRAIN["optimizer"]["params"]["lr"] *
           mr.cosine_lambda(s, TRAIN["scheduler"]["params"]["warmup_num_steps"], STEPS)
           for s in range(STEPS)]
    return 3.0 * sum(lrs)


def check_weights(C, tag, cfg, final, ref_final, init, tol):
    """final: {trainable name: array}; relative to max|w_ref| per tensor."""
    zs = zero_gradient_slices(cfg)
    errors, bad, zero_notes = [], [], []
    for n in sorted(final):
        r = ref_final[n].astype(np.float64)
        g = final[n].astype(np.float64)
        ref_max = float(np.abs(r).max())
        if n in zs:
            sl = zs[n]
            exc = float(np.abs(g[sl] - init[n][sl].astype(np.float64)).max())
            zero_notes.append("%s[%d:%d] moved %.1e (bound %.1e)" %
                              (n, sl.start, sl.stop, exc, adam_excursion_bound()))
            if not exc <= adam_excursion_bound():
                bad.append("%s zero-gradient slice moved %.2e" % (n, exc))
            keep = np.ones(r.shape[0], bool)
            keep[sl] = False
            r, g = r[keep], g[keep]
        err = float(np.abs(g - r).max()) / max(ref_max, 1e-12)
        errors.append((n, err, ref_max))
        if not err <= tol:
            bad.append("%s (%.2e)" % (n, err))
    tl.rel_err_table(errors, tag + " final weight errors")
    for z in zero_notes:
        print("   exact-zero-gradient slice: " + z)
    C.check("%s: final trainable weights within %.0e of the reference" % (tag, tol),
            not bad and bool(errors),
            ("%d over: %s" % (len(bad), ", ".join(bad[:16]))) if bad else
            "worst %.2e" % max(e[1] for e in errors))


def read_metrics(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                d = json.loads(line)
                out[int(d["step"])] = {k: float(d[k]) for k in ("loss", "lr", "grad_norm")}
                out[int(d["step"])]["flops"] = float(d["gflops"]) * 1e9 * float(d["step_time"])
    return out


def main():
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    reference_only = "--reference-only" in sys.argv[1:]
    C = tl.Checks("10 AdamW steps: vlmtrain train vs the PyTorch reference")
    wd = tl.work_dir("train_steps")
    cfg, model_dir, data, train = setup(wd)

    ref_metrics, ref_final, tr = reference_run(cfg, model_dir, data, torch.float64)
    groups = {g: len(n) for g, n, _, _ in tr.groups}
    C.check("reference: parameter groups", groups["lora"] == 3 * 4 * 2 * cfg.layers
            and groups["no_decay"] > 0 and groups["rest"] > 0, str(groups))
    C.check("reference: loss falls over 10 steps",
            ref_metrics[-1]["loss"] < ref_metrics[0]["loss"],
            "%.4f -> %.4f" % (ref_metrics[0]["loss"], ref_metrics[-1]["loss"]))
    if reference_only:
        # How far float32 arithmetic alone drifts from float64 over the 10 steps:
        # the floor under any fp32 implementation's agreement with the reference.
        m32, f32, _ = reference_run(cfg, model_dir, data, torch.float32)
        compare_metrics(C, "reference fp32 vs fp64", {r["step"]: r for r in m32}, ref_metrics)
        w0 = mr.load_safetensors(os.path.join(model_dir, "model.safetensors"))
        trainable = mr.trainable_names(cfg, TRAIN["trainable"])
        check_weights(C, "reference fp32 vs fp64", cfg, {n: f32[n] for n in trainable},
                      ref_final, w0, WEIGHT_TOL)
        C.finish()

    prog = os.environ.get("VLMTRAIN", "")
    if not C.check("VLMTRAIN names the vlmtrain program",
                   bool(prog) and os.path.isfile(prog), "VLMTRAIN=%r" % prog):
        C.finish()
    run_dir = os.path.join(wd, "run")
    code, _ = tl.run([prog, "train", "--model", model_dir, "--data", data, "--config", train,
                      "--out", run_dir, "--steps", str(STEPS)], log=os.path.join(wd, "train.log"))
    if not C.check("vlmtrain train ran 10 steps", code == 0, "rc %d (log %s)" %
                   (code, os.path.join(wd, "train.log"))):
        C.finish()
    mpath = os.path.join(run_dir, "metrics.jsonl")
    fpath = os.path.join(run_dir, "final", "model.safetensors")
    have = os.path.exists(mpath) and os.path.exists(fpath) and \
        os.path.exists(os.path.join(run_dir, "final", "config.json"))
    if not C.check("run wrote metrics.jsonl, final/model.safetensors, final/config.json", have):
        C.finish()
    compare_metrics(C, "C vs reference", read_metrics(mpath), ref_metrics)
    compare_flops(C, read_metrics(mpath), ref_metrics)
    compare_weights(C, "C vs reference", cfg, fpath, os.path.join(model_dir, "model.safetensors"),
                    ref_final, WEIGHT_TOL)
    C.finish()


if __name__ == "__main__":
    main()
