#!/usr/bin/env python3
"""tests/dataset/test_dataset_h5py.py: dataset format v1 seen from h5py.

Usage: test_dataset_h5py.py DATASET_TOOL CONFIG.json   (run in VLM_TEST_WORK)

(b) A synthetic file written by the C code has the layout docs/formats.md
    documents, and the task is learnable: the answer token is the class of the
    first image's mean colour. A file written by h5py following the docs is
    accepted by the C reader.
(c) Bad files written by h5py (with the docs' recipe, then edited) are each
    rejected with a message naming the problem.
Prints one line per check and ends with "N passed, M failed"."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np

TOOL, CONFIG = sys.argv[1], sys.argv[2]
cfg = json.load(open(CONFIG))
vis = cfg["visual"]
VOCAB, S = cfg["vocab_size"], vis["image_size"]
IMG, IMG_END, IMG_PAD = vis["image_start_id"], vis["image_start_id"] + 1, vis["image_start_id"] + 2
EOS = 151643 if 151643 < IMG else IMG - 1
WIN = vis.get("window_size", 448)
NQ = vis.get("n_queries", 256)
SLOTS = (((S - WIN) // WIN + 1) ** 2 + 1) * NQ
T = min(VOCAB, IMG, EOS) - 16  # synthetic: answers T..T+7, prompt T+8..T+10
PALETTE = np.array([[215 if (k >> c) & 1 else 40 for c in range(3)] for k in range(8)], float)

passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS {name}")
    else:
        failed += 1
        print(f"FAIL {name}" + (f": {detail}" if detail else ""))


def run_tool(*args):
    r = subprocess.run([TOOL, *args], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def docs_writer():
    """The h5py recipe of docs/formats.md, taken from the document itself."""
    text = open(os.path.join(os.environ["VLM_SOURCE_DIR"], "docs", "formats.md")).read()
    block = text.split("### Writing one with h5py", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope = {}
    exec(block, scope)
    return scope["write_vlmtrain_dataset"]


write_vlmtrain_dataset = docs_writer()


def write_dataset(path, samples, fmt=None, version=None):
    write_vlmtrain_dataset(path, samples, S)
    if fmt is not None or version is not None:
        with h5py.File(path, "a") as f:
            if fmt is not None:
                f.attrs["format"] = fmt
            if version is not None:
                f.attrs["version"] = version


def image_tokens():
    return [IMG] + [IMG_PAD] * SLOTS + [IMG_END]


def valid_samples():
    """Three samples: one image, text only, two images."""
    rng = np.random.default_rng(0)
    out = []
    for n_img in (1, 0, 2):
        toks = sum((image_tokens() for _ in range(n_img)), []) + [5, 6, 7, 8, 100, EOS]
        labs = [-100] * (len(toks) - 2) + [100, EOS]
        ims = rng.integers(0, 256, (n_img, S, S, 3), dtype=np.uint8)
        out.append((toks, labs, ims))
    return out


# ---------------------------------------------------------------- (b) the synthetic file
SYN, N, EVERY = "dataset_h5py_synth.h5", 40, 5
rc, out = run_tool("synth", CONFIG, SYN, str(N), "11", str(EVERY))
check("synthetic file written by the C code", rc == 0, out)

with h5py.File(SYN, "r") as f:
    a = f.attrs
    check("root attributes format/version/image_size",
          a["format"] == "vlmtrain-dataset" and int(a["version"]) == 1 and int(a["image_size"]) == S
          and np.issubdtype(np.asarray(a["version"]).dtype, np.integer),
          f"{dict(a)}")
    tok, lab = f["samples/tokens"][...], f["samples/labels"][...]
    off, ioff = f["samples/offsets"][...], f["samples/image_offsets"][...]
    px = f["images/pixels"][...]
    check("dtypes int32/int32/int64/int64/uint8",
          (tok.dtype, lab.dtype, off.dtype, ioff.dtype, px.dtype)
          == (np.int32, np.int32, np.int64, np.int64, np.uint8),
          f"{tok.dtype} {lab.dtype} {off.dtype} {ioff.dtype} {px.dtype}")
    n_multi = N // EVERY
    check("shapes", tok.ndim == 1 and lab.shape == tok.shape and off.shape == (N + 1,)
          and ioff.shape == (N + 1,) and px.shape == (N + n_multi, S, S, 3),
          f"{tok.shape} {lab.shape} {off.shape} {ioff.shape} {px.shape}")
    check("offsets start at 0, non-decreasing, end at n_tokens / n_images",
          off[0] == 0 and ioff[0] == 0 and np.all(np.diff(off) >= 0) and np.all(np.diff(ioff) >= 0)
          and off[-1] == len(tok) and ioff[-1] == len(px))

    layout_ok, detail, learn_ok, classes, second_differs = True, "", True, set(), 0
    for i in range(N):
        t, l = tok[off[i]:off[i + 1]], lab[off[i]:off[i + 1]]
        m = int(ioff[i + 1] - ioff[i])
        want_m = 2 if i % EVERY == EVERY - 1 else 1
        nf = len(t) - m * (SLOTS + 2) - 5
        ans = int(t[-2])
        expect = sum((image_tokens() for _ in range(m)), []) + list(t[m * (SLOTS + 2):-5]) \
            + [T + 8, T + 9, T + 10, ans, EOS]
        ok = (m == want_m and 4 <= nf <= 12 and list(t) == expect
              and np.all(t[m * (SLOTS + 2):-5] < T) and np.all(t[m * (SLOTS + 2):-5] >= 0)
              and np.all(l[:-2] == -100) and list(l[-2:]) == [ans, EOS] and T <= ans < T + 8)
        if not ok and layout_ok:
            layout_ok, detail = False, f"sample {i}: m={m} filler={nf} tail={list(t[-6:])}"
        # learnability: the class of the first image's mean colour is the answer
        imgs = px[ioff[i]:ioff[i + 1]].astype(float)
        means = imgs.reshape(m, -1, 3).mean(axis=1)
        cls = [int(np.argmin(((PALETTE - mu) ** 2).sum(axis=1))) for mu in means]
        if cls[0] != ans - T:
            learn_ok = False
        classes.add(cls[0])
        second_differs += m == 2 and cls[1] != cls[0]
    check("sample layout: <img> slots </img> filler prompt answer eos; labels on answer+eos only",
          layout_ok, detail)
    check("learnable: answer token == class of the first image's mean colour (all samples)",
          learn_ok and len(classes) >= 6, f"classes seen {sorted(classes)}")

check("C reader accepts the synthetic file", run_tool("check", CONFIG, SYN)[0] == 0)

# a file written by h5py following docs/formats.md (incl. a text-only and a 2-image sample)
GOOD = "dataset_h5py_good.h5"
write_dataset(GOOD, valid_samples())
rc, out = run_tool("check", CONFIG, GOOD)
check("C reader accepts a file written by the h5py recipe of docs/formats.md",
      rc == 0 and "3 samples" in out, out)
with h5py.File(GOOD, "a") as f:  # fixed-length string attribute, as numpy bytes write it
    del f.attrs["format"]
    f.attrs["format"] = np.bytes_(b"vlmtrain-dataset")
rc, out = run_tool("check", CONFIG, GOOD)
check("C reader accepts a fixed-length format string", rc == 0, out)


# ---------------------------------------------------------------- (c) bad files
def expect_rejected(name, path, *needles):
    rc, out = run_tool("check", CONFIG, path)
    ok = rc != 0 and path in out and all(n in out for n in needles)
    check(f"rejects {name}", ok, out.strip().replace("\n", " | "))


def bad(name, mutate=None, **kw):
    path = f"dataset_h5py_bad_{name}.h5"
    samples = valid_samples()
    if mutate:
        samples = mutate(samples) or samples
    write_dataset(path, samples, **kw)
    return path


def edit(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)
    return path


expect_rejected("wrong format attribute", bad("format", fmt="something-else"),
                "format", "something-else")
expect_rejected("version 2", bad("version", version=2), "version", "2")
p = edit(bad("image_size"), lambda f: f.attrs.__setitem__("image_size", S * 2))
expect_rejected("image_size mismatch", p, "image_size", str(S * 2), str(S))
expect_rejected("missing /samples/labels",
                edit(bad("labels"), lambda f: f.__delitem__("samples/labels")),
                "/samples/labels", "missing")


def token_over_vocab(s):
    s[1][0][2] = VOCAB


expect_rejected("token id >= vocab", bad("vocab", token_over_vocab),
                "sample 1", "token position 2", str(VOCAB), "vocabulary")


def slot_short(s):  # sample 0: drop one slot, keep the length by adding a filler token
    t, l, im = s[0]
    t = t[:1] + t[2:]
    t.insert(-2, 5)
    s[0] = (t, l, im)


expect_rejected("wrong slot count after <img>", bad("slots", slot_short),
                "sample 0", "token position 0", f"{SLOTS - 1} slot tokens", f"img_slots = {SLOTS}")


def image_count(s):  # sample 2 keeps its two <img> blocks but has one image
    t, l, im = s[2]
    s[2] = (t, l, im[:1])


expect_rejected("image count mismatch", bad("imgcount", image_count),
                "sample 2", "2 <img> tokens but 1 images")


def non_monotonic(f):
    o = f["samples/offsets"][...]
    o[1], o[2] = o[2], o[1]
    f["samples/offsets"][...] = o


expect_rejected("non-monotonic offsets", edit(bad("offsets"), non_monotonic),
                "/samples/offsets", "non-decreasing")


def wrong_pixels(f):
    p = f["images/pixels"][...]
    del f["images/pixels"]
    f["images/pixels"] = p[:, :, :, :2]


expect_rejected("pixels of the wrong shape", edit(bad("pixels"), wrong_pixels),
                "/images/pixels", f"[n_images, {S}, {S}, 3]", f"[3, {S}, {S}, 2]")

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
