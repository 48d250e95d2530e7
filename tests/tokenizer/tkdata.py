"""tests/tokenizer/tkdata.py: what the tokenizer test and benchmark share.

- ensure_venv(DIR): a virtual environment (Debian's python3 with its site packages)
  with `tiktoken` from PyPI, created once and reused; raises if pip fails.
- multilingual_text(seed, n_chars): generated text in many scripts (English with
  contractions in both cases, German, Chinese, Japanese, Korean, Arabic, Russian,
  Greek, Hindi, Thai, emoji, numbers, code, whitespace runs, CRLF, rare spaces).
- train_bpe(text, n_merges): a small byte-level BPE trainer (pre-tokenised with
  Qwen's pattern); write_ranks(path, ranks): tiktoken's "BASE64 RANK" format.
- QWEN_PATTERN and qwen_specials(n_ranks): the pattern and the special tokens with
  ids following the ranks, as in Qwen's tokenization_qwen.py.
Nothing here is vlmtrain code; the trainer only has to make a plausible ranks file."""
import base64
import fcntl
import heapq
import os
import random
import subprocess
import sys

QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def qwen_specials(n_ranks):
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    names += [f"<|extra_{i}|>" for i in range(205)]
    names += ["<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>",
              "<imgpad>"]
    return {s: n_ranks + i for i, s in enumerate(names)}


def ensure_venv(venv):
    """Python of a venv under `venv` that imports tiktoken; made once (locked)."""
    py = os.path.join(venv, "bin", "python")
    os.makedirs(os.path.dirname(os.path.abspath(venv)), exist_ok=True)
    with open(os.path.abspath(venv) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ok = os.path.exists(py) and subprocess.run(
            [py, "-c", "import tiktoken, regex"], capture_output=True).returncode == 0
        if not ok:
            r = subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"python3 -m venv {venv} failed (is python3-venv installed?):\n"
                                   + r.stdout + r.stderr)
            r = subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check",
                                "--quiet", "tiktoken"], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError("pip install tiktoken failed:\n" + r.stdout + r.stderr)
    return py


def in_venv_with_tiktoken():
    try:
        import tiktoken  # noqa: F401
        import regex  # noqa: F401
        return True
    except ImportError:
        return False


# ---- text ----

EN = ("the of and to in is that it for was on are as with his they at be this have from or one "
      "had by word but not what all were we when your can said there use an each which she do how "
      "their if will up other about out many then them these so some her would make like him into "
      "time has look two more write go see number no way could people my than first water been "
      "call who oil its now find long down day did get come made may part over new sound take only "
      "little work know place year live me back give most very after thing our just name good "
      "sentence man think say great where help through much before line right too mean old any "
      "same tell boy follow came want show also around form three small set put end does another "
      "well large must big even such because turn here why ask went men read need land different "
      "home us move try kind hand picture again change off play spell air away animal house point "
      "tokenizer vision language model training gradient window adapter resampler").split()
EN_CONTR = ["it's", "IT'S", "don't", "DON'T", "Don'T", "we're", "WE'RE", "We'Re", "I'm", "I'M",
            "you'll", "YOU'LL", "they've", "THEY'VE", "she'd", "SHE'D", "o'clock", "'s", "'T",
            "rock'n'roll", "can't", "CAN'T", "isn't", "'ll", "'Ll", "'ve", "'D"]
DE = ("Größe Übermäßig Straße Mädchen Bäume Frühstück schön Grüße Fußgängerüberweg Käse Öl "
      "Ärger müssen können natürlich über für Tür Häuser Bücher Hände Mütze Gemütlichkeit "
      "Schlüssel Brötchen Weißwurst äußerst Geschwindigkeitsbegrenzung Kraftfahrzeug").split()
ZH = ("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家"
      "学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见"
      "经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话"
      "模型训练视觉语言分词器数据图像窗口适配器梯度")
ZH_PUNCT = "，。！？；：「」《》（）、"
HIRA = [chr(c) for c in range(0x3042, 0x3094)]
KATA = [chr(c) for c in range(0x30A2, 0x30F4)]
KANJI = "日本語東京都大阪京都学校先生時間電車会社仕事友達"
KO_SYL = "가나다라마바사아자차카타파하고노도로모보소오조초코토포호구누두루무부수우주한국어안녕하세요감사합니다사랑해요학교선생님컴퓨터"
AR = [chr(c) for c in range(0x0627, 0x064B)]
AR_WORDS = ["مرحبا", "العالم", "كتاب", "مدرسة", "السلام", "عليكم", "شكرا"]
RU = [chr(c) for c in range(0x0430, 0x0450)]
RU_WORDS = ["Привет", "мир", "язык", "модель", "обучение", "Москва", "спасибо"]
EL_WORDS = ["Καλημέρα", "κόσμε", "γλώσσα", "Αθήνα", "ευχαριστώ"]
HI_WORDS = ["नमस्ते", "दुनिया", "भाषा", "मॉडल", "प्रशिक्षण", "धन्यवाद"]
TH_WORDS = ["สวัสดี", "ภาษา", "ขอบคุณ", "กรุงเทพ"]
EMOJI = ["😀", "😂", "👍", "👍🏽", "❤️", "🎉", "🚀", "👨‍👩‍👧‍👦", "🇩🇪", "🇯🇵", "🏳️‍🌈", "🤖", "✨",
         "🔥", "🙏🏻", "🧑‍💻"]
NUMS = ["0", "7", "42", "3.14159", "2024-06-30", "1,000,000", "١٢٣", "１２３", "x²", "Ⅻ",
        "½", "0x1F", "1e-9", "+49 30 1234567", "১২৩", "٣٫١٤"]
CODE = [
    "def encode(self, text):\n    return [self.rank[b] for b in text]\n",
    "for (int i = 0; i < n; i++) {\n\tsum += a[i] * b[i];\n}\n",
    "if x != None and y >= 0:\n        print(f\"{x=} {y!r}\")  # comment\n",
    "#include <stdio.h>\r\nint main(void) { return 0; }\r\n",
    "const re = /[a-z]+/gi; let s = `${a}${b}`;\n",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%smith%';\n",
    "    \n\t\t\n  \r\n",
    "https://example.com/path?q=tokenizer&lang=de#frag user@example.org\n",
]
SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "  \n\n", "\u00a0", "\u3000",
          "\u2028", "\u0085", "\u200b", "\u2003", " \t ", "\n   \n", "\r\n\r\n"]
PUNCT = [".", ",", "!", "?", "...", "!!!", "?!", " - ", " — ", ";", ":", "(", ")", "\"", "'",
         "«", "»", "***", "---", "==>", "@#$%", "&", "/", "\\", "[]", "{}", "<", ">", "<|", "|>"]


def _word(rng, kind):
    if kind == "en":
        w = rng.choice(EN)
        r = rng.random()
        return w.capitalize() if r < 0.15 else w.upper() if r < 0.2 else w
    if kind == "contr":
        return rng.choice(EN_CONTR)
    if kind == "de":
        return rng.choice(DE)
    if kind == "zh":
        return "".join(rng.choice(ZH) for _ in range(rng.randint(1, 12))) + rng.choice(ZH_PUNCT)
    if kind == "ja":
        pool = HIRA if rng.random() < 0.5 else KATA
        return ("".join(rng.choice(pool) for _ in range(rng.randint(1, 6)))
                + "".join(rng.choice(KANJI) for _ in range(rng.randint(0, 3))) + "。")
    if kind == "ko":
        return "".join(rng.choice(KO_SYL) for _ in range(rng.randint(1, 5)))
    if kind == "ar":
        return rng.choice(AR_WORDS) if rng.random() < 0.5 else "".join(
            rng.choice(AR) for _ in range(rng.randint(2, 7)))
    if kind == "ru":
        return rng.choice(RU_WORDS) if rng.random() < 0.5 else "".join(
            rng.choice(RU) for _ in range(rng.randint(2, 9)))
    if kind == "el":
        return rng.choice(EL_WORDS)
    if kind == "hi":
        return rng.choice(HI_WORDS)
    if kind == "th":
        return rng.choice(TH_WORDS)
    if kind == "emoji":
        return "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 3)))
    if kind == "num":
        if rng.random() < 0.5:
            return rng.choice(NUMS)
        return str(rng.randint(0, 10 ** rng.randint(1, 9)))
    if kind == "code":
        return rng.choice(CODE)
    raise ValueError(kind)


KINDS = ["en"] * 30 + ["contr"] * 4 + ["de"] * 6 + ["zh"] * 8 + ["ja"] * 4 + ["ko"] * 4 + \
        ["ar"] * 3 + ["ru"] * 3 + ["el", "hi", "th"] + ["emoji"] * 3 + ["num"] * 5 + ["code"] * 2


def multilingual_text(seed, n_chars):
    rng = random.Random(seed)
    out, size = [], 0
    while size < n_chars:
        w = _word(rng, rng.choice(KINDS))
        r = rng.random()
        sep = rng.choice(SPACES) if r < 0.12 else rng.choice(PUNCT) + " " if r < 0.25 else " "
        out.append(w + sep)
        size += len(w) + len(sep)
    return "".join(out)


# ---- BPE training ----

def bytes_order():
    """A permutation of the 256 bytes: printable ones first (as GPT-2's table), the rest
    after, so single-byte ranks are not simply the byte values."""
    first = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    return first + [b for b in range(256) if b not in first]


def train_bpe(text, n_merges):
    """Byte-level BPE: returns {token bytes: rank}, 256 single bytes then the merges."""
    import regex
    counts = {}
    for piece in regex.findall(QWEN_PATTERN, text):
        counts[piece] = counts.get(piece, 0) + 1
    words = [[bytes([b]) for b in p.encode("utf-8")] for p in counts]
    freq = list(counts.values())
    pair_count, where = {}, {}
    for wi, w in enumerate(words):
        for a, b in zip(w, w[1:]):
            pair_count[(a, b)] = pair_count.get((a, b), 0) + freq[wi]
            where.setdefault((a, b), set()).add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    ranks = {bytes([b]): i for i, b in enumerate(bytes_order())}
    merges = 0
    while heap and merges < n_merges:
        c, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -c:
            continue  # stale: a newer entry holds the current count
        if -c < 2:
            break
        new = pair[0] + pair[1]
        if new not in ranks:
            ranks[new] = len(ranks)
            merges += 1
        touched = set()
        for wi in list(where.get(pair, ())):
            w, f = words[wi], freq[wi]
            for a, b in zip(w, w[1:]):
                pair_count[(a, b)] -= f
                touched.add((a, b))
                where[(a, b)].discard(wi)
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == pair[0] and w[i + 1] == pair[1]:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            for a, b in zip(out, out[1:]):
                pair_count[(a, b)] = pair_count.get((a, b), 0) + f
                touched.add((a, b))
                where.setdefault((a, b), set()).add(wi)
        for p in touched:
            if pair_count.get(p, 0) >= 2:
                heapq.heappush(heap, (-pair_count[p], p))
    return ranks


def write_ranks(path, ranks, order=None, newline="\n"):
    items = sorted(ranks.items(), key=lambda kv: kv[1]) if order is None else order
    with open(path, "wb") as f:
        for tok, r in items:
            f.write(base64.b64encode(tok) + b" " + str(r).encode() + newline.encode())


if __name__ == "__main__":
    print(multilingual_text(int(sys.argv[1]) if len(sys.argv) > 1 else 1, 2000))
