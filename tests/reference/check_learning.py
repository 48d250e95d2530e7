# tests/reference/check_learning.py: did a training run learn the task? Evaluates a
# model directory (e.g. run/final written by `vlmtrain train`) with the independent
# PyTorch reference (monkey_ref.py, float32, no C code involved) on a dataset, best a
# held-out one, and reports the mean loss and the accuracy of the answer tokens:
# on the synthetic task the first answer token is the image's colour class, which
# the text alone cannot give (chance 1/8), so a high accuracy means the weights use
# the image through the ViT LoRA, resampler and splice as the reference computes
# them. Not a ctest test (it needs a trained run); run it after scripts/demo.sh.
#
#   check_learning.py MODEL_DIR DATA.h5 [--baseline INIT_MODEL_DIR]
#                     [--min-accuracy 0.9] [--samples N]
# e.g.
#   vlmtrain mkdata --synthetic --config configs/tiny.json --out heldout.h5 --samples 64 --seed 99
#   /usr/bin/python3 tests/reference/check_learning.py run-demo/run/final heldout.h5 \
#       --baseline run-demo/model
# Ends with "N passed, M failed"; exits non-zero on failure.
import argparse
import os

import numpy as np
import torch

import testlib as tl
from testlib import mr


def evaluate(model_dir, samples):
    """(HF mean loss over all targets, first-answer-token accuracy, all-target accuracy)."""
    cfg = mr.MonkeyConfig.load(os.path.join(model_dir, "config.json"))
    m = mr.MonkeyRef(cfg, mr.load_safetensors(os.path.join(model_dir, "model.safetensors")),
                     torch.float32)
    total, n, first_ok, n_first, all_ok = 0.0, 0, 0, 0, 0
    with torch.no_grad():
        for tokens, labels, images in samples:
            lg = m.logits(tokens, list(images))
            lab = torch.as_tensor(labels[1:], dtype=torch.long)
            keep = lab != mr.IGNORE
            if not bool(keep.any()):
                continue
            total += float(torch.nn.functional.cross_entropy(lg[:-1][keep], lab[keep],
                                                             reduction="sum"))
            pred = lg[:-1].argmax(-1)
            hits = (pred == lab) & keep
            n += int(keep.sum())
            all_ok += int(hits.sum())
            first = int(keep.nonzero()[0])
            first_ok += int(hits[first])
            n_first += 1
    return total / n, first_ok / n_first, all_ok / n


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model_dir")
    ap.add_argument("data")
    ap.add_argument("--baseline", help="the model before training (e.g. vlmtrain init's output)")
    ap.add_argument("--min-accuracy", type=float, default=0.9)
    ap.add_argument("--samples", type=int, default=0, help="evaluate the first N (0: all)")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    C = tl.Checks("learning: %s on %s, evaluated by the PyTorch reference" % (a.model_dir, a.data))
    samples = mr.read_dataset(a.data)
    if a.samples:
        samples = samples[:a.samples]
    loss, acc1, acc = evaluate(a.model_dir, samples)
    print("   trained:  loss %.4f, answer (class) accuracy %.3f, all targets %.3f over %d samples"
          % (loss, acc1, acc, len(samples)))
    C.check("first answer token (the image's class) accuracy >= %.2f" % a.min_accuracy,
            acc1 >= a.min_accuracy, "%.3f (chance about 0.125)" % acc1)
    C.check("loss is finite", bool(np.isfinite(loss)), "%.4f" % loss)
    if a.baseline:
        bl, b1, ba = evaluate(a.baseline, samples)
        print("   baseline: loss %.4f, answer (class) accuracy %.3f, all targets %.3f" % (bl, b1, ba))
        C.check("loss fell well below the untrained model's", loss < 0.5 * bl,
                "%.4f vs %.4f" % (loss, bl))
    C.finish()


if __name__ == "__main__":
    main()
