#!/usr/bin/env python3
"""HF transformers beside cvllm-server on the same card and model files
(PERFORMANCE.md's baseline): bf16, transformers' default attention (sdpa),
`generate` with greedy decoding and a fixed number of new tokens.

    hf_serving.py --model DIR [--json FILE]

Two shapes: G2 (batch 1, 512 in / 256 out: TTFT and TPOT) and a batch of
64 prompts of 1024 in / 128 out at once (total tokens per second, the
nearest static-batch counterpart of the serving runs). Host wall clock
around a synchronized GPU, after a warm-up."""
import argparse
import time

import torch
import transformers

from hf_common import load_model, report, timed_generate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = load_model(args.model)
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)

    def run(batch, n_in, n_out):
        return timed_generate(model, gen, batch, n_in, n_out)

    run(1, 16, 4)
    ttft = min(run(1, 512, 1) for _ in range(3))
    tpot = (run(1, 512, 256) - ttft) / 255
    batch_s = run(64, 1024, 128)
    res = {"device": torch.cuda.get_device_name(0), "transformers": transformers.__version__,
           "torch": torch.__version__, "load_s": round(load_s, 1),
           "g2_ttft_ms": round(ttft * 1e3, 2), "g2_tpot_ms": round(tpot * 1e3, 3),
           "batch64_s": round(batch_s, 2),
           "batch64_total_tok_s": round(64 * (1024 + 128) / batch_s, 1),
           "batch64_output_tok_s": round(64 * 128 / batch_s, 1)}
    report(res, args.json)


if __name__ == "__main__":
    main()
