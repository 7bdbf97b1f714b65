#!/usr/bin/env python3
"""HF `tokenizers` (Rust) on the same corpus as cvllm-bench-tokenizer.

Usage: RAYON_NUM_THREADS=1 bench_hf.py CORPUS NAME=DIR [NAME=DIR ...]

Each NUL-separated document is encoded with Tokenizer.encode(doc,
add_special_tokens=False), one call per document (not encode_batch), on one
thread. Prints rows in the same format as cvllm-bench-tokenizer, with the
same ids checksum (sum of (i + 1) * (id + 1) mod 2^64 over all ids in order)
so equal checksums mean HF and cvllm produced the same ids.
"""
import os
import sys
import time

import numpy as np
import tokenizers
from tokenizers import Tokenizer


def main():
    corpus_path, specs = sys.argv[1], sys.argv[2:]
    with open(corpus_path, "rb") as f:
        data = f.read()
    docs = [d.decode("utf-8") for d in data.split(b"\0")]
    print(f"tokenizers {tokenizers.__version__}, RAYON_NUM_THREADS="
          f"{os.environ.get('RAYON_NUM_THREADS')}", file=sys.stderr)
    for spec in specs:
        name, path = spec.split("=", 1)
        t0 = time.perf_counter()
        tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        t1 = time.perf_counter()
        all_ids = []
        enc = 0.0
        c0 = time.thread_time()
        for d in docs:
            a = time.perf_counter()
            ids = tok.encode(d, add_special_tokens=False).ids
            enc += time.perf_counter() - a
            all_ids.append(ids)
        cpu = time.thread_time() - c0
        flat = np.fromiter((i for ids in all_ids for i in ids), dtype=np.uint64)
        pos = np.arange(1, len(flat) + 1, dtype=np.uint64)
        checksum = int(np.sum(pos * (flat + np.uint64(1)), dtype=np.uint64))
        print(f"| HF tokenizers | {name} | {(t1 - t0) * 1e3:.0f} | {len(docs)} | {len(data)} | "
              f"{len(flat)} | {enc:.3f} | {len(data) / 1e6 / enc:.2f} | "
              f"{len(data) / 1e6 / cpu:.2f} | - | {checksum:016x} |", flush=True)


if __name__ == "__main__":
    main()
