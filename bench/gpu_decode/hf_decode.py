#!/usr/bin/env python3
"""HF transformers baseline for bench/gpu_decode: the same model directory in
bf16 with eager attention, `generate` at batch 1 on a seeded random prompt.

    hf_decode.py --model DIR [--prompt 512] [--gen 64] [--json FILE]

TTFT = best of 3 `generate(max_new_tokens=1)`; TPOT = (time of
`generate(max_new_tokens=gen, min_new_tokens=gen)` - TTFT) / (gen - 1).
Times are host wall clock around a synchronized GPU, after a warm-up."""
import argparse
import json
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16,
                                                 attn_implementation="eager", device_map="cuda")
    model.eval()
    load_s = time.perf_counter() - t0
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, args.prompt), generator=gen).cuda()
    mask = torch.ones_like(ids)

    def run(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        assert out.shape[1] == args.prompt + n
        return time.perf_counter() - t

    run(4)
    ttft = min(run(1) for _ in range(3))
    total = run(args.gen)
    tpot = (total - ttft) / (args.gen - 1)
    res = {"device": torch.cuda.get_device_name(0), "transformers": transformers.__version__,
           "torch": torch.__version__, "load_s": load_s, "prompt": args.prompt,
           "gen": args.gen, "ttft_ms": ttft * 1e3, "tpot_ms": tpot * 1e3}
    print(f"HF {transformers.__version__} eager bf16 on {res['device']}: load {load_s:.1f} s, "
          f"TTFT {ttft * 1e3:.2f} ms, TPOT {tpot * 1e3:.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
