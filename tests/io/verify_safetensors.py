"""tests/io/verify_safetensors.py: checks the files that st_write wrote in
tests/io/test_safetensors.c (io/st/w_{f32,bf16,f16}.safetensors) with an
independent reader: u64 length, header padded with spaces to an 8-byte
boundary, "__metadata__" {"format": "pt"}, contiguous data offsets in header
order, the F32 values, and BF16 / F16 bits equal to torch's / numpy's
round-to-nearest-even conversion of the F32 values."""
import json
import os
import struct
import sys

import numpy as np
import torch

ST = os.path.join("io", "st")
passed = failed = 0


def check(ok, what):
    global passed, failed
    passed += bool(ok)
    failed += not ok
    print(("ok   " if ok else "FAIL ") + what, flush=True)


def read(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    hdr = raw[8:8 + n]
    text = hdr.rstrip(b" ")
    header = json.loads(text)
    return n, hdr, text, header, raw[8 + n:]


def tensor(header, data, name):
    e = header[name]
    b, en = e["data_offsets"]
    dt = {"F32": np.uint32, "BF16": np.uint16, "F16": np.uint16}[e["dtype"]]
    return np.frombuffer(data[b:en], dtype=np.dtype(dt).newbyteorder("<")).reshape(e["shape"]), e


def main():
    weird = 'we"ird\\name/\u00e9'
    files = {d: os.path.join(ST, f"w_{d}.safetensors") for d in ("f32", "bf16", "f16")}
    parsed = {}
    for d, path in files.items():
        n, hdr, text, header, data = read(path)
        parsed[d] = (header, data)
        names = [k for k in header if k != "__metadata__"]
        pos, contiguous = 0, True
        for k in names:
            b, e = header[k]["data_offsets"]
            contiguous &= b == pos
            pos = e
        check((8 + n) % 8 == 0 and set(hdr[len(text):]) <= {0x20} and text.startswith(b"{"),
              f"{path}: header length {n}, 8-byte aligned data, padded with spaces")
        check(header.get("__metadata__") == {"format": "pt"} and
              names == ["w.a", "w.specials", "w.scalar", weird] and
              all(header[k]["dtype"] == d.upper() for k in names),
              f"{path}: metadata, names in writing order (escaped name intact), dtype {d.upper()}")
        check(contiguous and pos == len(data) and header["w.scalar"]["shape"] == [] and
              header[weird]["shape"] == [0, 3],
              f"{path}: data offsets contiguous from 0 to the end of the file; [] and [0, 3] shapes")

    h32, d32 = parsed["f32"]
    a, _ = tensor(h32, d32, "w.a")
    want = np.array([(i - 500) * 0.0137 for i in range(1000)], dtype=np.float32).reshape(10, 100)
    check(np.array_equal(a, want.view(np.uint32)), "F32 values are the fp32 values the C test wrote")
    sc, _ = tensor(h32, d32, "w.scalar")
    check(sc.view(np.float32).item() == 0.5, "F32 scalar 0.5")

    for name in ("w.a", "w.specials", "w.scalar"):
        src = tensor(h32, d32, name)[0].view(np.float32)
        b16, _ = tensor(*parsed["bf16"], name)
        ref = torch.from_numpy(src.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        nan_ok = np.isnan(src).reshape(-1)
        got = b16.reshape(-1)
        okb = bool(np.all((got == ref.reshape(-1)) | (nan_ok & ((got & 0x7F80) == 0x7F80) & ((got & 0x7F) != 0))))
        check(okb, f"BF16 {name}: bits equal torch's round-to-nearest-even")
        f16, _ = tensor(*parsed["f16"], name)
        ref16 = src.astype(np.float16).view(np.uint16)
        got = f16.reshape(-1)
        okh = bool(np.all((got == ref16.reshape(-1)) | (nan_ok & np.isnan(got.view(np.float16)))))
        check(okh, f"F16 {name}: bits equal numpy's round-to-nearest-even")

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
