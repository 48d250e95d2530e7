#!/usr/bin/env python3
"""tests/mkdata_json/test_mkdata_json.py: `vlmtrain mkdata --json` end to end.

Usage: test_mkdata_json.py IMAGE_TOOL DATASET_TOOL TINY_CONFIG TRAIN_CONFIG
(env VLMTRAIN = the program, VLM_TEST_WORK = where files go; run by ctest).

Everything is made here, in VLM_TEST_WORK/mkdata_json/: PNG and JPEG images of
many colour types and sizes (PIL), a corrupt, a truncated, a too large, an
unsupported and a missing one; a small byte-level BPE ranks file trained on the
test's own text (so Qwen's special ids follow its ranks); a model config whose
image_start_id is the tokenizer's <img>; Monkey and ChatML conversations.

Checked: io/image.c's decode + bicubic resize against PIL on many sizes (the
measured difference is printed); the dataset opens in the C reader; tokens and
labels equal an independent Python implementation of the preprocessing
(tokenizer, Monkey template, ChatML template in both target modes, truncation);
decoding the stored tokens gives the JSON text back; stored pixels equal PIL's
Image.open(p).convert("RGB").resize((S, S), BICUBIC); skip counts by reason;
--max-skip-fraction; 2 and 3 ranks give the same content as 1; a short training
run on the result. Ends with "N passed, M failed"."""
import base64
import collections
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import zlib

import h5py
import numpy as np
import regex
from PIL import Image

IMAGE_TOOL, DATASET_TOOL, TINY_CONFIG, TRAIN_CONFIG = sys.argv[1:5]
VLMTRAIN = os.environ["VLMTRAIN"]
WORK = os.path.join(os.environ.get("VLM_TEST_WORK", "."), "mkdata_json")
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(os.path.join(WORK, "img"))
os.chdir(WORK)

# Under -DVLMTRAIN_SANITIZE=ON LeakSanitizer reports Open MPI's own allocations for every MPI
# program (see tests/dataset/test_mkdata_cli.py); image_tool and dataset_tool keep leak checks.
ENV = dict(os.environ)
ENV["ASAN_OPTIONS"] = (ENV.get("ASAN_OPTIONS", "") + ":detect_leaks=0").lstrip(":")

passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS {name}")
    else:
        failed += 1
        print(f"FAIL {name}" + (f": {str(detail)[:3000]}" if detail else ""))
    sys.stdout.flush()


def run(cmd, timeout=600):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    return r.returncode, r.stdout, r.stderr


# ------------------------------------------------------------------------------------------
# A small tokenizer: Qwen's pre-tokenisation pattern, 256 byte tokens, BPE merges trained on
# this test's text; then an independent encoder/decoder (tiktoken's rank-merge rule).

PAT = regex.compile(r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIALS = (["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
            + ["<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>"])

WORDS = ("the a cat dog red green blue colour image picture what is in this answer describe "
         "detail photo of on with and there are two three people sitting table window street "
         "car tree sky cloud sun house river boat mountain snow café naïve Straße 数字 图片 "
         "mañana 42 2024 3.14 (1,2),(3,4) hello world you are helpful assistant system user").split()


def corpus_text():
    lines = []
    for i in range(400):
        ws = [WORDS[(i * 7 + k * 13) % len(WORDS)] for k in range(12)]
        lines.append(" ".join(ws) + (".\n" if i % 3 else "?\n"))
    lines.append("You are a helpful assistant.\nuser\nassistant\nsystem\nPicture 1: Answer: \n")
    return "".join(lines)


def train_ranks(text, n_merges):
    words = collections.Counter(p.encode() for p in PAT.findall(text))
    seqs = {w: [bytes([b]) for b in w] for w in words}
    vocab = [bytes([b]) for b in range(256)]
    known = set(vocab)
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, c in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        (a, b), _n = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        if a + b not in known:
            vocab.append(a + b)
            known.add(a + b)
        for w in words:
            s, out, i = seqs[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return vocab


VOCAB = train_ranks(corpus_text(), 320)
RANK = {t: i for i, t in enumerate(VOCAB)}
R = len(VOCAB)
SPECIAL_ID = {s: R + i for i, s in enumerate(SPECIALS)}
ID_BYTES = {i: t for i, t in enumerate(VOCAB)}
ID_BYTES.update({v: k.encode() for k, v in SPECIAL_ID.items()})
with open("ranks.tiktoken", "w") as f:
    for i, t in enumerate(VOCAB):
        f.write(base64.b64encode(t).decode() + f" {i}\n")

EOD, IM_START, IM_END = SPECIAL_ID["<|endoftext|>"], SPECIAL_ID["<|im_start|>"], SPECIAL_ID["<|im_end|>"]
IMG, IMG_END, IMG_PAD = SPECIAL_ID["<img>"], SPECIAL_ID["</img>"], SPECIAL_ID["<imgpad>"]
assert IMG == R + 3 + 205 + 6


def bpe(piece):
    if piece in RANK:
        return [RANK[piece]]
    parts = [bytes([b]) for b in piece]
    while len(parts) > 1:
        best, at = None, -1
        for i in range(len(parts) - 1):
            r = RANK.get(parts[i] + parts[i + 1])
            if r is not None and (best is None or r < best):
                best, at = r, i
        if best is None:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    return [RANK[p] for p in parts]


def enc_ordinary(text):
    return [t for p in PAT.findall(text) for t in bpe(p.encode())]


def enc_special(text):
    out, i = [], 0
    while i <= len(text):
        hits = [(text.find(s, i), s) for s in SPECIALS if text.find(s, i) >= 0]
        if not hits:
            out += enc_ordinary(text[i:])
            break
        at, s = min(hits)
        out += enc_ordinary(text[i:at]) + [SPECIAL_ID[s]]
        i = at + len(s)
    return out


def decode(ids):
    return b"".join(ID_BYTES[i] for i in ids).decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------------
# The model config: tiny.json with this tokenizer's ids.

with open(TINY_CONFIG) as f:
    CFG = json.load(f)
CFG["vocab_size"] = (R + len(SPECIALS) + 7) // 8 * 8
CFG["visual"]["image_start_id"] = IMG
CFG["seq_length"] = 320
with open("model.json", "w") as f:
    json.dump(CFG, f, indent=1)
S = CFG["visual"]["image_size"]
V = CFG["visual"]
SLOTS = ((S - V["window_size"]) // V["window_size"] + 1) ** 2 * V["n_queries"] + V["n_queries"]
L = CFG["seq_length"]
SPAN = SLOTS + 2

# ------------------------------------------------------------------------------------------
# Images.

rng = np.random.default_rng(7)


def natural(h, w, ch):
    """Gradients, a few shapes and noise: something a resize must get right."""
    y, x = np.mgrid[0:h, 0:w]
    planes = [x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), ((x // 7 + y // 5) % 2) * 200 + 20,
              (x * 3 + y) % 256]
    a = np.stack(planes[:ch], -1).astype(int) + rng.integers(-30, 31, size=(h, w, ch))
    return a.clip(0, 255).astype(np.uint8)


def png_bytes(w, h, ctype, depth, rows):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


IMAGES = {}  # name -> reference RGB before resizing (None: PIL's own convert("RGB") is the reference)


def save(name, im, **kw):
    im.save(os.path.join("img", name), **kw)
    IMAGES[name] = None


save("rgb.png", Image.fromarray(natural(97, 150, 3), "RGB"))
save("gray.png", Image.fromarray(natural(200, 64, 1)[..., 0], "L"))
pal = Image.fromarray(natural(60, 90, 3), "RGB").convert("P", palette=Image.ADAPTIVE, colors=40)
save("palette.png", pal, transparency=5)
save("rgba.png", Image.fromarray(natural(80, 120, 4), "RGBA"))
save("gray_alpha.png", Image.fromarray(natural(70, 50, 2), "LA"))
save("bilevel.png", Image.fromarray(natural(21, 33, 1)[..., 0] > 128))
save("exact.png", Image.fromarray(natural(S, S, 3), "RGB"))            # no resize at all
save("tall.png", Image.fromarray(natural(300, S, 3), "RGB"))           # vertical pass only
save("rgb.jpg", Image.fromarray(natural(200, 300, 3), "RGB"), quality=90)
save("gray.jpg", Image.fromarray(natural(120, 80, 1)[..., 0], "L"), quality=85)
save("cmyk.jpg", Image.fromarray(natural(90, 100, 4), "CMYK"), quality=92)
save("progressive.jpg", Image.fromarray(natural(150, 140, 3), "RGB"), quality=80, progressive=True)
save("small.jpg", Image.fromarray(natural(30, 40, 3), "RGB"), quality=95, subsampling=0)  # upscale
rgb16 = rng.integers(0, 65536, size=(50, 70, 3)).astype(">u2")
with open("img/rgb16.png", "wb") as f:
    f.write(png_bytes(70, 50, 2, 16, [rgb16[y].tobytes() for y in range(50)]))
IMAGES["rgb16.png"] = None
g16 = rng.integers(0, 65536, size=(40, 45)).astype(">u2")
with open("img/gray16.png", "wb") as f:
    f.write(png_bytes(45, 40, 0, 16, [g16[y].tobytes() for y in range(40)]))
# PIL reads 16-bit grey as mode "I" and its convert("RGB") clips at 255; vlmtrain keeps the
# high byte (as PIL does for 16-bit RGB): the reference is the high byte, replicated.
IMAGES["gray16.png"] = np.repeat((g16.astype(np.uint16) >> 8).astype(np.uint8)[..., None], 3, -1)
# a JPEG under a .png name: the magic bytes decide
shutil.copy("img/rgb.jpg", "img/jpeg_named.png")
IMAGES["jpeg_named.png"] = None
save("big.png", Image.fromarray(natural(400, 700, 3), "RGB"))        # 280,000 pixels
data = open("img/rgb.png", "rb").read()
open("img/truncated.png", "wb").write(data[: len(data) // 2])
data = bytearray(open("img/rgb.jpg", "rb").read())
open("img/truncated.jpg", "wb").write(bytes(data[: len(data) * 2 // 3]))
open("img/notes.jpg", "w").write("this is not an image\n")
MAX_PIXELS = 250000  # big.png is refused


def reference_pixels(name):
    p = os.path.join("img", name)
    base = IMAGES.get(name)
    im = Image.open(p).convert("RGB") if base is None else Image.fromarray(base, "RGB")
    return np.asarray(im.resize((S, S), Image.BICUBIC))


# ------------------------------------------------------------------------------------------
# 1. io/image.c against PIL, image by image and on many sizes.

def image_tool(path, size, max_px=100000000):
    rc, out, _ = run([IMAGE_TOOL, path, str(size), "tool.raw", str(max_px)])
    if rc != 0:
        return None, out.strip()
    w, h = map(int, out.split()[1:3])
    return np.fromfile("tool.raw", np.uint8).reshape(h, w, 3), out


worst, means, bad = 0, [], []
for name in sorted(IMAGES):
    if name == "big.png":
        continue
    for size in (S, 56, 448):
        ours, msg = image_tool(os.path.join("img", name), size)
        base = IMAGES[name]
        im = Image.open(os.path.join("img", name)).convert("RGB") if base is None else Image.fromarray(base)
        ref = np.asarray(im.resize((size, size), Image.BICUBIC))
        if ours is None:
            bad.append(f"{name}@{size}: {msg}")
            continue
        d = np.abs(ours.astype(int) - ref.astype(int))
        worst, means = max(worst, int(d.max())), means + [float(d.mean())]
for (w, h) in [(1, 1), (2, 900), (7, 5), (333, 333), (1000, 700), (449, 113), (225, 224)]:
    Image.fromarray(natural(h, w, 3), "RGB").save("sweep.png")
    for size in (S, 224, 57):
        ours, msg = image_tool("sweep.png", size)
        ref = np.asarray(Image.open("sweep.png").convert("RGB").resize((size, size), Image.BICUBIC))
        if ours is None:
            bad.append(f"{w}x{h}@{size}: {msg}")
            continue
        d = np.abs(ours.astype(int) - ref.astype(int))
        worst, means = max(worst, int(d.max())), means + [float(d.mean())]
print(f"measured difference to PIL (decode + bicubic resize, {len(means)} image/size pairs): "
      f"max {worst}, mean {np.mean(means):.6f} (0..255 units)")
check("io/image.c equals PIL's convert('RGB').resize(BICUBIC) on every image and size "
      "(tolerance 0, as measured)", not bad and worst == 0, f"worst {worst}; {bad}")

refusals = {"truncated.png": "corrupt", "truncated.jpg": "corrupt", "notes.jpg": "unsupported format",
            "missing.png": "missing"}
got = {n: image_tool(os.path.join("img", n), S)[1] for n in refusals}
got["big.png"] = image_tool("img/big.png", S, MAX_PIXELS)[1]
refusals["big.png"] = "too large"
check("corrupt, truncated, unsupported, missing and too large images are refused with a reason",
      all(got[n].startswith(f"skip {st}:") for n, st in refusals.items()), got)

# ------------------------------------------------------------------------------------------
# 2. The conversations and an independent preprocessing.

LONG = " ".join(WORDS[(k * 5) % len(WORDS)] for k in range(400))


def monkey(i, img, q, a):
    return {"id": f"m{i}", "conversations": [
        {"from": "user", "value": (f"<img>{img}</img> " if img else "") + f"{q} Answer: "},
        {"from": "assistant", "value": a}]}


MONKEY = []
for i, name in enumerate(n for n in sorted(IMAGES) if n != "big.png"):
    MONKEY.append(monkey(i, "img/" + name, f"What is in picture {i}? Describe the colour.",
                         f"A {WORDS[i % 20]} {WORDS[(i + 3) % 20]} on the table, {i} of them."))
MONKEY.append(monkey(90, None, "Say hello to the world in text only.", "hello world"))
MONKEY.append(monkey(91, os.path.abspath("img/rgb.png"), "Absolute path here.", "café 数字 42"))
MONKEY.append({"id": "m92", "conversations": [
    {"from": "human", "value": "<img>img/gray.png</img> First question? Answer: "},
    {"from": "gpt", "value": "<ref>the cat</ref><box>(1,2),(3,4)</box>"},
    {"from": "user", "value": "And a second one, with <|endoftext|> inside? Answer: "},
    {"from": "assistant", "value": "Straße naïve mañana."}]})
MONKEY.append(monkey(93, "img/rgb.jpg", "Describe in great detail.", LONG))          # truncated
# skipped, one per reason
MONKEY.append(monkey(94, "img/truncated.png", "q", "a"))                              # image corrupt
MONKEY.append(monkey(95, "img/missing.png", "q", "a"))                                # image missing
MONKEY.append(monkey(96, "img/notes.jpg", "q", "a"))                                  # unsupported
MONKEY.append(monkey(97, "img/big.png", "q", "a"))                                    # too large
MONKEY.append({"id": "m98", "conversations": [
    {"from": "user", "value": "<img>img/rgb.png a tag that never closes"},
    {"from": "assistant", "value": "x"}]})                                               # bad image tag
MONKEY.append({"id": "m99", "conversations": [
    {"from": "assistant", "value": "answer first"}, {"from": "user", "value": "q"}]})   # bad conversation
CUT_PREFIX = ""
for w in LONG.split():  # text that ends 40 tokens before seq_length, then an image
    if len(enc_special(CUT_PREFIX)) >= L - 40:
        break
    CUT_PREFIX += w + " "
MONKEY.append({"id": "m100", "conversations": [
    {"from": "user", "value": CUT_PREFIX + "<img>img/rgb.png</img> Answer: "},
    {"from": "assistant", "value": "x"}]})                                               # cuts an image
MONKEY.append({"id": "m101", "conversations": [
    {"from": "user", "value": LONG + " " + LONG}, {"from": "assistant", "value": "x"}]})  # no targets
MONKEY.append(monkey(102, "img/truncated.jpg", "q", "a"))                             # image corrupt
BAD_JSON = '{"id": "m103" "conversations": []}'                                        # bad JSON
# not UTF-8 (a raw 0xFF byte in a string): cJSON takes it, the tokenizer refuses the text
BAD_UTF8 = '{"id": "m104", "conversations": [{"from": "user", "value": "bad \udcff byte"}, ' \
           '{"from": "assistant", "value": "x"}]}'
EXPECTED_SKIPS = {"image corrupt": 2, "image missing": 1, "image unsupported format": 1,
                  "image too large": 1, "bad image tag": 1, "bad conversation": 1,
                  "truncation cuts an image": 1, "no targets": 1, "bad JSON": 1,
                  "text the tokenizer refuses": 1}

CHATML = [
    {"id": "c0", "conversations": [
        {"from": "user", "value": "Picture 1: <img>img/rgb.png</img>\nPicture 2: <img>img/cmyk.jpg</img>\n"
                                  "What differs between them?"},
        {"from": "assistant", "value": "The first is red, the second blue."},
        {"from": "user", "value": "And the sky?"},
        {"from": "assistant", "value": "There are two clouds."}]},
    {"id": "c1", "conversations": [
        {"from": "system", "value": "You are a picture describer."},
        {"from": "human", "value": "Picture 1: <img>img/gray.jpg</img>\nDescribe it."},
        {"from": "gpt", "value": "A grey street with a car."}]},
    {"id": "c2", "conversations": [
        {"from": "assistant", "value": "a stray leading answer, dropped as upstream does"},
        {"from": "user", "value": "Text only: what is 3.14?"},
        {"from": "assistant", "value": "pi, nearly"}]},
    {"id": "c3", "conversations": [
        {"from": "user", "value": "Picture 1: <img>img/palette.png</img>\nGrounding: <ref>the boat</ref>"},
        {"from": "assistant", "value": "<ref>the boat</ref><box>(10,20),(30,40)</box>"}]},
]


def value_tokens(text, target):
    """<img>P</img> -> span (always -100); the rest enc_special; labels = ids when target."""
    toks, labs, imgs, i = [], [], [], 0
    while True:
        o = text.find("<img>", i)
        if o < 0:
            t = enc_special(text[i:])
            return toks + t, labs + (t if target else [-100] * len(t)), imgs
        t = enc_special(text[i:o])
        toks, labs = toks + t, labs + (t if target else [-100] * len(t))
        c = text.find("</img>", o)
        imgs.append(text[o + 5:c])
        toks += [IMG] + [IMG_PAD] * SLOTS + [IMG_END]
        labs += [-100] * SPAN
        i = c + 6


def ref_monkey(conv):
    toks, labs, imgs = [], [], []
    for k, t in enumerate(conv):
        a, b, c = value_tokens(t["value"], k % 2 == 1)
        toks, labs, imgs = toks + a, labs + b, imgs + c
        if k % 2 == 1:  # Monkey closes each answer with <|endoftext|>, a target
            toks, labs = toks + [EOD], labs + [EOD]
    return toks, labs, imgs


ROLE = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


def ref_chatml(conv, mode, system="You are a helpful assistant."):
    if ROLE[conv[0]["from"]] == "system":
        system, conv = conv[0]["value"], conv[1:]
    if conv and ROLE[conv[0]["from"]] != "user":  # upstream: source = source[1:]
        conv = conv[1:]
    nl = enc_ordinary("\n")
    assert len(nl) == 1  # upstream's arithmetic (len - 3, [1 + len(role):-2]) assumes one token
    toks, labs, imgs = [], [], []
    for role, text in [("system", system)] + [(ROLE[t["from"]], t["value"]) for t in conv]:
        role_ids = [IM_START] + enc_ordinary(role)           # tokenizer("<|im_start|>" + role)
        v, vl, vi = value_tokens(text, role == "assistant")
        block = role_ids + nl + v + [IM_END] + nl
        if mode == "qwen":                                      # Qwen-VL finetune.py, literally
            if role == "assistant":
                lab = [IM_START] + [-100] * len(role_ids) + vl + [IM_END] + nl
            else:
                lab = [IM_START] + [-100] * (len(block) - 3) + [IM_END] + nl
        else:                                                   # assistant content + <|im_end|>
            lab = [-100] * (len(role_ids) + 1) + vl + ([IM_END] if role == "assistant" else [-100]) + [-100]
        assert len(lab) == len(block)
        toks, labs, imgs = toks + block, labs + lab, imgs + vi
    return toks, labs, imgs


def ref_truncate(toks, labs, imgs):
    """(tokens, labels, images, truncated) or a skip reason."""
    trunc = len(toks) > L
    if trunc:
        starts = [p for p, t in enumerate(toks) if t == IMG]
        if any(p < L <= p + SPAN - 1 for p in starts):
            return "truncation cuts an image"
        imgs = imgs[:sum(p < L for p in starts)]
        toks, labs = toks[:L], labs[:L]
    if all(x == -100 for x in labs):
        return "no targets"
    return toks, labs, imgs, trunc


def write_json(path, samples, raw_extra=(), raw_tail=()):
    parts = [json.dumps(s, ensure_ascii=False) for s in samples]
    parts[len(parts) // 2:len(parts) // 2] = list(raw_extra)
    parts += list(raw_tail)
    with open(path, "wb") as f:  # surrogateescape: BAD_UTF8's \udcff becomes the raw byte 0xFF
        f.write(("[\n  " + ",\n  ".join(parts) + "\n]\n").encode("utf-8", "surrogateescape"))


write_json("monkey.json", MONKEY, [BAD_JSON], [BAD_UTF8])
write_json("chatml.json", CHATML)


def mkdata(json_path, out, *extra, np_=0):
    cmd = [VLMTRAIN, "mkdata", "--json", json_path, "--images", WORK, "--tokenizer", "ranks.tiktoken",
           "--config", "model.json", "--out", out, "--max-image-pixels", str(MAX_PIXELS), *extra]
    if np_:
        cmd = ["mpirun", "--oversubscribe", "-np", str(np_)] + cmd
    return run(cmd)


def load(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][...] for k in ("samples/tokens", "samples/labels", "samples/offsets",
                                       "samples/image_offsets", "images/pixels")} | \
               {"attrs": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}}


def samples_of(d):
    o, io_ = d["samples/offsets"], d["samples/image_offsets"]
    return [(d["samples/tokens"][o[i]:o[i + 1]].tolist(), d["samples/labels"][o[i]:o[i + 1]].tolist(),
             d["images/pixels"][io_[i]:io_[i + 1]]) for i in range(len(o) - 1)]


def compare(d, expected, label):
    """expected: list of (tokens, labels, image paths); returns a list of problems."""
    got = samples_of(d)
    problems = []
    if len(got) != len(expected):
        return [f"{label}: {len(got)} samples, expected {len(expected)}"]
    for k, ((t, l, px), (et, el, ei)) in enumerate(zip(got, expected)):
        if t != et:
            first = next((p for p, (a, b) in enumerate(zip(t, et)) if a != b), min(len(t), len(et)))
            problems.append(f"{label} sample {k}: tokens differ at {first} (len {len(t)} vs {len(et)}): "
                            f"{t[max(0, first - 3):first + 5]} vs {et[max(0, first - 3):first + 5]}")
        elif l != el:
            first = next(p for p, (a, b) in enumerate(zip(l, el)) if a != b)
            problems.append(f"{label} sample {k}: labels differ at {first}: "
                            f"{l[max(0, first - 3):first + 5]} vs {el[max(0, first - 3):first + 5]}")
        if len(px) != len(ei):
            problems.append(f"{label} sample {k}: {len(px)} images, expected {len(ei)}")
    return problems


# ------------------------------------------------------------------------------------------
# 3. Monkey format, one rank.

expected_m, expected_skips, n_trunc = [], collections.Counter(), 0
for s in MONKEY[: len(MONKEY) // 2] + [None] + MONKEY[len(MONKEY) // 2:] + ["utf8"]:
    if s is None:
        expected_skips["bad JSON"] += 1
        continue
    if s == "utf8":
        expected_skips["text the tokenizer refuses"] += 1
        continue
    conv = s["conversations"]
    if ROLE[conv[0]["from"]] != "user":
        expected_skips["bad conversation"] += 1
        continue
    if any(t["value"].count("<img>") != t["value"].count("</img>") for t in conv):
        expected_skips["bad image tag"] += 1
        continue
    r = ref_truncate(*ref_monkey(conv))
    if isinstance(r, str):
        expected_skips[r] += 1
        continue
    toks, labs, imgs, tr = r
    status = [image_tool(os.path.join(WORK, p), S, MAX_PIXELS)[1] for p in imgs]
    bad_img = next((st for st in status if st.startswith("skip ")), None)
    if bad_img:
        expected_skips["image " + bad_img[5:].split(":")[0]] += 1
        continue
    n_trunc += tr
    expected_m.append((toks, labs, imgs))
check("the test corpus covers every skip reason once or twice (precondition)",
      dict(expected_skips) == EXPECTED_SKIPS, dict(expected_skips))

rc, out, err = mkdata("monkey.json", "monkey.h5", "--max-skip-fraction", "0.5", "--report",
                      "monkey_report.json")
print(out.strip())
check("Monkey JSON, 1 rank: exit 0, summary lines, no .tmp left",
      rc == 0 and "mkdata: wrote" in out and "skipped" in out and "lengths" in out
      and os.path.exists("monkey.h5") and not os.path.exists("monkey.h5.tmp"), out + err)
rep = json.load(open("monkey_report.json")) if os.path.exists("monkey_report.json") else {}
check("skip counts by reason, truncations and totals in the report",
      rep.get("skips") == EXPECTED_SKIPS and rep.get("truncated") == n_trunc == 1
      and rep.get("samples") == len(expected_m) and rep.get("samples_in") == len(MONKEY) + 2
      and sum(h["count"] for h in rep.get("histogram", [])) == len(expected_m), rep)

rc, out, err = run([DATASET_TOOL, "check", "model.json", "monkey.h5"])
check("the C reader opens the file and reads every sample", rc == 0 and out.startswith("ok"), out + err)

D1 = load("monkey.h5")
problems = compare(D1, expected_m, "monkey")
check("Monkey: tokens and labels equal the independent Python preprocessing", not problems, problems)

texts_ok = []
for (t, _l, _p), s in zip(samples_of(D1), [s for s in MONKEY if s["id"] in
                                            {f"m{i}" for i in range(90)} | {"m90", "m91", "m92"}]):
    want = ""
    for k, turn in enumerate(s["conversations"]):
        want += turn["value"] + ("<|endoftext|>" if k % 2 else "")
    # slots decode to <imgpad> x SLOTS; fold them back to the path form of the JSON
    got_text = decode(t)
    for p in [x["value"][x["value"].find("<img>") + 5:x["value"].find("</img>")]
              for x in s["conversations"] if "<img>" in x["value"]]:
        got_text = got_text.replace("<img>" + "<imgpad>" * SLOTS + "</img>", f"<img>{p}</img>", 1)
    texts_ok.append(got_text == want or (s["id"], got_text[:200], want[:200]))
check("decoding the stored tokens gives the JSON text back", all(x is True for x in texts_ok),
      [x for x in texts_ok if x is not True])

pix_bad, pix_max = [], 0
for k, ((_t, _l, px), (_et, _el, ei)) in enumerate(zip(samples_of(D1), expected_m)):
    for j, p in enumerate(ei):
        name = os.path.basename(p)
        ref = reference_pixels(name) if name in IMAGES else None
        d = int(np.abs(px[j].astype(int) - ref.astype(int)).max())
        pix_max = max(pix_max, d)
        if d:
            pix_bad.append((k, name, d))
check(f"stored pixels equal PIL's bicubic resize (max difference {pix_max})", not pix_bad, pix_bad)

long_sample = [len(t) for t, _l, _p in samples_of(D1)]
check("the over-long sample is kept, cut to seq_length, with its image",
      L in long_sample and max(long_sample) == L)

# ------------------------------------------------------------------------------------------
# 4. ChatML, both target rules.

for mode in ("qwen", "assistant"):
    out_h5 = f"chatml_{mode}.h5"
    rc, out, err = mkdata("chatml.json", out_h5, "--format", "chatml", "--chatml-targets", mode)
    exp = []
    for s in CHATML:
        r = ref_truncate(*ref_chatml(s["conversations"], mode))
        exp.append(r[:3])
    problems = compare(load(out_h5), exp, f"chatml/{mode}") if rc == 0 else [out + err]
    pb = []
    if rc == 0:
        for k, ((_t, _l, px), (_et, _el, ei)) in enumerate(zip(samples_of(load(out_h5)), exp)):
            for j, p in enumerate(ei):
                if not np.array_equal(px[j], reference_pixels(os.path.basename(p))):
                    pb.append((k, p))
    check(f"ChatML ({mode} targets, multi-image, multi-turn, human/gpt, system turn): tokens, "
          f"labels and pixels equal the Python reference", not problems and not pb, problems + pb)

# ------------------------------------------------------------------------------------------
# 5. Parallel: 2 and 3 ranks write the same content as 1.

def same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a if k != "attrs") and a["attrs"] == b["attrs"]


for n, block in ((2, "2"), (3, "1")):
    rc, out, err = mkdata("monkey.json", f"monkey_np{n}.h5", "--max-skip-fraction", "0.5",
                          "--block", block, "--report", f"monkey_np{n}.json", np_=n)
    ok = rc == 0 and same(load(f"monkey_np{n}.h5"), D1)
    rep_n = json.load(open(f"monkey_np{n}.json")) if rc == 0 else {}
    check(f"mpirun -np {n} (--block {block}): same content as 1 rank, same report counts",
          ok and all(rep_n.get(k) == rep.get(k) for k in ("samples", "tokens", "skips", "histogram"))
          and rep_n.get("ranks") == n, out + err)

# ------------------------------------------------------------------------------------------
# 6. Failures: too many skips, mismatched config, missing tokenizer.

rc, out, err = mkdata("monkey.json", "monkey_strict.h5")
check("default --max-skip-fraction 0.01: error naming it, no file, no .tmp",
      rc != 0 and "--max-skip-fraction" in err and not os.path.exists("monkey_strict.h5")
      and not os.path.exists("monkey_strict.h5.tmp"), err)

bad_cfg = json.loads(json.dumps(CFG))
bad_cfg["visual"]["image_start_id"] = IMG - 1
json.dump(bad_cfg, open("model_badids.json", "w"))
rc, out, err = run([VLMTRAIN, "mkdata", "--json", "chatml.json", "--tokenizer", "ranks.tiktoken",
                    "--config", "model_badids.json", "--out", "bad.h5", "--format", "chatml"])
check("tokenizer's <img> id differs from the config's image_start_id: clear error",
      rc != 0 and "image_start_id" in err and str(IMG) in err and not os.path.exists("bad.h5"), err)
rc, out, err = run([VLMTRAIN, "mkdata", "--json", "chatml.json", "--config", "model.json",
                    "--out", "bad.h5"])
check("--json without --tokenizer: error naming it", rc != 0 and "--tokenizer" in err, err)

# ------------------------------------------------------------------------------------------
# 7. Train 3 steps on the converted data.

with open(TRAIN_CONFIG) as f:
    tc = json.load(f)
tc["train_micro_batch_size_per_gpu"] = 2
tc["steps_per_print"] = 1
tc["train_steps"] = 3
json.dump(tc, open("train.json", "w"))
rc, out, err = run([VLMTRAIN, "init", "--config", "model.json", "--out", "model"])
if rc == 0:
    rc, out, err = run([VLMTRAIN, "train", "--model", "model", "--data", "monkey.h5", "--config",
                        "train.json", "--out", "run", "--steps", "3"])
losses = []
if rc == 0 and os.path.exists("run/metrics.jsonl"):
    losses = [json.loads(x)["loss"] for x in open("run/metrics.jsonl") if x.strip()]
check("vlmtrain train --steps 3 on the converted dataset: 3 finite losses",
      rc == 0 and len(losses) == 3 and all(math.isfinite(x) for x in losses), (out + err)[-2000:])

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
