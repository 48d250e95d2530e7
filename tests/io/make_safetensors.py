"""tests/io/make_safetensors.py: writes the safetensors files that
tests/io/test_safetensors.c reads (into io/st/ under the working directory).

The format is written by hand here (struct + json + numpy), independently of
io/safetensors.c, so the C reader is checked against the format and not against
itself. Valid files (F32, BF16, F16, mixed, metadata, padding, scalars, empty
tensors, header order different from data order) each come with an F32 file
of the expected values (numpy's exact widening). Bad files each come with a
substring the reader's error message must contain; the list is written to
io/st/bad_cases.json.
"""
import json
import os
import struct
import sys

import numpy as np

OUT = os.path.join("io", "st")


def header_bytes(header, pad_to=8, pad_char=b" "):
    h = json.dumps(header, separators=(",", ":")).encode()
    while (8 + len(h)) % pad_to:
        h += pad_char
    return h


def write_raw(name, header_obj_or_bytes, data, length_override=None):
    """Writes u64 length + header + data; header may be bytes (verbatim)."""
    h = header_obj_or_bytes if isinstance(header_obj_or_bytes, bytes) else header_bytes(header_obj_or_bytes)
    n = len(h) if length_override is None else length_override
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(struct.pack("<Q", n))
        f.write(h)
        f.write(data)


def write_tensors(name, tensors, order=None, metadata=None):
    """tensors: list of (name, dtype_str, uint-view ndarray of the raw elements, shape).
    Data is laid out in `order` (indices), the header lists tensors in list order."""
    order = order if order is not None else list(range(len(tensors)))
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offsets = {}
    data = b""
    for i in order:
        tname, dt, raw, shape = tensors[i]
        b = raw.astype(raw.dtype.newbyteorder("<")).tobytes()
        offsets[tname] = (len(data), len(data) + len(b))
        data += b
    for tname, dt, raw, shape in tensors:
        header[tname] = {"dtype": dt, "shape": list(shape), "data_offsets": list(offsets[tname])}
    write_raw(name, header, data)


def f32(name, x):
    x = np.asarray(x, dtype=np.float32)
    return (name, "F32", x.reshape(-1).view(np.uint32), x.shape)


def specials_f32():
    vals = [0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, np.nan, 65504.0, 6.1035156e-05, 5.9604645e-08,
            1e-40, -1e-45, 3.4028235e38, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8]
    return np.array(vals, dtype=np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(1234)

    # ---- valid files and their expected fp32 values ----
    a = rng.standard_normal((2, 3)).astype(np.float32)
    b = np.float32(3.25)
    d = rng.standard_normal((4, 1, 2)).astype(np.float32)
    tensors = [f32("a", a), f32("b", np.array(b).reshape(())), f32("c", np.zeros((0, 5), np.float32)),
               f32("d", d), f32("specials", specials_f32())]
    write_tensors("good_f32.safetensors", tensors, metadata={"format": "pt", "note": "x"})
    write_tensors("good_f32.expect.safetensors", tensors)

    # bf16: random bit patterns (all classes: normals, subnormals, inf, nan) + specials
    bits = rng.integers(0, 65536, size=(64, 33), dtype=np.uint16)
    bits[0, :6] = [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x0001]
    widened = (bits.astype(np.uint32) << 16).view(np.float32)
    write_tensors("good_bf16.safetensors", [("w", "BF16", bits.reshape(-1), bits.shape)])
    write_tensors("good_bf16.expect.safetensors", [f32("w", widened)])

    # f16: every one of the 65536 bit patterns (normals, subnormals, +-0, inf, nan)
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    hf = h.view(np.float16).astype(np.float32)
    write_tensors("good_f16.safetensors", [("h", "F16", h.reshape(-1), h.shape)])
    write_tensors("good_f16.expect.safetensors", [f32("h", hf)])

    # mixed dtypes; header order differs from data order; odd byte counts
    m1 = rng.standard_normal((3, 3)).astype(np.float32)
    m2 = rng.integers(0, 65536, size=(5,), dtype=np.uint16)
    m2[m2 & 0x7F80 == 0x7F80] = 0x3F80  # no inf/nan needed here
    m3 = rng.standard_normal((7,)).astype(np.float16)
    mixed = [f32("z.first_in_header", m1), ("y.bf16", "BF16", m2, (5,)),
             ("x.f16", "F16", m3.view(np.uint16), (7,))]
    write_tensors("good_mixed.safetensors", mixed, order=[2, 1, 0])
    write_tensors("good_mixed.expect.safetensors",
                  [f32("z.first_in_header", m1),
                   f32("y.bf16", (m2.astype(np.uint32) << 16).view(np.float32)),
                   f32("x.f16", m3.astype(np.float32))])

    # no tensors at all
    write_raw("good_empty.safetensors", b"{}      ", b"")
    write_raw("good_empty.expect.safetensors", b"{}      ", b"")

    # ---- bad files: (file, substring the error must contain) ----
    bad = []

    def case(name, expect):
        bad.append({"file": name, "expect": expect})

    good_hdr = {"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    data16 = np.arange(4, dtype=np.float32).tobytes()

    with open(os.path.join(OUT, "bad_empty.safetensors"), "wb"):
        pass
    case("bad_empty.safetensors", "truncated")
    with open(os.path.join(OUT, "bad_short.safetensors"), "wb") as f:
        f.write(b"\x10\x00\x00")
    case("bad_short.safetensors", "truncated")
    write_raw("bad_header_longer_than_file.safetensors", good_hdr, data16, length_override=4096)
    case("bad_header_longer_than_file.safetensors", "larger than the rest of the file")
    write_raw("bad_huge_header.safetensors", good_hdr, data16, length_override=200 * 1024 * 1024)
    case("bad_huge_header.safetensors", "exceeds the limit")
    write_raw("bad_absurd_header.safetensors", good_hdr, data16, length_override=2 ** 64 - 8)
    case("bad_absurd_header.safetensors", "exceeds the limit")
    write_raw("bad_json.safetensors", b'{"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}  ', data16)
    case("bad_json.safetensors", "not valid JSON")
    write_raw("bad_not_brace.safetensors", b'[1, 2, 3]       ', b"")
    case("bad_not_brace.safetensors", "does not start with '{'")
    write_raw("bad_garbage_after.safetensors", header_bytes(good_hdr, pad_to=1) + b"xyz", data16)
    case("bad_garbage_after.safetensors", "unexpected bytes after the header")
    write_raw("bad_entry_not_object.safetensors", {"t": 5}, b"")
    case("bad_entry_not_object.safetensors", "\"t\": header entry is not a JSON object")
    write_raw("bad_overlap.safetensors",
              {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
               "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}},
              np.zeros(6, np.float32).tobytes())
    case("bad_overlap.safetensors", "overlap")
    write_raw("bad_outside.safetensors",
              {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
               "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}},
              np.zeros(6, np.float32).tobytes())
    case("bad_outside.safetensors", "\"b\": data_offsets [16, 32] reach past the end")
    # a valid file cut short inside the data section
    write_raw("bad_truncated_data.safetensors", good_hdr, data16[:10])
    case("bad_truncated_data.safetensors", "reach past the end")
    write_raw("bad_dtype_f64.safetensors", {"t": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}}, data16)
    case("bad_dtype_f64.safetensors", "\"t\": dtype F64 is not supported")
    write_raw("bad_dtype_unknown.safetensors", {"t": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 16]}}, data16)
    case("bad_dtype_unknown.safetensors", "\"t\": unknown dtype \"Q7\"")
    write_raw("bad_shape_bytes.safetensors", {"t": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}, data16)
    case("bad_shape_bytes.safetensors", "\"t\": shape [2, 3] of F32 needs 24 bytes")
    write_raw("bad_bf16_bytes.safetensors", {"t": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 16]}}, data16)
    case("bad_bf16_bytes.safetensors", "needs 8 bytes")
    write_raw("bad_gap.safetensors",
              {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
               "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, data16)
    case("bad_gap.safetensors", "belong to no tensor")
    write_raw("bad_trailing_data.safetensors", good_hdr, data16 + b"\0" * 8)
    case("bad_trailing_data.safetensors", "after the last tensor")
    write_raw("bad_begin_after_end.safetensors", {"t": {"dtype": "F32", "shape": [0], "data_offsets": [16, 8]}}, data16)
    case("bad_begin_after_end.safetensors", "end before they begin")
    write_raw("bad_negative_dim.safetensors", {"t": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, data16)
    case("bad_negative_dim.safetensors", "shape[0]")
    write_raw("bad_fraction_offset.safetensors", {"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16.5]}}, data16)
    case("bad_fraction_offset.safetensors", "data_offsets")
    write_raw("bad_missing_dtype.safetensors", {"t": {"shape": [4], "data_offsets": [0, 16]}}, data16)
    case("bad_missing_dtype.safetensors", "\"dtype\" missing")
    write_raw("bad_extra_key.safetensors",
              {"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16], "stride": [1]}}, data16)
    case("bad_extra_key.safetensors", "unexpected key \"stride\"")
    write_raw("bad_metadata.safetensors", {"__metadata__": {"n": 1}, **good_hdr}, data16)
    case("bad_metadata.safetensors", "__metadata__")
    write_raw("bad_duplicate.safetensors",
              b'{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
              b'"t":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', data16)
    case("bad_duplicate.safetensors", "\"t\" appears twice")
    write_raw("bad_too_many_dims.safetensors",
              {"t": {"dtype": "F32", "shape": [1] * 9 + [4], "data_offsets": [0, 16]}}, data16)
    case("bad_too_many_dims.safetensors", "dimensions")
    write_raw("bad_long_name.safetensors",
              {"n" * 300: {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, data16)
    case("bad_long_name.safetensors", "bytes long")

    with open(os.path.join(OUT, "bad_cases.json"), "w") as f:
        json.dump(bad, f, indent=1)
    print(f"wrote {len(bad)} bad files and 5 valid files into {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
