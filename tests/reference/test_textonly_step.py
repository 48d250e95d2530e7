# tests/reference/test_textonly_step.py: a step whose micro-batches hold no image
# starts from zero gradients in the ViT too.
#
# zero_clear_grads only marks the gradients stale; modules/zero.c zeroes each
# module's gradients when its backward begins in a step (every trainable module is
# taken through its backward in every micro-batch, with or without images, so
# that the ranks' collectives match) and, as a safety net, any module still
# stale before the gradients are reduced. This checks the result end to end with
# the learning rate 0 (the weights never change): run A trains on two image
# samples (step 1) then two text-only samples (step 2); run B trains on the two
# text-only samples alone. A's step 2 must report the loss and gradient norm of
# B's step 1, the same arithmetic on the same weights and data (a ViT gradient
# left over from step 1 would add to A's norm), and A's step 1 a larger norm
# than that (the ViT's LoRA gradients count there).
#
# Usage: test_textonly_step.py   (prints "N passed, M failed")
import json
import os

import testlib as tl
from testlib import mr

TRAIN = {
    "trainable": "monkey",
    "optimizer": {"type": "AdamW",
                  "params": {"lr": 0.0, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}},
    "gradient_clipping": 1.0,
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 2,
    "data": {"shuffle": False},
}


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def main():
    c = tl.Checks("a step with no image starts from zero ViT gradients")
    wd = tl.work_dir("textonly_step")
    cfg_dict = tl.tiny_config_dict()
    cfg = mr.MonkeyConfig(cfg_dict)
    model_dir = os.path.join(wd, "model")
    mr.write_model_dir(model_dir, cfg_dict, mr.random_weights(cfg, 99))
    with_img = tl.make_samples(cfg, 5, 2)  # one and two images
    text = [tl.make_samples(cfg, seed, 1, text_only_at=0)[0] for seed in (6, 7)]
    data_a, data_b = os.path.join(wd, "a.h5"), os.path.join(wd, "b.h5")
    mr.write_dataset(data_a, with_img + text, cfg.image_size)
    mr.write_dataset(data_b, text, cfg.image_size)
    train = os.path.join(wd, "train.json")
    with open(train, "w") as f:
        json.dump(TRAIN, f, indent=2)
    vlmtrain = os.environ["VLMTRAIN"]
    runs = {}
    for name, data, steps in (("a", data_a, 2), ("b", data_b, 1)):
        out = os.path.join(wd, "run_" + name)
        rc, _ = tl.run([vlmtrain, "train", "--model", model_dir, "--data", data, "--config", train,
                        "--out", out, "--steps", str(steps)], log=out + ".log")
        if not c.check("run %s exits 0" % name, rc == 0, "rc %d" % rc):
            c.finish()
        runs[name] = metrics(out)
    a1, a2, b1 = runs["a"][0], runs["a"][1], runs["b"][0]
    for key in ("loss", "grad_norm"):
        rel = abs(a2[key] - b1[key]) / max(abs(b1[key]), 1e-30)
        c.check("text-only step: %s as when it comes first" % key, rel <= 1e-6,
                "%.9g after an image step, %.9g alone (relative %.1e)" % (a2[key], b1[key], rel))
    c.check("the image step's gradient norm is larger (ViT LoRA gradients)",
            a1["grad_norm"] > b1["grad_norm"] * (1 + 1e-3),
            "%.6g against %.6g" % (a1["grad_norm"], b1["grad_norm"]))
    c.finish()


if __name__ == "__main__":
    main()
