#!/usr/bin/env python3
"""Turns a bench/gpu_serving/run.sh output folder into the markdown table of
bench/results/gpu_serving.md: every figure beside the ceiling it is held to,
all measured in the same run on the same card.

    report.py OUT_DIR COMMAND
    report.py --overhead OUT_DIR    (only the server-overhead table)

Floors (PERFORMANCE.md, issue 10): weight-read floor = weight bytes / copy
bandwidth; decode floor at B sequences = (weight bytes + KV bytes of their
contexts) / copy bandwidth; compute bound = 2 x params x tokens / GEMM peak."""
import glob
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def overhead(server, inproc):
    """What the server costs against the same engine in process, as the
    fractions (server worse = positive): throughput lost, median TPOT, ITL
    and end-to-end latency added. E2EL is there because TPOT and ITL alone
    look perfect when the deltas of a request arrive in one burst."""
    return {"throughput": 1 - server["total_token_throughput"] / inproc["total_token_throughput"],
            "tpot": server["median_tpot_ms"] / inproc["median_tpot_ms"] - 1,
            "itl": server["median_itl_ms"] / inproc["median_itl_ms"] - 1,
            "e2el": server["median_e2el_ms"] / inproc["median_e2el_ms"] - 1}


def overhead_rows(out):
    """A row for every NAME.json (through the server) with a NAME.inproc.json
    (cvllm-bench --backend inprocess) beside it, by concurrency."""
    rows = []
    for path in glob.glob(os.path.join(out, "*.inproc.json")):
        name = os.path.basename(path)[:-len(".inproc.json")]
        server, inproc = load(os.path.join(out, name + ".json")), load(path)
        if server and inproc:
            rows.append((server.get("max_concurrency") or 1e9, name, server, inproc))
    if not rows:
        return
    print("\nServer overhead: the same workloads through cvllm-server and through"
          " `cvllm-bench --backend inprocess` (the engine the server loads, from the same"
          " repository, in the benchmark's process, never both at once). Overhead ="
          " the worst of throughput lost and median TPOT, ITL and E2EL added; bar <= 3%.\n")
    print("| workload | total tok/s server / in-process | TPOT p50 ms server / in-process |"
          " ITL p50 ms server / in-process | E2EL p50 ms server / in-process |"
          " server overhead (tok/s, TPOT, ITL, E2EL) | <= 3% |")
    print("|---|---|---|---|---|---|---|")
    for _, name, s, i in sorted(rows):
        o = overhead(s, i)
        worst = max(o.values())
        conc = s.get("max_concurrency") or "all"
        label = (f"{name} ({s['backend']}): concurrency {conc}, {s['completed']} x {s['total_input_tokens'] / max(s['completed'], 1):.0f}"
                 f" in / {s['total_output_tokens'] / max(s['completed'], 1):.0f} out")
        print(f"| {label} | {s['total_token_throughput']:.0f} / {i['total_token_throughput']:.0f}"
              f" | {s['median_tpot_ms']:.3f} / {i['median_tpot_ms']:.3f} | {s['median_itl_ms']:.3f}"
              f" / {i['median_itl_ms']:.3f} | {s['median_e2el_ms']:.1f} / {i['median_e2el_ms']:.1f}"
              f" | {o['throughput'] * 100:+.1f}%, {o['tpot'] * 100:+.1f}%, {o['itl'] * 100:+.1f}%,"
              f" {o['e2el'] * 100:+.1f}% | {'holds' if worst <= 0.03 else 'misses'}"
              f" ({worst * 100:.1f}%) |")


def main():
    if sys.argv[1] == "--overhead":  # the server-overhead table alone (CPU runs)
        overhead_rows(sys.argv[2])
        return
    out, command = sys.argv[1], sys.argv[2]
    ceil = load(os.path.join(out, "ceilings.json")) or {}
    card = open(os.path.join(out, "card.txt")).read().strip()
    model = os.environ.get("MODEL", "/tmp/l8b")
    cfg = load(os.path.join(model, "config.json")) or {}
    weight_bytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(model, "*.safetensors")))
    params = weight_bytes / 2  # bf16
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_per_token = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * 2
    bw = ceil.get("copy_gbs", float("nan")) * 1e9
    peak = ceil.get("gemm_tflops", float("nan")) * 1e12
    floor_s = weight_bytes / bw
    print("# GPU serving: cvllm-server vs the card and HF transformers\n")
    print(f"Card: **{card}**. L8B-shaped bf16 model of random weights ({weight_bytes / 1e9:.2f} GB),"
          " served by cvllm-server (`max_num_seqs` 256, `max_num_batched_tokens` 8192,"
          " `max_model_len` 4096, defaults otherwise) and driven by `cvllm-bench --backend"
          " triton-grpc --dataset-name random --ignore-eos`.\n")
    print(f"Command (on the GPU machine, from the repository root):\n\n    {command}\n")
    print("| ceiling (measured in this run) | value |\n|---|---|")
    print(f"| device-to-device copy (read + write) | {bw / 1e9:.0f} GB/s |")
    print(f"| cuBLAS bf16 GEMM 8192^3 | {peak / 1e12:.0f} TFLOP/s |")
    print(f"| weight-read floor per decode step | {floor_s * 1e3:.3f} ms |")
    ready = (load(os.path.join(out, "ready.json")) or {}).get("ready_ms")
    if ready is not None:
        print(f"| start to ready (weights in the page cache) | {ready / 1e3:.1f} s |")
    print()
    print("| workload | result | against its bound |\n|---|---|---|")
    g2 = load(os.path.join(out, "g2.json"))
    if g2:
        ttft_bound = 2 * params * 512 / peak + floor_s
        print(f"| G2: concurrency 1, 512 in / 256 out ({g2['completed']} requests) | TTFT "
              f"{g2['median_ttft_ms']:.1f} ms, TPOT {g2['median_tpot_ms']:.2f} ms (medians) | "
              f"TPOT {g2['median_tpot_ms'] / 1e3 / floor_s:.2f}x the weight-read floor (bar 1.15x);"
              f" TTFT {g2['median_ttft_ms'] / 1e3 / ttft_bound:.2f}x (2 x params x 512 / peak + "
              f"one floor = {ttft_bound * 1e3:.1f} ms; bar 1.3x) |")
    for name, conc in (("c64", 64), ("c256", 256)):
        r = load(os.path.join(out, name + ".json"))
        if not r:
            continue
        ctx = 1024 + 64  # mean context over the 128 decode steps
        step_floor = (weight_bytes + conc * ctx * kv_per_token) / bw
        print(f"| concurrency {conc}, 1024 in / 128 out ({r['completed']} requests) | "
              f"{r['total_token_throughput']:.0f} total tok/s ({r['output_throughput']:.0f} output);"
              f" TPOT median {r['median_tpot_ms']:.1f} ms, ITL p50 {r['median_itl_ms']:.1f} / p99 "
              f"{r['p99_itl_ms']:.1f} ms | ITL p50 {r['median_itl_ms'] / 1e3 / step_floor:.2f}x the"
              f" decode floor at {conc} x {ctx} tokens of context ({step_floor * 1e3:.1f} ms;"
              f" bar 1.3x at 256) |")
    g1 = load(os.path.join(out, "g1.json"))
    if g1:
        tokens = g1["total_input_tokens"] + g1["total_output_tokens"]
        bound_s = 2 * params * tokens / peak
        print(f"| G1: 1000 prompts at once, 1024 in / 128 out | {g1['total_token_throughput']:.0f} "
              f"total tok/s ({g1['output_throughput']:.0f} output), {g1['duration']:.1f} s | "
              f"{bound_s / g1['duration'] * 100:.0f}% of the compute bound ({bound_s:.1f} s;"
              f" bar 65%) |")
    overhead_rows(out)
    hf = load(os.path.join(out, "hf.json"))
    if hf:
        print(f"\nHF transformers {hf['transformers']} (torch {hf['torch']}, bf16, sdpa, greedy"
              f" `generate`) on the same files: G2 TTFT {hf['g2_ttft_ms']:.1f} ms, TPOT "
              f"{hf['g2_tpot_ms']:.2f} ms ({hf['g2_tpot_ms'] / 1e3 / floor_s:.2f}x the floor); 64"
              f" prompts of 1024 / 128 at once: {hf['batch64_total_tok_s']:.0f} total tok/s"
              f" ({hf['batch64_output_tok_s']:.0f} output).")
        if g2:
            print(f"\ncvllm / HF: G2 TPOT {g2['median_tpot_ms'] / hf['g2_tpot_ms']:.2f}x, TTFT "
                  f"{g2['median_ttft_ms'] / hf['g2_ttft_ms']:.2f}x (lower is better).")


if __name__ == "__main__":
    main()
