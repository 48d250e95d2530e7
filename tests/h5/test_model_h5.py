#!/usr/bin/python3
"""tests/h5/test_model_h5.py: `vlmtrain import` and `vlmtrain export` (io/model_h5.c).

Usage: test_model_h5.py CONFIG.json TRAIN.json   (env VLMTRAIN, VLM_PYTHON, VLM_TEST_WORK)

HF directories are made here by hand (json + struct + numpy/torch: independent
of the C writer): fp32 single file (from `vlmtrain init`), bf16 in three shards
with an index, fp16, and one without LoRA tensors. Checks: every tensor's data
byte-for-byte after HF -> HDF5 -> HF (fp32 -> fp32, bf16 -> fp32 h5 -> bf16),
config.json byte-identical, sharded export with a correct index, the model file
read by h5py (layout, attributes, values, and the checksum recomputed from its
definition in docs/formats.md) and by `h5dump -H` (every file written), the
same results under mpirun -np 2 and 3 with small transfer pieces,
--trained-only, bad inputs (clear error, exit 1, nothing written), a corrupted
tensor caught by its checksum, and an import killed with SIGKILL mid-write
leaving the previous file intact. Ends with "N passed, M failed".
"""
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import h5py
import numpy as np
import torch

CONFIG, TRAIN = sys.argv[1], sys.argv[2]
VLM = os.environ["VLMTRAIN"]
WORK = os.path.join(os.environ.get("VLM_TEST_WORK", "."), "h5", "model")
MPIRUN = shutil.which("mpirun") or "mpirun"
passed = failed = 0

# Under -DVLMTRAIN_SANITIZE=ON, Open MPI's own allocations are suppressed by
# tests/lsan.supp (LSAN_OPTIONS from scripts/test.sh); nothing to change here.
ENV = dict(os.environ)
ENV.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
ENV.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}", flush=True)
    else:
        failed += 1
        print(f"FAIL {name}\n     {detail}", flush=True)


def run(args, np_=0, env=None, timeout=600):
    cmd = ([MPIRUN, "-np", str(np_), "--oversubscribe"] if np_ else []) + [VLM, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or ENV)
    return p.returncode, p.stdout, p.stderr


def crashed(rc, err):
    return rc < 0 or "Sanitizer" in err or "runtime error" in err


def w(*parts):
    return os.path.join(WORK, *parts)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---- safetensors by hand -----------------------------------------------------
def read_st(path):
    """name -> (dtype, shape, raw bytes); plus the metadata."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", None)
    out = {}
    for name, e in header.items():
        a, b = e["data_offsets"]
        out[name] = (e["dtype"], tuple(e["shape"]), blob[8 + n + a:8 + n + b])
    return out, meta


def read_hf_dir(d):
    """All tensors of a HF dir (single file or index + shards)."""
    single = os.path.join(d, "model.safetensors")
    if os.path.exists(single):
        return read_st(single)[0]
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        index = json.load(f)
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(read_st(os.path.join(d, shard))[0])
    return out


def write_st(path, tensors):
    """tensors: list of (name, dtype_str, shape, raw bytes)."""
    header, data = {}, b""
    for name, dt, shape, raw in tensors:
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    while (8 + len(h)) % 8:
        h += b" "
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def to_f32(dtype, shape, raw):
    if dtype == "F32":
        return np.frombuffer(raw, "<f4").reshape(shape)
    u = np.frombuffer(raw, "<u2").astype(np.uint32)
    if dtype == "BF16":
        return (u << 16).view(np.float32).reshape(shape)
    return np.frombuffer(raw, "<f2").astype(np.float32).reshape(shape)


def bf16_bytes(x):
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().astype("<i2").tobytes()


# ---- the checksum, from its definition in docs/formats.md ----------------------
M64 = (1 << 64) - 1


def mix_np(z):
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def mix_int(z):
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & M64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def vlm_sum64(a):
    bits = np.ascontiguousarray(a, "<f4").reshape(-1).view("<u4").astype(np.uint64)
    n = bits.size
    with np.errstate(over="ignore"):
        i = np.arange(n, dtype=np.uint64)
        terms = mix_np((i * np.uint64(0x9E3779B97F4A7C15)) ^ bits)
        s = int(terms.sum(dtype=np.uint64))
    return mix_int((s + n * 0xD6E8FEB86659FD93) & M64)


# ---- checks on a model file -------------------------------------------------
def h5dump_ok(path):
    p = subprocess.run(["h5dump", "-H", path], capture_output=True, text=True, timeout=120)
    return p.returncode == 0 and 'DATASET "transformer.wte.weight"' in p.stdout, p.stderr[-500:]


def check_model_file(label, path, hf_tensors, config_text):
    """h5py view of a model file against the HF tensors it came from."""
    ok, why = h5dump_ok(path)
    check(f"{label}: h5dump -H reads {os.path.basename(path)}", ok, why)
    problems = []
    with h5py.File(path, "r") as f:
        fmt = f.attrs.get("format")
        if fmt != "vlmtrain-model":
            problems.append(f"format {fmt!r}")
        if int(f.attrs.get("version", -1)) != 1:
            problems.append(f"version {f.attrs.get('version')!r}")
        if f.attrs.get("model_config") != config_text:
            problems.append("model_config differs from config.json")
        names = set(f["tensors"].keys())
        if names != set(hf_tensors):
            problems.append(f"names differ: {sorted(names ^ set(hf_tensors))[:4]}")
        for name, (dt, shape, raw) in hf_tensors.items():
            if name not in f["tensors"]:
                continue
            d = f["tensors"][name]
            if d.dtype != np.dtype("<f4") or d.shape != shape:
                problems.append(f"{name}: {d.dtype} {d.shape}")
                continue
            if d.chunks is not None or d.compression is not None:
                problems.append(f"{name}: not contiguous")
            x = d[...]
            want = to_f32(dt, shape, raw)
            if x.tobytes() != np.ascontiguousarray(want).tobytes():
                problems.append(f"{name}: values differ")
            if int(d.attrs["checksum"]) != vlm_sum64(x):
                problems.append(f"{name}: checksum {int(d.attrs['checksum']):#x} != {vlm_sum64(x):#x}")
    check(f"{label}: h5py: format/version/model_config, every tensor float32 at its shape, "
          "values exact, checksums as documented", not problems, "; ".join(problems[:6]))


def same_bytes(got, want, dtype=None):
    """Per-tensor raw data comparison; returns a list of differences."""
    diffs = []
    if set(got) != set(want):
        diffs.append(f"names differ: {sorted(set(got) ^ set(want))[:4]}")
    for name in sorted(set(got) & set(want)):
        g, wv = got[name], want[name]
        if dtype and g[0] != dtype:
            diffs.append(f"{name}: dtype {g[0]}")
        if g[1] != wv[1]:
            diffs.append(f"{name}: shape {g[1]} vs {wv[1]}")
        if g[2] != wv[2]:
            diffs.append(f"{name}: bytes differ")
    return diffs


def expect_error(label, args, must, np_=0, absent=(), unchanged=()):
    before = {p: digest(p) for p in unchanged}
    rc, out, err = run(args, np_=np_)
    missing = [s for s in must if s not in err]
    left = [p for p in absent if os.path.exists(p)]
    changed = [p for p in unchanged if digest(p) != before[p]]
    check(label, rc != 0 and (np_ or rc == 1) and not crashed(rc, err) and not missing and not left
          and not changed,
          f"rc={rc} missing={missing} left={left} changed={changed}\nstderr: {err[-1200:]}")


# ==== setup ====================================================================
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
config_text = open(CONFIG).read()

rc, out, err = run(["init", "--config", CONFIG, "--out", w("hf32"), "--seed", "3"])
check("setup: vlmtrain init writes a fp32 HF dir", rc == 0, err)
hf32 = read_hf_dir(w("hf32"))
names = list(hf32)  # registry order, as init writes it

# bf16, three shards + index, tensors in a different order than the registry's
os.makedirs(w("hf16b"))
shutil.copy(w("hf32", "config.json"), w("hf16b", "config.json"))
bf = {n: ("BF16", s, bf16_bytes(to_f32(d, s, r))) for n, (d, s, r) in hf32.items()}
thirds = [names[2::3], names[1::3], names[0::3]]
wmap = {}
for k, part in enumerate(thirds):
    fn = f"model-{k + 1:05d}-of-00003.safetensors"
    write_st(w("hf16b", fn), [(n, *bf[n]) for n in part])
    wmap.update({n: fn for n in part})
with open(w("hf16b", "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": sum(len(v[2]) for v in bf.values())}, "weight_map": wmap}, f)

# fp16, one file
os.makedirs(w("hf16h"))
shutil.copy(w("hf32", "config.json"), w("hf16h", "config.json"))
hh = {n: ("F16", s, np.ascontiguousarray(to_f32(d, s, r)).astype("<f2").tobytes()) for n, (d, s, r) in hf32.items()}
write_st(w("hf16h", "model.safetensors"), [(n, *hh[n]) for n in names])

# ==== fp32 round trip ===========================================================
rc, out, err = run(["import", "--from", w("hf32"), "--out", w("m32.h5")])
check("import fp32 single file: exit 0, summary line, no .tmp left",
      rc == 0 and "import:" in out and os.path.exists(w("m32.h5")) and not os.path.exists(w("m32.h5.tmp")),
      out + err)
check_model_file("fp32", w("m32.h5"), hf32, config_text)
rc, out, err = run(["export", "--from", w("m32.h5"), "--out", w("x32")])
got = read_hf_dir(w("x32")) if rc == 0 else {}
d = same_bytes(got, hf32, "F32")
check("HF fp32 -> h5 -> HF fp32: every tensor's data byte-identical", rc == 0 and not d, err + "; ".join(d[:5]))
check("export: config.json byte-identical, one model.safetensors, no index, no .tmp dir",
      rc == 0 and open(w("x32", "config.json")).read() == config_text
      and sorted(os.listdir(w("x32"))) == ["config.json", "model.safetensors"]
      and not os.path.exists(w("x32.tmp")), str(os.listdir(w("x32")) if rc == 0 else err))

# sharded export: 1 MiB shards of the ~1.2 MB model
rc, out, err = run(["export", "--from", w("m32.h5"), "--out", w("x32s"), "--shard-size-mb", "1"])
ok, why = rc == 0, err
if ok:
    files = sorted(os.listdir(w("x32s")))
    with open(w("x32s", "model.safetensors.index.json")) as f:
        index = json.load(f)
    shards = sorted(set(index["weight_map"].values()))
    total = sum(len(v[2]) for v in hf32.values())
    per_shard = {s: read_st(w("x32s", s))[0] for s in shards}
    ok = (len(shards) >= 2 and shards == [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
          and files == sorted(["config.json", "model.safetensors.index.json"] + shards)
          and index["metadata"]["total_size"] == total
          and all(set(per_shard[s]) == {n for n, v in index["weight_map"].items() if v == s} for s in shards)
          and all(sum(len(t[2]) for t in per_shard[s].values()) <= 1 << 20 for s in shards)
          and not same_bytes(read_hf_dir(w("x32s")), hf32, "F32"))
    why = f"files {files}, total_size {index['metadata'].get('total_size')} vs {total}"
check("--shard-size-mb 1: model-0000i-of-0000n shards of <= 1 MiB, index weight_map and total_size right, "
      "bytes identical", ok, why)
rc, out, err = run(["import", "--from", w("x32s"), "--out", w("m32s.h5")])
same = rc == 0
if same:
    with h5py.File(w("m32.h5")) as a, h5py.File(w("m32s.h5")) as b:
        same = all(a["tensors"][n][...].tobytes() == b["tensors"][n][...].tobytes()
                   and a["tensors"][n].attrs["checksum"] == b["tensors"][n].attrs["checksum"] for n in names)
check("the sharded export imports again (index path) to the same tensors and checksums", same, err)

# ==== bf16 and fp16 inputs ====================================================
rc, out, err = run(["import", "--from", w("hf16b"), "--out", w("m16b.h5")])
check("import bf16, index + 3 shards in another order: exit 0", rc == 0, err)
if rc == 0:
    check_model_file("bf16", w("m16b.h5"), bf, config_text)
rc, out, err = run(["export", "--from", w("m16b.h5"), "--out", w("x16b"), "--dtype", "bf16"])
d = same_bytes(read_hf_dir(w("x16b")) if rc == 0 else {}, bf, "BF16")
check("HF bf16 -> h5 (fp32) -> HF bf16: every tensor's data byte-identical", rc == 0 and not d,
      err + "; ".join(d[:5]))
rc, out, err = run(["export", "--from", w("m32.h5"), "--out", w("x32to16"), "--dtype", "bf16"])
d = same_bytes(read_hf_dir(w("x32to16")) if rc == 0 else {}, bf, "BF16")
check("fp32 h5 -> --dtype bf16: round to nearest even, as torch's .to(bfloat16)", rc == 0 and not d,
      err + "; ".join(d[:5]))
rc, out, err = run(["import", "--from", w("hf16h"), "--out", w("m16h.h5")])
if rc == 0:
    check_model_file("fp16", w("m16h.h5"), hh, config_text)
rc2, out, err2 = run(["export", "--from", w("m16h.h5"), "--out", w("x16h")])
want = {n: ("F32", s, np.ascontiguousarray(to_f32(dt, s, r)).tobytes()) for n, (dt, s, r) in hh.items()}
d = same_bytes(read_hf_dir(w("x16h")) if rc2 == 0 else {}, want, "F32")
check("HF fp16 -> h5 -> HF fp32: numpy's exact widening", rc == 0 and rc2 == 0 and not d,
      err + err2 + "; ".join(d[:5]))

# ==== several ranks ============================================================
PIECES = dict(ENV, VLMTRAIN_H5_PIECE_ELEMS="777")  # many transfers per tensor
for np_ in (2, 3):
    rc, out, err = run(["import", "--from", w("hf16b"), "--out", w(f"m16b_np{np_}.h5")], np_=np_)
    same = rc == 0
    if rc == 0:
        with h5py.File(w("m16b.h5")) as a, h5py.File(w(f"m16b_np{np_}.h5")) as b:
            same = all(a["tensors"][n][...].tobytes() == b["tensors"][n][...].tobytes()
                       and a["tensors"][n].attrs["checksum"] == b["tensors"][n].attrs["checksum"]
                       for n in names) and dict(a.attrs) == dict(b.attrs)
    check(f"mpirun -np {np_} import (bf16 shards): same tensors, attributes and checksums as 1 rank",
          same, out + err)
    ok, why = h5dump_ok(w(f"m16b_np{np_}.h5"))
    check(f"mpirun -np {np_}: h5dump -H reads the file", ok, why)
    rc, out, err = run(["export", "--from", w(f"m16b_np{np_}.h5"), "--out", w(f"x16b_np{np_}"),
                        "--dtype", "bf16", "--shard-size-mb", "1"], np_=np_, env=PIECES)
    d = same_bytes(read_hf_dir(w(f"x16b_np{np_}")) if rc == 0 else {}, bf, "BF16")
    check(f"mpirun -np {np_} export bf16 in 777-element pieces: byte-identical", rc == 0 and not d,
          err + "; ".join(d[:5]))
rc, out, err = run(["import", "--from", w("hf32"), "--out", w("m32_np3.h5")], np_=3, env=PIECES)
rc2, out, err = run(["export", "--from", w("m32_np3.h5"), "--out", w("x32_np3")], np_=3, env=PIECES)
d = same_bytes(read_hf_dir(w("x32_np3")) if rc == 0 and rc2 == 0 else {}, hf32, "F32")
check("mpirun -np 3 import + export fp32 in pieces: byte-identical", rc == 0 and rc2 == 0 and not d,
      err + "; ".join(d[:5]))

# ==== trained only ==============================================================
p = subprocess.run([VLM, "params", CONFIG, "--train", TRAIN, "--list"], capture_output=True, text=True)
trained = [ln.split()[0] for ln in p.stdout.splitlines() if len(ln.split()) >= 5 and ln.split()[3] == "trainable"]
rc, out, err = run(["export", "--from", w("m32.h5"), "--out", w("xt"), "--trained-only", "--train", TRAIN])
ok = rc == 0 and sorted(os.listdir(w("xt"))) == ["config.json", "trained.safetensors"]
if ok:
    t, meta = read_st(w("xt", "trained.safetensors"))
    ok = trained and list(t) == trained and all(t[n][2] == hf32[n][2] for n in t) and meta == {"format": "pt"}
check(f"--trained-only --train: trained.safetensors holds exactly the {len(trained)} trained tensors "
      "(params --list), bytes identical", ok, err)
lora_cfg = w("lora-only.json")
with open(lora_cfg, "w") as f:
    json.dump({"trainable": "lora-only"}, f)
rc, out, err = run(["export", "--from", w("m32.h5"), "--out", w("xl"), "--trained-only", "--train", lora_cfg],
                   np_=2)
t = read_st(w("xl", "trained.safetensors"))[0] if rc == 0 else {}
check("--trained-only with the lora-only preset under 2 ranks: adapters and resampler only",
      rc == 0 and t and all("lora" in n or "attn_pool" in n for n in t)
      and any("attn_pool" in n for n in t), err)

# ==== bad inputs =================================================================
bad_txt = w("not-hdf5.h5")
with open(bad_txt, "w") as f:
    f.write("plain text\n")
expect_error("export of a text file: \"not an HDF5 file\"", ["export", "--from", bad_txt, "--out", w("e1")],
             ["not-hdf5.h5", "not an HDF5 file"], absent=[w("e1"), w("e1.tmp")])


def variant(name, edit):
    path = w(name)
    shutil.copy(w("m32.h5"), path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


p = variant("fmt.h5", lambda f: f.attrs.__setitem__("format", "vlmtrain-dataset"))
expect_error("wrong format attribute", ["export", "--from", p, "--out", w("e2")],
             ["fmt.h5", "'format' is \"vlmtrain-dataset\"", "vlmtrain-model"], absent=[w("e2")])
p = variant("ver.h5", lambda f: f.attrs.__setitem__("version", 2))
expect_error("version 2", ["export", "--from", p, "--out", w("e3")], ["ver.h5", "version 2"], absent=[w("e3")])
p = variant("nocfg.h5", lambda f: f.attrs.__delitem__("model_config"))
expect_error("no model_config attribute", ["export", "--from", p, "--out", w("e4")],
             ["nocfg.h5", "model_config"], absent=[w("e4")])
p = variant("missing.h5", lambda f: f["tensors"].__delitem__("transformer.ln_f.weight"))
expect_error("a missing tensor named", ["export", "--from", p, "--out", w("e5")],
             ["missing.h5", "missing", "transformer.ln_f.weight"], absent=[w("e5")])


def reshape(f):
    x = f["tensors/transformer.visual.attn_pool.kv_proj.weight"][...]
    del f["tensors/transformer.visual.attn_pool.kv_proj.weight"]
    f["tensors/transformer.visual.attn_pool.kv_proj.weight"] = x.reshape(x.shape[1], x.shape[0])


p = variant("shape.h5", reshape)
expect_error("a wrong shape, both shapes named", ["export", "--from", p, "--out", w("e6")],
             ["shape.h5", "wrong shape", "transformer.visual.attn_pool.kv_proj.weight", "has shape [48, 64]",
              "expects [64, 48]"], absent=[w("e6")], np_=3)


def to_f64(f):
    x = f["tensors/transformer.ln_f.weight"][...]
    del f["tensors/transformer.ln_f.weight"]
    f["tensors/transformer.ln_f.weight"] = x.astype(np.float64)


p = variant("f64.h5", to_f64)
expect_error("a float64 tensor", ["export", "--from", p, "--out", w("e7")],
             ["f64.h5", "transformer.ln_f.weight", "float64, expected float32"], absent=[w("e7")])
p = variant("extra.h5", lambda f: f["tensors"].__setitem__("transformer.bogus", np.zeros(3, np.float32)))
expect_error("an unexpected tensor", ["export", "--from", p, "--out", w("e8")],
             ["extra.h5", "unexpected", "transformer.bogus"], absent=[w("e8")])

# corrupted tensor data: flip bits in place (the checksum attribute is untouched)
corrupt = w("corrupt.h5")
shutil.copy(w("m32.h5"), corrupt)
with h5py.File(corrupt, "r") as f:
    off = f["tensors/transformer.h.1.mlp.w1.weight"].id.get_offset()
with open(corrupt, "r+b") as f:
    f.seek(off + 1001)
    b = f.read(1)
    f.seek(off + 1001)
    f.write(bytes([b[0] ^ 0x04]))
for np_ in (0, 2):
    expect_error(f"a flipped bit in a tensor's data{' (2 ranks)' if np_ else ''}: checksum mismatch, "
                 "nothing exported", ["export", "--from", corrupt, "--out", w(f"e9_{np_}")],
                 ["corrupt.h5", "checksum mismatch", "transformer.h.1.mlp.w1.weight", "corrupt"], np_=np_,
                 absent=[w(f"e9_{np_}"), w(f"e9_{np_}.tmp")])

os.makedirs(w("full"))
with open(w("full", "keep.txt"), "w") as f:
    f.write("mine")
expect_error("export into a non-empty directory", ["export", "--from", w("m32.h5"), "--out", w("full")],
             ["full", "not empty"], unchanged=[w("full", "keep.txt")])
expect_error("--dtype fp16 refused", ["export", "--from", w("m32.h5"), "--out", w("e10"), "--dtype", "fp16"],
             ["--dtype", "fp16"], absent=[w("e10")])
expect_error("--trained-only without --train", ["export", "--from", w("m32.h5"), "--out", w("e11"),
                                                "--trained-only"], ["--train"], absent=[w("e11")])

# import: bad HF directories; an existing output is left as it was
shutil.copy(w("m32.h5"), w("prev.h5"))
os.makedirs(w("hf_nocfg"))
shutil.copy(w("hf32", "model.safetensors"), w("hf_nocfg", "model.safetensors"))
expect_error("import without config.json", ["import", "--from", w("hf_nocfg"), "--out", w("prev.h5")],
             ["hf_nocfg/config.json"], unchanged=[w("prev.h5")], absent=[w("prev.h5.tmp")])


def hf_variant(name, tensors):
    os.makedirs(w(name))
    shutil.copy(w("hf32", "config.json"), w(name, "config.json"))
    write_st(w(name, "model.safetensors"), tensors)
    return w(name)


base = [(n, *hf32[n]) for n in names]
KV = "transformer.visual.attn_pool.kv_proj.weight"
v = hf_variant("hf_shape", [(n, d, (s[1], s[0]) if n == KV else s, r) for n, d, s, r in base])
expect_error("import: a wrong shape", ["import", "--from", v, "--out", w("prev.h5")],
             ["wrong shape", KV, "[48, 64]", "[64, 48]"], unchanged=[w("prev.h5")])
v = hf_variant("hf_missing", [t for t in base if t[0] != "lm_head.weight"])
expect_error("import: a missing tensor", ["import", "--from", v, "--out", w("prev.h5")],
             ["missing", "lm_head.weight"], unchanged=[w("prev.h5")], np_=2)
v = hf_variant("hf_extra", base + [("transformer.bogus", "F32", (2,), b"\0" * 8)])
expect_error("import: an unexpected tensor", ["import", "--from", v, "--out", w("prev.h5")],
             ["unexpected", "transformer.bogus"], unchanged=[w("prev.h5")])
os.makedirs(w("hf_garbage"))
shutil.copy(w("hf32", "config.json"), w("hf_garbage", "config.json"))
with open(w("hf_garbage", "model.safetensors"), "wb") as f:
    f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
expect_error("import: a broken safetensors file", ["import", "--from", w("hf_garbage"), "--out", w("prev.h5")],
             ["model.safetensors", "not valid JSON"], unchanged=[w("prev.h5")])

# no LoRA tensors (a Qwen-VL checkpoint): initialised as train does
v = hf_variant("hf_nolora", [t for t in base if "lora" not in t[0]])
rc, out, err = run(["import", "--from", v, "--out", w("nolora.h5"), "--seed", "5"])
ok = rc == 0 and "LoRA tensors absent and initialised" in out
if ok:
    with h5py.File(w("nolora.h5")) as f:
        t = f["tensors"]
        ok = (all(np.all(t[n][...] == 0) for n in t if n.endswith("lora_b.weight"))
              and all(np.all(t[n][...] == 1) for n in t if n.endswith("lora_scale"))
              and all(np.abs(t[n][...]).max() <= 1 / np.sqrt(t[n].shape[1]) + 1e-7
                      and np.abs(t[n][...]).max() > 0 for n in t if n.endswith("lora_a.weight"))
              and all(t[n][...].tobytes() == to_f32(*hf32[n]).tobytes() for n in t if "lora" not in n))
check("import without LoRA tensors: lora_a Kaiming-uniform, lora_b 0, lora_scale 1, the rest exact", ok,
      out + err)

# ==== a writer killed with SIGKILL mid-file ========================================
big_cfg = json.loads(config_text)
big_cfg.update(hidden_size=256, kv_channels=64, num_attention_heads=4, intermediate_size=688,
               vocab_size=65536)
big_cfg["visual"]["output_dim"] = 256
big_cfg["visual"]["resampler_heads"] = 2
big_cfg["visual"]["image_start_id"] = 65533
with open(w("big.json"), "w") as f:
    json.dump(big_cfg, f)
rc, out, err = run(["init", "--config", w("big.json"), "--out", w("hfbig")])
rc2, out2, err2 = run(["import", "--from", w("hfbig"), "--out", w("big.h5")])
check("setup: a 34M-parameter model imported", rc == 0 and rc2 == 0, err + err2)
before = digest(w("big.h5")) if rc2 == 0 else None
killed = False
for attempt, piece in enumerate(("2048", "512", "128")):
    env = dict(ENV, VLMTRAIN_H5_PIECE_ELEMS=piece)
    p = subprocess.Popen([VLM, "import", "--from", w("hfbig"), "--out", w("big.h5"), "--seed", "9"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    t0 = time.time()
    while not os.path.exists(w("big.h5.tmp")) and p.poll() is None and time.time() - t0 < 60:
        time.sleep(0.005)
    time.sleep(0.3)
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        killed = p.returncode == -signal.SIGKILL
        p.stderr.close()
        break
    p.stderr.close()
check("import killed with SIGKILL while writing", killed, "the import finished before the kill every time")
ok = before is not None and digest(w("big.h5")) == before and os.path.exists(w("big.h5.tmp"))
check("after the kill: big.h5 byte-identical to before, the half-written big.h5.tmp beside it", ok)
rc, out, err = run(["export", "--from", w("big.h5"), "--out", w("xbig")])
check("the previous file still loads: exported, every checksum verified", rc == 0, err)
rc, out, err = run(["import", "--from", w("hfbig"), "--out", w("big.h5")])
check("the next import replaces the stale .tmp and commits", rc == 0 and not os.path.exists(w("big.h5.tmp")), err)
# every model file vlmtrain wrote in this test (not the h5py-edited copies)
edited = {"fmt.h5", "ver.h5", "nocfg.h5", "missing.h5", "shape.h5", "f64.h5", "extra.h5", "corrupt.h5",
          "not-hdf5.h5", "prev.h5"}
written = sorted(n for n in os.listdir(WORK) if n.endswith(".h5") and n not in edited)
bad = [n for n in written if not h5dump_ok(w(n))[0]]
check(f"h5dump -H reads every model file written ({len(written)})", len(written) >= 9 and not bad, str(bad))
for p in ("hfbig", "xbig"):
    shutil.rmtree(w(p), ignore_errors=True)
for p in ("big.h5", "big.h5.tmp"):
    if os.path.exists(w(p)):
        os.remove(w(p))

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
