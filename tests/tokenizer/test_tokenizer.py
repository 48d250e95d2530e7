#!/usr/bin/env python3
"""tests/tokenizer/test_tokenizer.py: io/tokenizer.c against the `tiktoken` package.

Usage: test_tokenizer.py TOKENIZER_TOOL VENV_DIR   (run in VLM_TEST_WORK)

Makes (once) a venv with tiktoken from PyPI and re-runs itself in it; a failing pip
install fails the test. Trains a byte-level BPE (thousands of merges) on generated
multilingual text, adds a few whole-word tokens that no merge reaches, writes the
ranks in tiktoken's format and builds tiktoken.Encoding with Qwen's pattern and
special tokens. Then, on different text: ids from the C tokenizer equal tiktoken's
encode_ordinary and encode(allowed_special="all") ids (whole text, lines, random
substrings, edge cases, long pieces), decode(encode(x)) == x, C decodes tiktoken's
ids, invalid UTF-8 is rejected with its offset, and bad ranks files are rejected with
messages naming the file and line. Ends with "N passed, M failed"."""
import os
import random
import struct
import subprocess
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tkdata  # noqa: E402

TOOL, VENV = sys.argv[1], sys.argv[2]

if os.environ.get("VLM_TOKENIZER_VENV") != VENV:
    try:
        py = tkdata.ensure_venv(VENV)
    except Exception as e:  # pip or venv failed: the test fails, it is not skipped
        print(f"FAIL venv with tiktoken from PyPI: {e}")
        print("0 passed, 1 failed")
        sys.exit(1)
    os.environ["VLM_TOKENIZER_VENV"] = VENV
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])

# tiktoken.load caches files by path (in /tmp/data-gym-cache) unless this is empty: the
# ranks file is rewritten on every run, so a cached copy would be stale.
os.environ["TIKTOKEN_CACHE_DIR"] = ""
import tiktoken  # noqa: E402
import tiktoken.load  # noqa: E402

passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS {name}")
    else:
        failed += 1
        print(f"FAIL {name}" + (f": {detail}" if detail else ""))
    sys.stdout.flush()


WORK = os.path.join(os.getcwd(), "tokenizer")
os.makedirs(WORK, exist_ok=True)
ENV = dict(os.environ)
# The tool does not start MPI; leak checking stays on under the sanitizer build.


def tool(*args):
    return subprocess.run([TOOL, *args], capture_output=True, text=True, env=ENV, timeout=600)


def write_cases(path, texts):
    with open(path, "wb") as f:
        for t in texts:
            b = t if isinstance(t, bytes) else t.encode("utf-8")
            f.write(struct.pack("<I", len(b)) + b)


def read_records(path):
    out = []
    with open(path, "rb") as f:
        data = f.read()
    p = 0
    while p < len(data):
        (n,) = struct.unpack_from("<I", data, p)
        out.append(data[p + 4:p + 4 + n])
        p += 4 + n
    return out


def c_encode(ranks, texts, special=False, tag="cases"):
    cases = os.path.join(WORK, tag + ".bin")
    out = os.path.join(WORK, tag + ".ids")
    write_cases(cases, texts)
    r = tool("encode-special" if special else "encode", ranks, cases, out)
    if r.returncode != 0:
        raise RuntimeError(f"tokenizer_tool failed: {r.stderr}")
    ids = []
    with open(out) as f:
        for line in f:
            line = line.rstrip("\n")
            ids.append(line if line.startswith("E ") else [int(x) for x in line.split()])
    return ids, read_records(out + ".dec")


def compare(name, ranks, enc, texts, special=False, tag="cases"):
    """C ids == tiktoken ids for every text; returns (ok, C ids, C decodes)."""
    got, dec = c_encode(ranks, texts, special, tag)
    bad = []
    for i, t in enumerate(texts):
        want = enc.encode(t, allowed_special="all") if special else enc.encode_ordinary(t)
        if got[i] != want:
            bad.append(i)
    detail = ""
    if bad:
        i = bad[0]
        want = enc.encode(texts[i], allowed_special="all") if special else \
            enc.encode_ordinary(texts[i])
        g = got[i]
        k = next((j for j in range(min(len(g), len(want))) if g[j] != want[j]),
                 min(len(g), len(want))) if isinstance(g, list) else 0
        detail = (f"{len(bad)} of {len(texts)} differ; first: case {i} {texts[i][:80]!r}, "
                  f"at id {k}: C {g[k:k + 8] if isinstance(g, list) else g} "
                  f"tiktoken {want[k:k + 8]} "
                  f"({[enc.decode_single_token_bytes(x) for x in want[k:k + 4]]})")
    check(f"{name}: {len(texts)} texts, {sum(len(g) for g in got if isinstance(g, list))} ids "
          "identical", not bad, detail)
    return got, dec


# ---- 1. the ranks file ----
print(f"tiktoken {tiktoken.__version__}, venv {VENV}")
train_text = tkdata.multilingual_text(1, 300_000)
ranks = tkdata.train_bpe(train_text, 7000)
n_merges = len(ranks) - 256
# Whole words as tokens that no merge builds: tiktoken emits a piece that is a token
# as that token before merging, and so must the C side.
WHOLE = [" Donaudampfschifffahrtsgesellschaftskapitän", " internationalization", "東京特許許可局",
         " 안녕히가세요", " supercalifragilistic", "Pneumonoultramicroscopic",
         "\u0627\u0644\u062d\u0648\u0627\u0633\u064a\u0628"]
for w in WHOLE:
    b = w.encode()
    if b not in ranks:
        ranks[b] = len(ranks)
RANKS = os.path.join(WORK, "qwen_test.tiktoken")
tkdata.write_ranks(RANKS, ranks)
loaded = tiktoken.load.load_tiktoken_bpe(RANKS)
specials = tkdata.qwen_specials(len(ranks))
enc = tiktoken.Encoding("qwen-test", pat_str=tkdata.QWEN_PATTERN, mergeable_ranks=loaded,
                        special_tokens=specials)
check(f"trained ranks file: {len(ranks)} ranks ({n_merges} merges, {len(WHOLE)} whole words), "
      "read back by tiktoken.load.load_tiktoken_bpe", loaded == ranks and n_merges >= 5000)

# ---- 2. loading in C ----
r = tool("load", RANKS)
want = {"n_vocab": len(ranks) + len(specials)}
got = {}
pcre2_unicode = ""
for line in r.stdout.splitlines():
    f = line.split()
    if f[0] == "n_vocab":
        got["n_vocab"] = int(f[1])
    elif f[0] == "unicode":
        pcre2_unicode = f[1]
    else:
        got[f[1]] = int(f[2])
want.update({s: specials.get(s, -1) for s in got if s != "n_vocab"})
check("C loads it: n_vocab = ranks + 217 and every special id as tiktoken's "
      f"(<|endoftext|> {specials['<|endoftext|>']}, <imgpad> {specials['<imgpad>']})",
      r.returncode == 0 and got == want and len(got) > 10, r.stderr + str(got))

# ---- 3. ordinary encoding ----
# each whole word once as a pre-token of its own (after a newline)
test_text = tkdata.multilingual_text(2, 60_000) + "\n" + "\n".join(WHOLE) + "\n end  "
lines = test_text.splitlines(keepends=True)
rng = random.Random(5)
subs = []
for _ in range(3000):
    a = rng.randrange(len(test_text))
    subs.append(test_text[a:a + rng.choice([1, 2, 3, 5, 8, 20, 60, 200])])
all_ids, all_dec = compare("encode_ordinary, whole test text", RANKS, enc, [test_text], tag="whole")
compare("encode_ordinary, lines and random substrings", RANKS, enc, lines + subs, tag="subs")

EDGE = [
    "", " ", "  ", "\n", "a", "hello world", "  leading", "trailing  ", "trailing \n",
    "x  \n  y", "\r\n\r\n", "a\r\n b", "\t\tindent\n\t", "don't DON'T Don'T 's 'S ''s foo's",
    "we'LL'VE'RE'M'D'T", "x'ſ x'K", "123456 1 2 3 3.14 ١٢٣ x²³ Ⅻ ½ ১২৩", "\u0085", "a\u0085b",
    "a \u0085 b", "a  \u0085\u0085b", "a\u180eb", " \u180e\u180e1", "x \u180e y",
    "\u00a0\u00a0x", "x\u3000\u3000y", "x\u2028\u2029y",
    "e\u0301\u0301x", "नमस्ते दुनिया", "👨‍👩‍👧‍👦 🇩🇪🇯🇵 👍🏽", "!!!??? !!!\n\n...\r\n",
    "<|endoftext|>", "<|endoftext|> <|im_start|>user\nhi<|im_end|>\n", "<img>a.jpg</img>",
    "\x00", "a\x00b", "ab\x1c\x1dc", "a\u200bb", "ǅx ΣΑΣ σας İstanbul ß ẞ ﬁ K Å", "   \t\n",
    "x \n\n\n", "\r", "\r\r\n\n", "'", "'s", " 's", "\n's", "A'B", "١٢٣٤٥", "٣٫١٤", "🙂" * 3,
    "مرحبا بالعالم", "Привет, мир!", "中文，测试。", "日本語のテキスト", "한국어 텍스트",
    "a" + " " * 5 + "b", " " * 5, "\n" * 4 + " x", "    def f():\n        return 1\n",
]
compare("encode_ordinary, edge cases (whitespace, contractions, U+0085, U+180E, marks, "
        "specials as text)", RANKS, enc, EDGE, tag="edge")

LONG = ["a" * 5000, "ab" * 3000, "".join(rng.choice("abcdefghij") for _ in range(4000)),
        "".join(rng.choice(tkdata.ZH) for _ in range(1500)), " " * 10000, "\n" * 5000,
        " \n" * 1000, "1" * 1000, "!" * 5000, "🎉" * 500, "\t \t  \n" * 300,
        " " * 3000 + "x", "ü" * 3000, " Donaudampfschifffahrtsgesellschaftskapitän" * 50,
        test_text[:20000] * 5]
compare("encode_ordinary, long pieces (heap merge) and long runs", RANKS, enc, LONG, tag="long")

used_whole = set(x for ids in all_ids for x in ids) & set(ranks[w.encode()] for w in WHOLE)
check(f"whole-word tokens that no merge builds were emitted ({len(used_whole)} of {len(WHOLE)})",
      len(used_whole) == len(WHOLE))

# Every code point in three contexts (letter run, whitespace/punctuation run, before a
# contraction), with all byte pairs as tokens so that piece boundaries show in the ids.
# Characters assigned after PCRE2's Unicode version may differ (docs/formats.md), so this
# runs over the characters assigned in Python's Unicode tables when they are PCRE2's.
if unicodedata.unidata_version == pcre2_unicode:
    probe = {bytes([b]): i for i, b in enumerate(tkdata.bytes_order())}
    pairs = [bytes([a, b]) for a in range(256) for b in range(256)]
    random.Random(3).shuffle(pairs)
    for p in pairs:
        probe[p] = len(probe)
    PROBE = os.path.join(WORK, "probe_pairs.tiktoken")
    tkdata.write_ranks(PROBE, probe)
    penc = tiktoken.Encoding("probe", pat_str=tkdata.QWEN_PATTERN, mergeable_ranks=probe,
                             special_tokens=tkdata.qwen_specials(len(probe)))
    cps = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000
           and unicodedata.category(chr(c)) != "Cn"]
    texts = [t for ch in cps for t in ("a" + ch + "a", " " + ch + ch + "1", ch + "'s")]
    got_cp, _ = c_encode(PROBE, texts, tag="codepoints")
    bad = [t for t, g in zip(texts, got_cp) if g != penc.encode_ordinary(t)]
    check(f"every code point assigned in Unicode {pcre2_unicode} ({len(cps)}), in 3 contexts: "
          "same pieces as tiktoken", not bad,
          f"{len(bad)} differ, e.g. {[hex(ord(c)) for c in bad[0]] if bad else ''}")
else:
    print(f"NOTE: Python's Unicode {unicodedata.unidata_version} is not PCRE2's "
          f"{pcre2_unicode!r}: the all-code-points check is not run")

# ---- 4. special tokens ----
sp_names = list(specials)
sp_texts = []
for i in range(300):
    parts = []
    for _ in range(rng.randint(1, 6)):
        a = rng.randrange(len(test_text))
        parts.append(test_text[a:a + rng.randint(0, 40)])
        parts.append(rng.choice(sp_names))
    sp_texts.append("".join(parts))
sp_texts += ["<|endoftext|>", "<|endoftext|><|endoftext|>", "a<|im_start|>system\nx<|im_end|>b",
             "<img>pic.png</img><imgpad><imgpad>", "<|extra_205|> <|extra_0|> <|extra_204|>",
             "<|endoftext|", "<<|endoftext|>>", "<ref>a</ref><box>(1,2),(3,4)</box><quad></quad>",
             "  <|endoftext|>  \n", "x\n\n<|im_end|>\n\n", "<im_start>", "<img", "</img "]
sp_ids, sp_dec = compare("encode(allowed_special='all') with special tokens in the text",
                         RANKS, enc, sp_texts, special=True, tag="special")

# ---- 5. decoding ----
texts_rt = [test_text] + lines + subs + EDGE + LONG
_, dec = c_encode(RANKS, texts_rt, tag="roundtrip")
bad = [i for i, t in enumerate(texts_rt) if dec[i] != t.encode()]
bad += [i for i, t in enumerate(sp_texts) if sp_dec[i] != t.encode()]
check(f"decode(encode(x)) == x in C for {len(texts_rt) + len(sp_texts)} texts", not bad,
      f"first: {bad[:1]}")

idfile = os.path.join(WORK, "tiktoken.ids")
want_ids = [enc.encode(t, allowed_special="all") for t in sp_texts] + [enc.encode_ordinary(t)
                                                                      for t in EDGE]
with open(idfile, "w") as f:
    for ids in want_ids:
        f.write(" ".join(map(str, ids)) + "\n")
r = tool("decode", RANKS, idfile, os.path.join(WORK, "tiktoken.dec"))
dec = read_records(os.path.join(WORK, "tiktoken.dec")) if r.returncode == 0 else []
check("C decodes tiktoken's ids (specials included) to tiktoken's bytes",
      r.returncode == 0 and dec == [enc.decode_bytes(ids) for ids in want_ids], r.stderr)

# ---- 6. the same ranks, lines shuffled and CRLF ----
items = sorted(ranks.items(), key=lambda kv: kv[1])
random.Random(9).shuffle(items)
SHUF = os.path.join(WORK, "shuffled_crlf.tiktoken")
tkdata.write_ranks(SHUF, ranks, order=items, newline="\r\n")
got_shuf, _ = c_encode(SHUF, lines[:200], tag="shuf")
check("ranks file with shuffled lines and CRLF endings gives the same ids",
      got_shuf == [enc.encode_ordinary(t) for t in lines[:200]])

# ---- 7. invalid UTF-8 ----
INVALID = [(b"abc\x80def", 3), (b"ok \xe4\xbd", 3), (b"\xc0\xafx", 0), (b"xx\xed\xa0\x80", 2),
           (b"\xf4\x90\x80\x80", 0), (b"\xff", 0), (b"caf\xc3", 3), (b"good \xe2\x82\xac \xe2(", 9)]
got_inv, _ = c_encode(RANKS, [b for b, _ in INVALID], tag="invalid")
ok = all(isinstance(g, str) and "UTF-8" in g and f"offset {off}" in g
         for g, (_, off) in zip(got_inv, INVALID))
check("invalid UTF-8 (stray continuation, truncated, overlong, surrogate, > U+10FFFF) rejected "
      "naming the byte offset", ok, str(got_inv))

# ---- 8. interface checks in C ----
r = tool("api", RANKS)
print(r.stdout, end="")
check("C interface: appending, empty text, errors leave the count, bad ids, NULLs",
      r.returncode == 0, r.stderr)

# ---- 9. bad ranks files ----
small = {bytes([b]): i for i, b in enumerate(tkdata.bytes_order())}
for tok in sorted(ranks, key=ranks.get)[256:700]:
    small[tok] = len(small)
good_lines = [tkdata.base64.b64encode(t).decode() + " " + str(r)
              for t, r in sorted(small.items(), key=lambda kv: kv[1])]


def bad_file(name, lines_, expect, raw=None):
    path = os.path.join(WORK, f"bad_{name.replace(' ', '_')}.tiktoken")
    with open(path, "wb") as f:
        f.write(raw if raw is not None else ("\n".join(lines_) + "\n").encode())
    r = tool("load", path)
    msg = r.stderr.strip().splitlines()[0] if r.stderr.strip() else ""
    ok = r.returncode != 0 and path in msg and all(e in msg for e in expect)
    check(f"bad ranks file ({name}): {msg.replace(WORK + '/', '')}", ok, r.stderr + r.stdout)


L = list(good_lines)
L[299] = "@@@@ 299"
bad_file("base64 character", L, ["line 300", "base64", "'@'"])
L = list(good_lines)
L[299] = "QUJ 299"
bad_file("base64 length", L, ["line 300", "base64"])
L = list(good_lines)
L[300] = L[300].split()[0] + " 299"
bad_file("duplicate rank", L, ["line 301", "duplicate rank 299", "line 300"])
L = list(good_lines)
L[-1] = L[-1].split()[0] + f" {len(L) + 5}"
bad_file("rank gap", L, [f"line {len(L)}", "out of range"])
L = list(good_lines)
L[400] = L[399].split()[0] + " 400"
bad_file("duplicate token", L, ["line 401", "line 400", "same bytes"])
missing = small[b"A"]
L = [l for i, l in enumerate(good_lines) if i != missing]
L = [l.split()[0] + " " + str(i) for i, l in enumerate(L)]
bad_file("missing byte", L, ["0x41", "single byte"])
L = list(good_lines)
L[10] = L[10].split()[0] + " 1O"
bad_file("rank not a number", L, ["line 11", "not a non-negative integer"])
L = list(good_lines)
L[20] = L[20].split()[0]
bad_file("missing rank field", L, ["line 21", "BASE64 RANK"])
bad_file("empty", None, ["no ranks"], raw=b"\n\n")
r = tool("load", os.path.join(WORK, "no_such.tiktoken"))
check("missing ranks file: error naming it", r.returncode != 0 and "no_such.tiktoken" in r.stderr,
      r.stderr)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
