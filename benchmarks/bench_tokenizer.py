#!/usr/bin/env python3
"""benchmarks/bench_tokenizer.py: encoding speed of vlmtrain's tokenizer against tiktoken.

Usage: python3 benchmarks/bench_tokenizer.py [--build build] [--mb 4] [--merges 10000]
                                             [--reps 7] [--venv BUILD/tokenizer-venv]

Trains a byte-level BPE ranks file (tests/tokenizer/tkdata.py, the test's trainer),
generates MB of mixed multilingual text (English, code, CJK, Arabic, emoji, numbers,
whitespace runs), then encodes it single-threaded with benchmarks/bench_tokenizer.c
(io/tokenizer.c) and with tiktoken's encode_ordinary (one thread), checks the ids are
identical, and prints MB/s of each (MB = 10^6 input bytes, best of REPS) and the ratio.
tiktoken comes from PyPI into a venv in the build tree (the one the test makes)."""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "tokenizer"))
import tkdata  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
ap.add_argument("--mb", type=float, default=4.0, help="MB of text to encode")
ap.add_argument("--merges", type=int, default=10000, help="BPE merges in the ranks file")
ap.add_argument("--reps", type=int, default=7)
ap.add_argument("--venv", default=None, help="default: BUILD/tokenizer-venv")
args = ap.parse_args()
build = os.path.abspath(args.build)
venv = args.venv or os.path.join(build, "tokenizer-venv")

if os.environ.get("VLM_TOKENIZER_VENV") != venv:
    py = tkdata.ensure_venv(venv)
    os.environ["VLM_TOKENIZER_VENV"] = venv
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])

os.environ["TIKTOKEN_CACHE_DIR"] = ""  # tiktoken.load would cache the ranks file by path
import tiktoken  # noqa: E402

work = os.path.join(build, "bench-tokenizer")
os.makedirs(work, exist_ok=True)
prog = os.path.join(build, "benchmarks", "bench_tokenizer")
if not os.path.exists(prog):
    sys.exit(f"{prog} not found: build first (cmake --build {build})")

t0 = time.time()
ranks = tkdata.train_bpe(tkdata.multilingual_text(1, 500_000), args.merges)
ranks_path = os.path.join(work, "bench.tiktoken")
tkdata.write_ranks(ranks_path, ranks)
sample = tkdata.multilingual_text(3, 200_000)
bytes_per_char = len(sample.encode()) / len(sample)
text = tkdata.multilingual_text(3, int(args.mb * 1e6 / bytes_per_char))
data = text.encode()
text_path = os.path.join(work, "bench.txt")
with open(text_path, "wb") as f:
    f.write(data)
print(f"ranks: {len(ranks)} ({len(ranks) - 256} merges); text: {len(data) / 1e6:.2f} MB, "
      f"{len(text)} characters; setup {time.time() - t0:.1f} s")

ids_path = os.path.join(work, "bench.ids")
enc = tiktoken.Encoding("bench", pat_str=tkdata.QWEN_PATTERN, mergeable_ranks=ranks,
                        special_tokens=tkdata.qwen_specials(len(ranks)))
# Alternate the two, one encode each per round, so that a busy machine slows both alike.
c_times, tk_times = [], []
for rep in range(args.reps):
    r = subprocess.run([prog, ranks_path, text_path, "1"] + ([ids_path] if rep == 0 else []),
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench_tokenizer failed:\n{r.stderr}")
    c_line = r.stdout.strip().splitlines()[-1]
    c_times.append(float(c_line.split("best ")[1].split(" s")[0]))
    a = time.perf_counter()
    tk_ids = enc.encode_ordinary(text)
    tk_times.append(time.perf_counter() - a)
with open(ids_path) as f:
    c_ids = [int(x) for x in f.read().split()]
mb = len(data) / 1e6
for name, ts, n in (("C (io/tokenizer.c)", c_times, len(c_ids)),
                    (f"tiktoken {tiktoken.__version__}", tk_times, len(tk_ids))):
    ts = sorted(ts)
    print(f"{name}: {mb:.2f} MB, {n} ids; best {ts[0]:.4f} s = {mb / ts[0]:.2f} MB/s, "
          f"median {ts[len(ts) // 2]:.4f} s = {mb / ts[len(ts) // 2]:.2f} MB/s")
same = c_ids == tk_ids
print(f"ids identical: {same}")
c_mbs, tk_mbs = mb / min(c_times), mb / min(tk_times)
print(f"speed (best of {args.reps}, single thread): C {c_mbs:.2f} MB/s, "
      f"tiktoken {tk_mbs:.2f} MB/s, ratio C/tiktoken {c_mbs / tk_mbs:.2f}")
sys.exit(0 if same else 1)
