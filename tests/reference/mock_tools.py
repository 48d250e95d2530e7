#!/usr/bin/python3
# tests/reference/mock_tools.py: stand-ins for the C programs the reference tests
# drive, made of the PyTorch reference computing in float32. They exist to test
# the tests: the comparison code, the file contracts, and the floor that fp32
# arithmetic puts under the tolerances. ctest never uses them.
#
#   mock_tools.py dump_grads MODEL_DIR DATA.h5 TRAIN.json OUT.h5
#   mock_tools.py train --model DIR --data DATA.h5 --config TRAIN.json --out RUN --steps N
#
# e.g. (a wrapper, since VLM_DUMP_GRADS names one program):
#   printf '#!/bin/sh\nexec /usr/bin/python3 %s dump_grads "$@"\n' $PWD/mock_tools.py > /tmp/dg
#   chmod +x /tmp/dg; VLM_DUMP_GRADS=/tmp/dg /usr/bin/python3 test_model_grads.py
import json
import os
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import monkey_ref as mr  # noqa: E402


def load(model_dir):
    cfg = mr.MonkeyConfig.load(os.path.join(model_dir, "config.json"))
    w = mr.load_safetensors(os.path.join(model_dir, "model.safetensors"))
    return cfg, mr.MonkeyRef(cfg, w, torch.float32)


def dump_grads(model_dir, data, train_path, out):
    import h5py
    with open(train_path) as f:
        t = json.load(f)
    cfg, m = load(model_dir)
    B = int(t.get("train_micro_batch_size_per_gpu", 1))
    names = set(mr.trainable_names(cfg, t.get("trainable", "monkey")))
    for n, p in m.p.items():
        p.requires_grad_(n in names)
    batch = [(a, b, list(c)) for a, b, c in mr.read_dataset(data)[:B]]
    loss, n = m.microbatch_loss(batch)
    loss.backward()
    with h5py.File(out, "w") as f:
        f["loss"] = np.float64(float(loss))
        f["n_targets"] = np.int64(n)
        g = f.create_group("grads")
        for name in names:
            g[name] = m.p[name].grad.numpy().astype(np.float32)


def train(argv):
    a = dict(zip(argv[::2], argv[1::2]))
    with open(a["--config"]) as f:
        t = json.load(f)
    cfg, m = load(a["--model"])
    samples = [(x, y, list(z)) for x, y, z in mr.read_dataset(a["--data"])]
    tr = mr.ReferenceTrainer(m, t, mr.trainable_names(cfg, t.get("trainable", "monkey")))
    run = a["--out"]
    os.makedirs(os.path.join(run, "final"), exist_ok=True)
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        for s in range(int(a["--steps"])):
            f.write(json.dumps(tr.step(s, samples)) + "\n")
    mr.save_safetensors(os.path.join(run, "final", "model.safetensors"),
                        {n: p.detach().numpy() for n, p in m.p.items()})
    shutil.copy(os.path.join(a["--model"], "config.json"), os.path.join(run, "final"))


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if sys.argv[1] == "dump_grads":
        dump_grads(*sys.argv[2:6])
    elif sys.argv[1] == "train":
        train(sys.argv[2:])
    else:
        sys.exit("usage: mock_tools.py dump_grads|train ...")
