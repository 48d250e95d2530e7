#!/usr/bin/python3
"""tests/ckpt/test_ckpt.py: checkpoints and resume.

- stopped-and-resumed equals uninterrupted, bit for bit, at the same layout
  (1 rank, and 2 ranks = 1x2), frozen parameters included;
- saved at 4 ranks (2x2) and resumed at 2 (1x2) and at 3 (1x3): the resumed run
  starts from exactly the saved state (its first loss equals the one the 2x2
  run logged for that step) and continues as the uninterrupted run at the new
  layout does (within 1e-5, the ZeRO equivalence tolerance of docs/zero.md);
- HDF5 really did collective I/O, h5dump -H and h5py read a checkpoint, the
  tensors are at their global shapes and equal the exported final weights;
- faults: a rank SIGKILLed halfway through a checkpoint write leaves `latest`
  on the previous checkpoint, which loads and resumes (the stale .tmp is
  removed); a corrupted newest checkpoint fails its checksum and resume falls
  back to the previous one; a truncated checkpoint, or one of another model
  config, given explicitly, is a clear error that touches no file; keep-K.
"""
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vlmtest import SRC, Checks, read_st, run  # noqa: E402

WORK = os.path.join(os.environ.get("VLM_TEST_WORK", "."), "ckpt")
TINY = os.path.join(SRC, "configs", "tiny.json")
check = Checks()


def losses(rundir):
    return [json.loads(l)["loss"] for l in open(os.path.join(rundir, "metrics.jsonl"))]


def cfg(name, shard, every=3, keep=3, read_mode="independent"):
    c = {"train_batch_size": 12, "gradient_accumulation_steps": 2, "train_steps": 9, "steps_per_print": 9,
         "optimizer": {"type": "AdamW", "params": {"lr": 2e-3}},
         "scheduler": {"type": "cosine", "params": {"warmup_num_steps": 2}},
         "param_groups": [{"name": "lora", "patterns": ["*lora_a*", "*lora_b*"], "lr_scale": 5.0},
                          {"name": "rest", "patterns": ["*"]}],
         "data": {"shuffle": True, "seed": 9, "read_mode": read_mode},
         "checkpoint": {"every_steps": every, "keep": keep},
         "zero_optimization": {"stage": 3, "shard_size": shard, "stage3_param_persistence_threshold": 50}}
    with open(name, "w") as f:
        json.dump(c, f)
    return name


def tree_digest(d):
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            out[p] = open(p, "rb").read()
    return out


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    os.chdir(WORK)
    run(["init", "--config", TINY, "--out", "model", "--seed", "4"])
    run(["mkdata", "--synthetic", "--config", TINY, "--out", "data.h5", "--samples", "30", "--seed", "8"])
    base = ["train", "--model", "model", "--data", "data.h5"]

    # ---- same layout: stop at step 5, resume, compare bit for bit ----
    for np_, shard in ((1, 1), (2, 2)):
        c = cfg(f"c{np_}.json", shard)
        rc, out, err = run([*base, "--config", c, "--out", f"full{np_}"], np_)
        check(f"{np_} rank(s): uninterrupted run", rc == 0, err[-1500:])
        rc, _, err = run([*base, "--config", c, "--out", f"part{np_}", "--steps", "5"], np_)
        rc2, out2, err2 = run([*base, "--config", c, "--out", f"part{np_}", "--resume", "auto"], np_)
        check(f"{np_} rank(s): stopped at step 5 and resumed", rc == 0 and rc2 == 0 and "resume: " in out2
              and "step 5" in out2, (err + err2)[-1500:])
        same_w = os.path.exists(f"part{np_}/final/model.safetensors") and \
            open(f"full{np_}/final/model.safetensors", "rb").read() == open(f"part{np_}/final/model.safetensors", "rb").read()
        check(f"{np_} rank(s): final weights bit-identical to the uninterrupted run (frozen ones included)", same_w)
        check(f"{np_} rank(s): losses of all 9 steps bit-identical, no step logged twice",
              losses(f"full{np_}") == losses(f"part{np_}") and len(losses(f"part{np_}")) == 9,
              f"{losses(f'full{np_}')}\n{losses(f'part{np_}')}")
        if np_ == 2:
            check("collective MPI-IO reported for every dataset transfer",
                  "checkpoint " in out and " of " in out and all(
                      l.split(": ")[1].split(" of ")[0] == l.split(" of ")[1].split(" ")[0]
                      for l in out.splitlines() if "dataset transfers were collective" in l), out[-800:])
    init = read_st("model/model.safetensors")
    fin = read_st("full1/final/model.safetensors")
    frozen = [k for k in init if k.startswith("transformer.visual.") and "lora" not in k and ".attn_pool." not in k]
    check("frozen parameters survive checkpoints and resume (bit-identical to the base model)",
          all(np.array_equal(init[k], read_st("part1/final/model.safetensors")[k]) for k in frozen))

    # ---- collective dataset reads (synchronous) give the same run, and resume the same ----
    cc = cfg("cc.json", 2, read_mode="collective")
    rc, _, err = run([*base, "--config", cc, "--out", "coll", "--steps", "5"], 2)
    rc2, _, err2 = run([*base, "--config", cc, "--out", "coll", "--resume", "auto"], 2)
    check("data.read_mode collective, stopped and resumed: bit-identical to the independent run",
          rc == 0 and rc2 == 0 and open("coll/final/model.safetensors", "rb").read() ==
          open("full2/final/model.safetensors", "rb").read(), (err + err2)[-1500:])

    # ---- readable by others ----
    ck = "full2/checkpoints/ckpt-00000009.h5"
    p = subprocess.run(["h5dump", "-H", ck], capture_output=True, text=True)
    check("h5dump -H reads a checkpoint", p.returncode == 0 and "GROUP \"tensors\"" in p.stdout, p.stderr[-500:])
    with h5py.File(ck, "r") as f:
        ok = f.attrs["format"] in ("vlmtrain-checkpoint", b"vlmtrain-checkpoint") and int(f.attrs["step"]) == 9
        w = read_st("full2/final/model.safetensors")
        same = all(np.array_equal(f["tensors"][k][()], w[k]) for k in w)
        shapes = all(f["tensors"][k].shape == w[k].shape for k in w)
        mom = all(k in f["optimizer/exp_avg"] for k in w if "lora" in k)
        check("h5py reads it: format, step, every tensor at its global shape equal to the final weights, moments",
              ok and same and shapes and mom)
    check("keep = 3: only the 3 newest checkpoints remain",
          sorted(x for x in os.listdir("full2/checkpoints") if x.endswith(".h5")) ==
          ["ckpt-00000003.h5", "ckpt-00000006.h5", "ckpt-00000009.h5"], str(os.listdir("full2/checkpoints")))

    # ---- other layouts: save at 2x2, resume at 1x2 and 1x3 ----
    c4 = cfg("c4.json", 2)
    rc, _, err = run([*base, "--config", c4, "--out", "s4", "--steps", "6"], 4)
    check("4 ranks (2x2): 6 steps with checkpoints", rc == 0, err[-1500:])
    l4 = losses("s4")
    for np_, shard in ((2, 2), (3, 3)):
        cn = cfg(f"cn{np_}.json", shard)
        rc, _, err = run([*base, "--config", cn, "--out", f"un{np_}"], np_)
        d = f"re{np_}"
        os.makedirs(d + "/checkpoints")
        shutil.copy("s4/checkpoints/ckpt-00000003.h5", d + "/checkpoints/")
        rc2, out2, err2 = run([*base, "--config", cn, "--out", d, "--resume", "auto"], np_)
        ok = check(f"checkpoint of 2x2 resumed on 1x{shard}", rc == 0 and rc2 == 0 and "written by 2 x 2" in out2,
                   (err + err2)[-1500:])
        if not ok:
            continue
        lr_, lu = losses(d), losses(f"un{np_}")
        check(f"1x{shard}: the first resumed step sees exactly the saved state (loss {lr_[0]:.9g} vs 2x2's {l4[3]:.9g})",
              abs(lr_[0] - l4[3]) <= 1e-6 * abs(l4[3]))
        werr = max(float(np.linalg.norm(read_st(d + "/final/model.safetensors")[k].astype(np.float64) -
                                        read_st(f"un{np_}/final/model.safetensors")[k]) /
                         max(np.linalg.norm(read_st(f"un{np_}/final/model.safetensors")[k].astype(np.float64)), 1e-30))
                   for k in fin if not k.endswith(("attn_pool.attn.in_proj_bias", "attn.c_attn.bias")))
        lerr = max(abs(a - b) / abs(b) for a, b in zip(lr_, lu[3:]))
        check(f"1x{shard}: continues like the uninterrupted 1x{shard} run (loss {lerr:.1e}, weights {werr:.1e}; tol 1e-5)",
              len(lr_) == 6 and lerr <= 1e-5 and werr <= 1e-5)

    # ---- faults ----
    c2 = cfg("ck.json", 2)
    rc, out, err = run([*base, "--config", c2, "--out", "kill"], 2, {"VLMTRAIN_TEST_KILL_IN_CKPT": "6:1"})
    lst = open("kill/checkpoints/latest").read().strip() if os.path.exists("kill/checkpoints/latest") else ""
    tmp = [x for x in os.listdir("kill/checkpoints") if x.endswith(".tmp")] if os.path.isdir("kill/checkpoints") else []
    check("a rank SIGKILLed while writing checkpoint 6: the job dies, `latest` still names checkpoint 3",
          rc != 0 and lst == "ckpt-00000003.h5" and tmp, f"rc={rc} latest={lst} tmp={tmp}")
    rc, out, err = run([*base, "--config", c2, "--out", "kill", "--resume", "auto"], 2)
    check("... and the resume removes the stale .tmp, loads checkpoint 3 and finishes like the uninterrupted run",
          rc == 0 and "stale" in out and "ckpt-00000003.h5: step 3" in out and
          open("kill/final/model.safetensors", "rb").read() == open("full2/final/model.safetensors", "rb").read(),
          (out + err)[-1500:])

    shutil.copytree("full2", "corrupt")
    with h5py.File("corrupt/checkpoints/ckpt-00000009.h5", "r+") as f:
        t = f["tensors/transformer.h.0.mlp.w1.weight"]
        a = t[()]
        a[0, 0] += 1.0
        t[...] = a
    rc, out, err = run([*base, "--config", c2, "--out", "corrupt", "--resume", "auto", "--steps", "9"], 2)
    check("a corrupted newest checkpoint fails its checksum; resume falls back to checkpoint 6",
          rc == 0 and "checksum" in err and "ckpt-00000006.h5: step 6" in out, (out + err)[-1500:])

    shutil.copytree("full2/checkpoints", "trunc")
    raw = open("trunc/ckpt-00000009.h5", "rb").read()
    open("trunc/ckpt-00000009.h5", "wb").write(raw[: len(raw) // 3])
    before = tree_digest("trunc")
    rc, out, err = run([*base, "--config", c2, "--out", "truncrun", "--resume", "trunc/ckpt-00000009.h5"], 2)
    check("a truncated checkpoint given explicitly: clear error naming it, exit 1, nothing touched",
          rc != 0 and "ckpt-00000009.h5" in err and "Sanitizer" not in err and tree_digest("trunc") == before,
          err[-1200:])
    other = dict(json.load(open(TINY)))
    other["num_hidden_layers"] = 3
    os.makedirs("other")
    json.dump(other, open("other/config.json", "w"))
    run(["init", "--config", "other/config.json", "--out", "othermodel"])
    rc, out, err = run(["train", "--model", "othermodel", "--data", "data.h5", "--config", c2, "--out", "otherrun",
                        "--resume", "full2/checkpoints/ckpt-00000009.h5"], 2)
    check("a checkpoint of another model config: clear error", rc != 0 and "another model config" in err, err[-1200:])

    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
