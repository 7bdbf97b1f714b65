#!/usr/bin/env python3
"""Writes the markdown tables of bench/gpu_decode from the JSON files that
cvllm-bench-gpu-decode and hf_decode.py wrote in the same run.

    report.py CVLLM_JSON HF_JSON "COMMAND" > gpu_decode.md"""
import json
import sys


def main():
    c = json.load(open(sys.argv[1]))
    try:
        h = json.load(open(sys.argv[2]))
    except (OSError, ValueError):
        h = None
    cmd = sys.argv[3]
    floor = c["floor_ms"]
    out = ["# GPU decode: cvllm CUDA backend vs the card and HF transformers", "",
           f"Card: **{c['device']}**. L8B shape (Llama-3-8B geometry), bf16 random weights "
           f"({c['weight_bytes'] / 1e9:.2f} GB), BF16 KV cache in 16-token blocks; weight "
           f"upload {c['upload_s']:.1f} s.", "",
           "Command (on the GPU machine, from the repository root):", "", f"    {cmd}", "",
           "## Ceilings measured in the same run", "",
           "| ceiling | value |", "|---|---|",
           f"| device-to-device copy (read + write) | {c['copy_gbps']:.0f} GB/s |",
           f"| cuBLAS bf16 GEMM 8192^3 | {c['gemm_tflops']:.0f} TFLOP/s |",
           f"| decode floor = weight bytes / copy bandwidth | {floor:.3f} ms |", "",
           f"## Batch 1, {c['prompt']}-token prompt (G2)", "",
           "| system | TTFT ms | TPOT ms (mean / median) | TPOT / floor | decode tok/s |",
           "|---|---|---|---|---|"]
    for r in c["runs"]:
        out.append(f"| cvllm, {r['label']} ({c['gen']} steps) | {r['ttft_ms']:.2f} | "
                   f"{r['tpot_mean_ms']:.3f} / {r['tpot_median_ms']:.3f} | "
                   f"{r['tpot_mean_ms'] / floor:.2f}x | {1e3 / r['tpot_mean_ms']:.1f} |")
    if h:
        out.append(f"| HF transformers {h['transformers']} eager bf16 `generate` ({h['gen']} "
                   f"tokens) | {h['ttft_ms']:.2f} | {h['tpot_ms']:.3f} | "
                   f"{h['tpot_ms'] / floor:.2f}x | {1e3 / h['tpot_ms']:.1f} |")
        best = c["runs"][0]
        out += ["", f"cvllm ({best['label']}) / HF: TTFT {best['ttft_ms'] / h['ttft_ms']:.2f}x, "
                f"TPOT {best['tpot_mean_ms'] / h['tpot_ms']:.2f}x (lower is better)."]
    out += ["", "## Batched (prefill 8 sequences of the prompt per step, then one token per "
            "sequence per step)", "",
            "| activations | sequences | prefill tok/s | decode step ms | decode tok/s |",
            "|---|---|---|---|---|"]
    for r in c["runs"]:
        for v in r.get("batches", []):
            out.append(f"| {r['act']} | {v['n']} | {v['prefill_tok_s']:.0f} | "
                       f"{v['step_ms']:.3f} | {v['decode_tok_s']:.0f} |")
    for r in c["runs"]:
        for k in (k for k in r if k.startswith("profile_")):
            tot = sum(r[k].values())
            out += ["", f"## Where the time goes: {k[8:].replace('_', ' ')}, {r['act']} "
                    "activations (CUDA events between phases, launched eagerly; ms/step)", "",
                    "| phase | ms/step | share |", "|---|---|---|"]
            for name, ms in r[k].items():
                out.append(f"| {name} | {ms:.3f} | {100 * ms / tot:.1f}% |")
            out.append(f"| total | {tot:.3f} | |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
