# tests/reference/testlib.py: what the reference tests share: a pass/fail counter
# that ends with the "N passed, M failed" line, the scratch directory, the test
# model configs and dataset generator, and running the C programs. No numerics
# live here (they are in monkey_ref.py).
import copy
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("VLM_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

import monkey_ref as mr  # noqa: E402


class Checks:
    """Counts named checks; finish() prints the summary line and exits."""

    def __init__(self, title):
        self.title = title
        self.passed = 0
        self.failed = []
        self.t0 = time.time()
        print("== %s" % title, flush=True)

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print("PASS %s%s" % (name, (": " + detail) if detail else ""), flush=True)
        else:
            self.failed.append(name)
            print("FAIL %s%s" % (name, (": " + detail) if detail else ""), flush=True)
        return ok

    def finish(self):
        print("-- %.1f s" % (time.time() - self.t0))
        if self.failed:
            print("failed checks: " + ", ".join(self.failed))
        print("%d passed, %d failed" % (self.passed, len(self.failed)), flush=True)
        sys.exit(1 if self.failed else 0)


def work_dir(name):
    """A fresh scratch directory under VLM_TEST_WORK (or a temporary one)."""
    base = os.environ.get("VLM_TEST_WORK")
    if not base:
        base = tempfile.mkdtemp(prefix="vlm-ref-")
    d = os.path.join(base, name)
    if os.path.isdir(d):
        import shutil
        shutil.rmtree(d)
    os.makedirs(d)
    return d


def tiny_config_dict(**visual_overrides):
    """configs/tiny.json, with visual keys overridden (e.g. window_size=84)."""
    with open(os.path.join(SOURCE_DIR, "configs", "tiny.json")) as f:
        d = json.load(f)
    d = copy.deepcopy(d)
    d["visual"].update(visual_overrides)
    return d


# The model variants the tests run: plain tiny (4x4 patch grid = 4x4 queries),
# 84-px windows (6x6 patch grid vs 4x4 queries: pos_embed is interpolated), and
# width == output_dim (no kv_proj tensor: identity).
VARIANTS = {
    "tiny": {},
    "tiny-w84": {"window_size": 84, "image_size": 168},
    "tiny-w64": {"width": 64, "heads": 4},
}


def make_samples(cfg, seed, n, two_image_at=1, text_only_at=None):
    """n samples: [prefix text] <img> slots </img> ... question, answer, eos; labels
    -100 except the answer and eos (2-3 targets) and, in odd samples with an
    image, the token after the first </img> (a target mid-sequence, as in
    multi-turn data); lengths differ; sample `two_image_at` has two images;
    sample `text_only_at` (if any) has none."""
    rng = np.random.default_rng(seed)
    S = cfg.image_size
    lo, hi = 3, cfg.image_start_id - 1  # ordinary text ids (no image tags, no eos)
    samples = []
    for i in range(n):
        n_img = 0 if i == text_only_at else (2 if i == two_image_at else 1)
        toks = list(rng.integers(lo, hi, size=int(i % 3))) if i % 2 else []
        for _ in range(n_img):
            toks += [cfg.image_start_id] + [cfg.img_pad_id] * cfg.img_slots + [cfg.img_end_id]
            toks += list(rng.integers(lo, hi, size=int(rng.integers(1, 4))))
        if n_img == 0:
            toks += list(rng.integers(lo, hi, size=12))
        n_ans = int(rng.integers(1, 3))
        answer = list(rng.integers(lo, hi, size=n_ans)) + [cfg.eos_id]
        labels = [mr.IGNORE] * len(toks) + answer
        if i % 2 and n_img > 0:
            k = toks.index(cfg.img_end_id) + 1
            labels[k] = toks[k]
        toks = toks + answer
        imgs = rng.integers(0, 256, size=(n_img, S, S, 3), dtype=np.uint8)
        samples.append((np.array(toks, np.int64), np.array(labels, np.int64), imgs))
    return samples


def run(cmd, timeout=600, log=None):
    """Runs a command; returns (rc, combined output). Prints the output on failure."""
    t0 = time.time()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, text=True)
        rc, out = p.returncode, p.stdout
    except FileNotFoundError as e:
        rc, out = 127, str(e)
    except subprocess.TimeoutExpired as e:
        rc, out = 124, (e.stdout or "") + "\n(timed out after %d s)" % timeout
    if log:
        with open(log, "w") as f:
            f.write(" ".join(cmd) + "\n" + out)
    if rc != 0:
        print("command failed (rc %d, %.1f s): %s" % (rc, time.time() - t0, " ".join(cmd)))
        print("\n".join(out.splitlines()[-40:]))
    return rc, out


def rel_err_table(errors, title, limit=12):
    """Prints the `limit` worst (name, err, max_ref) rows."""
    rows = sorted(errors, key=lambda r: -r[1])[:limit]
    print("   %s (worst %d of %d):" % (title, len(rows), len(errors)))
    for name, err, ref in rows:
        print("     %-64s %.3e  (scale %.3e)" % (name, err, ref))
