#!/usr/bin/env python3
"""HF transformers beside cvllm-server for PERFORMANCE.md's G4 shapes, on the
same card and model files: bf16, transformers' default attention (sdpa),
`generate` with greedy decoding and a fixed number of new tokens.

    hf_small.py --model DIR [--json FILE]

Two static batches, the nearest counterparts of the served workloads:
8 prompts of 32 in / 128 out (vLLM's OPT-125M anchor: seconds per batch,
ms per step), and 256 prompts of 562 in / 562 out (the mean of G4's
uniform 100-1024 in and out: output tokens per second). Host wall clock
around a synchronized GPU, after a warm-up."""
import argparse
import os
import sys

import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpu_serving"))
from hf_common import load_model, report, timed_generate  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--json")
    args = ap.parse_args()
    model = load_model(args.model)
    gen = torch.Generator().manual_seed(0)

    def run(batch, n_in, n_out):
        return timed_generate(model, gen, batch, n_in, n_out)

    run(8, 32, 8)
    batch8_s = min(run(8, 32, 128) for _ in range(3))
    batch256_s = run(256, 562, 562)
    res = {"device": torch.cuda.get_device_name(0), "transformers": transformers.__version__,
           "torch": torch.__version__,
           "batch8_s": round(batch8_s, 4), "batch8_step_ms": round(batch8_s / 128 * 1e3, 3),
           "batch256_s": round(batch256_s, 2),
           "batch256_output_tok_s": round(256 * 562 / batch256_s, 1)}
    report(res, args.json)


if __name__ == "__main__":
    main()
