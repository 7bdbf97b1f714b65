#!/usr/bin/env python3
"""Builds the tokenizer benchmark corpus: documents separated by NUL bytes,
at least 10 MB of mixed English prose, source code, multilingual text (CJK,
Korean, Arabic, Hebrew, Cyrillic, Indic, emoji) and numbers.

Usage: make_corpus.py SHARED_DIR OUT [MBYTES]

Sources are text files of a Debian 12 machine (the licenses under
/usr/share/common-licenses, Debian changelogs, the Python 3.11 standard
library, C headers under /usr/include) and the multilingual inputs of
SHARED_DIR/tokenizers/conformance/inputs.json. Everything is chosen with a
fixed seed from sorted file lists, so the same machine image gives the same
bytes; the sha256 printed at the end identifies the corpus in results.
"""
import glob
import gzip
import hashlib
import json
import random
import sys


def read(path):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def paragraphs(texts, min_len=40):
    out = []
    for t in texts:
        for p in t.split("\n\n"):
            if len(p) >= min_len:
                out.append(p)
    return out


def main():
    shared, out_path = sys.argv[1], sys.argv[2]
    target = int(float(sys.argv[3]) * 1e6) if len(sys.argv) > 3 else 12_000_000
    rng = random.Random(20261127)

    prose_files = sorted(glob.glob("/usr/share/common-licenses/*")) + \
        sorted(glob.glob("/usr/share/doc/*/changelog.Debian.gz"))[:400]
    code_files = sorted(glob.glob("/usr/lib/python3.11/*.py")) + \
        sorted(glob.glob("/usr/include/*.h"))
    prose = paragraphs(t for t in map(read, prose_files) if t)
    code = paragraphs((t for t in map(read, code_files) if t), 80)
    with open(f"{shared}/tokenizers/conformance/inputs.json", encoding="utf-8") as f:
        intl = [e["text"] for e in json.load(f)["inputs"]]
    intl += [
        "中文分词测试：你好，世界！我们今天去公园散步，然后在湖边喝茶。",
        "日本語のテキストとカタカナ、ひらがなを混ぜた文章です。東京は晴れ。",
        "한국어 텍스트입니다. 오늘은 날씨가 좋네요.",
        "مرحبا بالعالم، هذا نص عربي للاختبار.",
        "שלום עולם, זה טקסט בעברית.",
        "Привет, мир! Это текст на русском языке.",
        "नमस्ते दुनिया, यह हिंदी में लिखा गया है।",
        "emoji 👍🏽 👨‍👩‍👧‍👦 🇯🇵 😀😀😀 ✨🎉🔥 and more 🚀",
    ]
    cjk_chars = sorted({c for t in intl for c in t if ord(c) >= 0x3000})

    def number_line():
        kinds = [
            lambda: f"{rng.randint(0, 10**9):,}",
            lambda: f"{rng.random() * 1000:.4f}",
            lambda: f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            lambda: f"0x{rng.getrandbits(32):08x}",
            lambda: str(rng.randint(0, 99999)),
        ]
        return " ".join(rng.choice(kinds)() for _ in range(rng.randint(4, 16)))

    def cjk_sentence():
        return "".join(rng.choice(cjk_chars) for _ in range(rng.randint(8, 40))) + "。"

    docs, total = [], 0
    while total < target:
        parts = []
        size = rng.randint(1500, 8000)
        n = 0
        while n < size:
            r = rng.random()
            if r < 0.45:
                p = rng.choice(prose)
            elif r < 0.78:
                p = rng.choice(code)
            elif r < 0.90:
                p = rng.choice(intl)
            elif r < 0.95:
                p = cjk_sentence()
            else:
                p = number_line()
            parts.append(p)
            n += len(p.encode("utf-8"))
        doc = "\n\n".join(parts).replace("\0", "")
        docs.append(doc)
        total += len(doc.encode("utf-8"))
    data = "\0".join(docs).encode("utf-8")
    with open(out_path, "wb") as f:
        f.write(data)
    print(f"{out_path}: {len(docs)} documents, {len(data)} bytes, "
          f"sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
