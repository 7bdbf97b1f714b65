#!/usr/bin/env python3
"""The card's two ceilings, measured once per run (PERFORMANCE.md): a large
device-to-device copy (bytes read + written per second) and a large cuBLAS
bf16 GEMM (8192^3 through torch.matmul, random data, not zeros). Medians of
CUDA-event timings after a warm-up. Prints one JSON object."""
import json
import statistics

import torch


def timed(fn, reps):
    start = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for _ in range(3):
        fn()
    for i in range(reps):
        start[i].record()
        fn()
        end[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(start, end)) / 1e3


def main():
    n = 1 << 30  # 2 GiB of bf16 per buffer: far beyond L2
    src = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    copy_s = timed(lambda: dst.copy_(src), 20)
    copy_gbs = 2 * src.numel() * src.element_size() / copy_s / 1e9
    del src, dst
    m = 8192
    a = [torch.randn(m, m, dtype=torch.bfloat16, device="cuda") for _ in range(3)]
    b = [torch.randn(m, m, dtype=torch.bfloat16, device="cuda") for _ in range(3)]
    k = [0]

    def gemm():
        i = k[0] % 3
        k[0] += 1
        return a[i] @ b[i]
    gemm_s = timed(gemm, 30)
    print(json.dumps({"device": torch.cuda.get_device_name(0),
                      "copy_gbs": round(copy_gbs, 1),
                      "gemm_tflops": round(2 * m ** 3 / gemm_s / 1e12, 1)}))


if __name__ == "__main__":
    main()
