#!/usr/bin/python3
"""tests/cli/test_cli.py: the vlmtrain program as a user meets it.

Help texts, the parameter registry of the released Monkey config (counts taken
from the architecture document), trainable presets and rules, a short training
run with --audit (frozen parameters bit-identical, trainable ones changed), and
bad inputs: each must give a clear error naming the file/tensor/key, a non-zero
exit, no crash (no sanitizer report, no signal) and leave the inputs untouched.
"""
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vlmtest import SRC, Checks, read_st, run as vlm_run  # noqa: E402

WORK = os.path.join(os.environ.get("VLM_TEST_WORK", "."), "cli")
TINY = os.path.join(SRC, "configs", "tiny.json")
check = Checks()


def run(*args):
    return vlm_run(list(args), threads=2)


def expect_error(name, args, must_contain, files_unchanged=()):
    before = {f: digest(f) for f in files_unchanged}
    rc, out, err = run(*args)
    crashed = rc < 0 or "Sanitizer" in err or "runtime error" in err
    missing = [s for s in must_contain if s not in err]
    changed = [f for f in files_unchanged if digest(f) != before[f]]
    check(name, rc == 1 and not crashed and not missing and not changed,
          f"rc={rc} crashed={crashed} missing={missing} changed={changed}\nstderr: {err[-1500:]}")


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---- safetensors written independently of the C code (reading: tests/vlmtest.py) ----
def write_st(path, tensors, dtypes=None, tweak=None):
    header, blobs, off = {}, [], 0
    for k, a in tensors.items():
        dt = (dtypes or {}).get(k, "F32")
        raw = np.ascontiguousarray(a, dtype="<f4").tobytes() if dt == "F32" else \
            np.ascontiguousarray(a, dtype="<i4").tobytes()
        header[k] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if tweak:
        tweak(header)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def model_variant(name, tensors, **kw):
    d = os.path.join(WORK, name)
    os.makedirs(d, exist_ok=True)
    shutil.copy(TINY, os.path.join(d, "config.json"))
    write_st(os.path.join(d, "model.safetensors"), tensors, **kw)
    return d


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    os.chdir(WORK)

    # ---- help and usage ----
    rc, out, _ = run("--help")
    check("vlmtrain --help lists the commands", rc == 0 and all(c in out for c in ("params", "init", "mkdata", "train")))
    for cmd, opts in {"train": ["--model", "--data", "--config", "--out", "--steps", "--audit", "--device"],
                      "init": ["--config", "--out", "--seed"], "params": ["--train", "--list"],
                      "mkdata": ["--synthetic", "--config", "--out", "--samples", "--seed"]}.items():
        rc, out, _ = run(cmd, "--help")
        check(f"vlmtrain {cmd} --help lists every option with its default",
              rc == 0 and all(o in out for o in opts) and "default" in out, out)
    rc, _, err = run("frobnicate")
    check("unknown command is refused", rc == 2 and "unknown command" in err, err)
    expect_error("unknown option is refused", ["train", "--modle", "x"], ["--modle"])
    expect_error("missing required option is named", ["train", "--model", "x"], ["--data"])

    # ---- registry of the released model (numbers from docs: architecture section 1) ----
    rc, out, err = run("params", os.path.join(SRC, "configs", "monkey.json"))
    want = {"vit trunk": 1842770688, "vit lora": 51118656, "resampler": 76054528,
            "vit post": 16785408, "llm": 7721324544, "total": 9708053824}
    got = {}
    for line in out.splitlines():
        for k in want:
            if line.startswith(k + " "):
                got[k] = int(line.split()[len(k.split())])
    check("params: released Monkey config has 9,708,053,824 parameters with the documented parts",
          rc == 0 and got == want, f"got {got}\n{err}")
    trainable = 51118656 + 76054528 + 7721324544
    check("params: Monkey preset trains LoRA + resampler + LLM",
          f"trainable params: {trainable} || all params: 9708053824" in out, out[-600:])
    rc, out, _ = run("params", TINY, "--list")
    names = [l.split()[0] for l in out.splitlines() if l.startswith(("transformer.", "lm_head"))]
    check("params --list: upstream names", "transformer.visual.transformer.resblocks.1.attn.in_proj_lora.3.lora_b.weight" in names
          and "transformer.visual.attn_pool.kv_proj.weight" in names and "lm_head.weight" in names, str(names[:5]))

    # ---- trainable rules and groups ----
    def train_cfg(name, extra):
        cfg = {"train_micro_batch_size_per_gpu": 2, "train_steps": 3, "steps_per_print": 1,
               "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "data": {"shuffle": False}}
        cfg.update(extra)
        p = os.path.join(WORK, name)
        with open(p, "w") as f:
            json.dump(cfg, f)
        return p

    for preset, want_train in (("lora-only", 51118656 + 76054528), ("full", 9708053824)):
        rc, out, _ = run("params", os.path.join(SRC, "configs", "monkey.json"), "--train", train_cfg(preset + ".json", {"trainable": preset}))
        check(f"preset {preset}", rc == 0 and f"trainable params: {want_train} |" in out, out[-400:])
    expect_error("a trainable rule that matches nothing is an error",
                 ["params", TINY, "--train", train_cfg("norule.json", {"trainable": ["*lora*", "transformer.vision.*"]})],
                 ["transformer.vision.*"])
    expect_error("a group pattern that matches nothing is an error",
                 ["params", TINY, "--train", train_cfg("nogroup.json", {"param_groups": [{"name": "x", "patterns": ["*nothing*"]}]})],
                 ["*nothing*"])

    # ---- a real short run with --audit ----
    rc, out, err = run("init", "--config", TINY, "--out", "model", "--seed", "3")
    check("init writes a model directory", rc == 0 and os.path.exists("model/model.safetensors"), err)
    rc, out, err = run("mkdata", "--synthetic", "--config", TINY, "--out", "data.h5", "--samples", "16", "--seed", "4")
    check("mkdata --synthetic writes a dataset", rc == 0 and os.path.exists("data.h5"), err)
    good_cfg = train_cfg("train.json", {"scheduler": {"type": "constant"}})
    rc, out, err = run("train", "--model", "model", "--data", "data.h5", "--config", good_cfg, "--out", "run", "--audit")
    check("train runs and the audit passes", rc == 0 and "(bit-identical)" in out, out[-800:] + err[-800:])
    rows = [json.loads(l) for l in open("run/metrics.jsonl")] if rc == 0 else []
    check("metrics.jsonl has one object per step with the documented keys",
          len(rows) == 3 and all(all(k in r for k in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "gflops")) for r in rows), str(rows[:1]))
    if rc == 0:
        a, b = read_st("model/model.safetensors"), read_st("run/final/model.safetensors")
        frozen_same = all(np.array_equal(a[k], b[k]) for k in a
                          if k.startswith("transformer.visual.") and "lora" not in k and ".attn_pool." not in k)
        train_changed = all(not np.array_equal(a[k], b[k]) for k in a
                            if "lora" in k or ".attn_pool." in k or k.startswith(("transformer.h.", "transformer.wte", "transformer.ln_f", "lm_head")))
        check("after training every frozen tensor is bit-identical", frozen_same)
        check("after training every trainable tensor changed", train_changed)
    rc, out, _ = run("train", "--model", "model", "--data", "data.h5", "--config", good_cfg, "--out", "run2", "--steps", "1")
    check("--steps overrides train_steps", rc == 0 and len(open("run2/metrics.jsonl").readlines()) == 1)

    # ---- OpenMP binding: vlmtrain re-executes itself to set GOMP_SPINCOUNT; with
    # OMP_PROC_BIND/OMP_PLACES the new image must still get every CPU of the process
    # (it once inherited the one CPU libgomp had bound the first thread to) ----
    want_cpus = min(2, len(os.sched_getaffinity(0)))
    bind_env = {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}
    # without GOMP_SPINCOUNT and OMP_WAIT_POLICY, so that the re-exec happens
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    p = subprocess.run([os.environ["VLMTRAIN"], "train", "--model", "model", "--data", "data.h5",
                        "--config", good_cfg, "--out", "run_bind", "--steps", "1"],
                       capture_output=True, text=True, timeout=600,
                       env={**env, **bind_env, "OMP_NUM_THREADS": "2"})
    line = next((l for l in p.stdout.splitlines() if l.startswith("threads: ")), "")
    cpus = {c for c in (part.split(" on CPU ")[-1] for part in line.split(",") if " on CPU " in part)}
    check("OMP_PROC_BIND=close OMP_PLACES=cores: the 2 threads are bound to %d CPU(s)" % want_cpus,
          p.returncode == 0 and "bound (close)" in line and len(cpus) == want_cpus,
          f"rc={p.returncode} line={line!r}\n{p.stderr[-800:]}")
    p = subprocess.run(["taskset", "-c", str(max(os.sched_getaffinity(0))), os.environ["VLMTRAIN"],
                        "train", "--model", "model", "--data", "data.h5", "--config", good_cfg,
                        "--out", "run_bind1", "--steps", "1"],
                       capture_output=True, text=True, timeout=600,
                       env={**env, **bind_env, "OMP_NUM_THREADS": "2"})
    check("2 threads on a 1-CPU mask: both on that CPU, and a warning that names the fix",
          p.returncode == 0 and "share 1 CPU(s)" in p.stderr and "OMP_NUM_THREADS=1" in p.stderr,
          f"rc={p.returncode}\n{p.stdout[-400:]}\n{p.stderr[-800:]}")

    # ---- --device: cpu trains as before (same losses), cuda needs a CUDA build ----
    rc, out, err = run("train", "--model", "model", "--data", "data.h5", "--config", good_cfg, "--out", "run_cpu", "--device", "cpu")
    same = rc == 0 and [json.loads(l)["loss"] for l in open("run_cpu/metrics.jsonl")] == [r["loss"] for r in rows]
    check("--device cpu trains with the same losses as the default", same, out[-800:] + err[-800:])
    rc, out, _ = run("train", "--help")
    check("train --help lists --device with its default", rc == 0 and "--device" in out and "[default: cpu]" in out, out)
    rc, _, err = run("train", "--model", "model", "--data", "data.h5", "--config", good_cfg, "--out", "run_gpu", "--device", "tpu")
    check("--device with an unknown value is a usage error naming it", rc == 2 and '"tpu"' in err and "cpu or cuda" in err, err)
    if "VLMTRAIN_HAVE_CUDA" not in os.environ:  # the CPU-only build (the CI gate)
        rc, _, err = run("train", "--model", "model", "--data", "data.h5", "--config", good_cfg, "--out", "run_gpu", "--device", "cuda")
        check("--device cuda on a CPU-only build fails clearly", rc != 0 and rc > 0 and
              "built without the CUDA backend" in err and "-DVLMTRAIN_CUDA=ON" in err, f"rc={rc}\n{err}")

    # ---- bad inputs ----
    w = read_st("model/model.safetensors")
    data = os.path.abspath("data.h5")

    def bad_train(name, model_dir, must, cfg=good_cfg, data_path=data):
        files = [os.path.join(model_dir, f) for f in os.listdir(model_dir)] + [data_path, cfg]
        expect_error(name, ["train", "--model", model_dir, "--data", data_path, "--config", cfg, "--out", "badrun"], must, files)

    raw = open("model/model.safetensors", "rb").read()
    d = model_variant("truncated", {})
    open(os.path.join(d, "model.safetensors"), "wb").write(raw[: len(raw) // 2])
    bad_train("truncated safetensors", d, ["truncated/model.safetensors"])
    d = model_variant("hugeheader", {})
    open(os.path.join(d, "model.safetensors"), "wb").write(struct.pack("<Q", 1 << 62) + raw[8:])
    bad_train("huge header length", d, ["hugeheader/model.safetensors", "header"])
    d = model_variant("overlap", w, tweak=lambda h: h["lm_head.weight"].__setitem__(
        "data_offsets", [h["transformer.wte.weight"]["data_offsets"][0], h["transformer.wte.weight"]["data_offsets"][0] + 4 * w["lm_head.weight"].size]))
    bad_train("overlapping offsets", d, ["overlap/model.safetensors", "overlap"])
    d = model_variant("dtype", w, dtypes={"transformer.ln_f.weight": "I32"})
    bad_train("wrong dtype", d, ["transformer.ln_f.weight", "I32"])
    w2 = dict(w)
    w2["transformer.h.1.mlp.w1.weight"] = np.zeros((88, 63), np.float32)
    d = model_variant("shape", w2)
    bad_train("shape mismatch names tensor, expected and found", d, ["transformer.h.1.mlp.w1.weight", "88", "63", "64"])
    w3 = {k: v for k, v in w.items() if k not in ("lm_head.weight", "transformer.visual.proj")}
    w3["transformer.extra.weight"] = np.zeros(3, np.float32)
    d = model_variant("missing", w3)
    bad_train("missing and unexpected tensors all reported at once", d, ["lm_head.weight", "transformer.visual.proj", "transformer.extra.weight"])
    d = model_variant("badconfig", w)
    cfg = json.load(open(TINY))
    del cfg["hidden_size"]
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    bad_train("model config without hidden_size", d, ["config.json", "hidden_size"])
    cfg = json.load(open(TINY))
    cfg["visual"]["lora_repeat_num"] = 3
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    bad_train("model config whose window grid disagrees with lora_repeat_num", d, ["lora_repeat_num"])
    json.dump({"train_steps": 2, "optimizer": {"params": {"lrr": 1}}}, open("badtrain.json", "w"))
    bad_train("training config with an unknown key", "model", ["badtrain.json", "optimizer.params.lrr"], cfg=os.path.abspath("badtrain.json"))
    json.dump({"train_micro_batch_size_per_gpu": "two"}, open("badtype.json", "w"))
    bad_train("training config with a wrong type", "model", ["badtype.json", "train_micro_batch_size_per_gpu"], cfg=os.path.abspath("badtype.json"))
    open("notjson.json", "w").write("{\"train_steps\": 3,, }")
    bad_train("training config that is not JSON", "model", ["notjson.json"], cfg=os.path.abspath("notjson.json"))
    shutil.copy("data.h5", "badtok.h5")
    with h5py.File("badtok.h5", "r+") as f:
        t = f["samples/tokens"]
        t[5] = 100000
    bad_train("dataset with a token id outside the vocabulary", "model", ["badtok.h5", "100000"], data_path=os.path.abspath("badtok.h5"))
    shutil.copy("data.h5", "badfmt.h5")
    with h5py.File("badfmt.h5", "r+") as f:
        f.attrs["version"] = 7
    bad_train("dataset of an unknown format version", "model", ["badfmt.h5", "version"], data_path=os.path.abspath("badfmt.h5"))
    open("garbage.h5", "wb").write(b"not an hdf5 file at all")
    bad_train("dataset that is not HDF5", "model", ["garbage.h5"], data_path=os.path.abspath("garbage.h5"))
    expect_error("model directory that does not exist", ["train", "--model", "nosuchdir", "--data", data, "--config", good_cfg, "--out", "badrun"], ["nosuchdir"])

    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
