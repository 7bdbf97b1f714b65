#!/usr/bin/env python3
"""Turns a bench/gpu_small/run.sh output folder into the markdown of
bench/results/gpu_small.md: PERFORMANCE.md's G4 (small models) through
cvllm-server, the same engine in process, and HF transformers, all from one
run on one card.

    report.py OUT_DIR COMMAND

Per step, in process (cvllm-bench's engine figures of the measured phase):
the wall time a step and the GPU's own span a step (CUDA events around each
step); their difference is the time a step the GPU waited for the host
(scheduling, launches, sampling, detokenizing, delivery, and the client)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpu_serving"))
from report import load, overhead  # noqa: E402  (bench/gpu_serving/report.py)

SHAPES = {"Q0.5B": "Qwen2.5-0.5B-shaped", "O125M": "OPT-125M-shaped"}


def worst(server, inproc):
    o = overhead(server, inproc)
    return max(o.values())


def main():
    out, command = sys.argv[1], sys.argv[2]
    card = open(os.path.join(out, "card.txt")).read().strip()
    print("# GPU serving of small models (PERFORMANCE.md's G4)\n")
    print(f"Card: **{card}**. bf16 models of random weights (`cvllm-dummy-model`), served by "
          "cvllm-server (`max_num_seqs` 256, `max_num_batched_tokens` 8192, `max_model_len` 2048, "
          "defaults otherwise: async scheduling, CUDA graphs, sampling on the GPU) and driven by "
          "`cvllm-bench --backend triton-grpc --dataset-name random --ignore-eos`; the in-process "
          "runs load the same repository into cvllm-bench (`--backend inprocess`).\n")
    print("Command (on the GPU machine, from the repository root):\n")
    print(f"    {command}\n")
    print("| model | workload | cvllm-server | in process | server overhead | HF transformers |")
    print("|---|---|---|---|---|---|")
    steps_rows = []
    for shape, label in SHAPES.items():
        ready = load(os.path.join(out, f"ready.{shape}.json"))
        hf = load(os.path.join(out, f"hf.{shape}.json")) or {}
        w, wi = (load(os.path.join(out, f"{shape}.w256{s}.json")) for s in ("", ".inproc"))
        b, bi = (load(os.path.join(out, f"{shape}.b8{s}.json")) for s in ("", ".inproc"))
        if w and wi:
            hf_w = (f"{hf['batch256_output_tok_s']:.0f} output tok/s (one static batch of 256 x "
                    "562 in / 562 out)" if "batch256_output_tok_s" in hf else "not run")
            print(f"| {label} | 256 prompts at once, in and out uniform 100-1024 | "
                  f"{w['output_throughput']:.0f} output tok/s, TPOT p50 {w['median_tpot_ms']:.2f} "
                  f"ms | {wi['output_throughput']:.0f} output tok/s, TPOT p50 "
                  f"{wi['median_tpot_ms']:.2f} ms | {worst(w, wi) * 100:+.1f}% | {hf_w} |")
        if b and bi:
            batches = b["completed"] / 8
            hf_b = (f"{hf['batch8_s']:.3f} s a batch ({hf['batch8_step_ms']:.2f} ms a step)"
                    if "batch8_s" in hf else "not run")
            print(f"| {label} | batches of 8 x 32 in / 128 out ({b['completed']} prompts, 8 at a "
                  f"time) | {b['duration'] / batches:.3f} s a batch, ITL p50 "
                  f"{b['median_itl_ms']:.3f} ms | {bi['duration'] / batches:.3f} s a batch, ITL "
                  f"p50 {bi['median_itl_ms']:.3f} ms | {worst(b, bi) * 100:+.1f}% | {hf_b} |")
        for name, res in (("256 at once", wi), ("batches of 8", bi)):
            if res and "engine_gpu_span_ms_per_step" in res:
                wall, span = res["engine_wall_ms_per_step"], res["engine_gpu_span_ms_per_step"]
                steps_rows.append(f"| {label} | {name} | {res['engine_steps']} | "
                                  f"{res['engine_tokens_per_step']:.1f} | {wall:.3f} | "
                                  f"{span:.3f} | {wall - span:.3f} ({(wall - span) / wall:.0%}) |")
        if ready:
            steps_rows.append(f"| {label} | start to ready: {ready['ready_ms'] / 1e3:.1f} s "
                              "| | | | | |")
    print("\nServer overhead: the worst of throughput lost and median TPOT, ITL and E2EL added "
          "against the same engine in process (bench/gpu_serving/report.py's measure). "
          "Published anchor (PERFORMANCE.md; other hardware, not a side-by-side run): vLLM with "
          "CUDA graphs runs OPT-125M's batch of 8 x 32 in / 128 out in 0.21 s (~1.6 ms a "
          "step).\n")
    print("Per step, in process (the measured phase): the engine's steps and tokens a step, the "
          "wall time a step (the run's duration / steps), the GPU's own span a step (CUDA events "
          "around each step) and their difference: the time a step the GPU waited for the host "
          "(scheduling, launches, sampling, detokenizing, delivery, the client).\n")
    print("| model | workload | engine steps | tokens a step | wall ms a step | GPU span ms a step "
          "| GPU waiting ms a step |")
    print("|---|---|---|---|---|---|---|")
    for row in steps_rows:
        print(row)
    hf = load(os.path.join(out, f"hf.{next(iter(SHAPES))}.json"))
    if hf:
        print(f"\nHF transformers {hf['transformers']} (torch {hf['torch']}, bf16, sdpa, greedy "
              "`generate`), same card and files (bench/gpu_small/hf_small.py).")


if __name__ == "__main__":
    main()
