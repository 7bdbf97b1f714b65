#!/bin/bash
# Runs on the GPU machine (the device tool), from the repository root, with
# these parts of the bundle of tests/gpu/make_bundle.sh BUILD carried (BUILD
# default build-cuda; about 52 MB): BUILD/tests/test_gpu_lora,
# BUILD/bin/cvllm-bench-lora-decode, BUILD/bin/cvllm-dummy-model,
# BUILD/gpu-lib, BUILD/gpu-shared (stories260K's tokenizer for the engine):
#   1. test_gpu_lora: the gather kernels against an fp64 reference, LoRA on
#      the CUDA backend against HF's merged-weights logits
#      (tests/fixtures/lora) and the CPU backend (bf16), the engine with
#      adapters in flight (3 slots and 1);
#   2. compute-sanitizer: memcheck on its kernel, bf16 (both modes: the
#      default one adds deltas into bf16 products) and llama_f32 cases,
#      racecheck on the kernel and bf16 ones;
#   3. cvllm-bench-lora-decode --device cuda on an L8B-shaped bf16 dummy
#      model (made at $MODEL unless there): the decode step with 0, 1, 4 and
#      16 rank-16 adapters among 64 sequences (issue 12: 16 <= 1.3x of 0).
# Logs go to $OUT; a summary is printed last. Exit status: that of step 1.
set -u
BUILD=${1:-build-cuda}
OUT=${OUT:-/tmp/cvllm-lora-out}
MODEL=${MODEL:-/tmp/l8b}
mkdir -p "$OUT"
cublas=/usr/local/cuda/lib64/libcublas.so.13
[ -e "$cublas" ] || cublas=$(find / -xdev -name libcublas.so.13 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$PWD/$BUILD/gpu-lib:$(dirname "$cublas"):${LD_LIBRARY_PATH:-}"
export CVLLM_SHARED="$PWD/$BUILD/gpu-shared" CVLLM_SOURCE_DIR="$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

echo "== test_gpu_lora"
timeout 240 "$BUILD/tests/test_gpu_lora" > "$OUT/test_gpu_lora.log" 2>&1
rc=$?
echo "test_gpu_lora rc=$rc"
grep -E "^\[  (PASSED|FAILED|  FAILED|  ERROR) |^\[  +(OK|FAILED) |ERROR|error|greedy|effect" \
    "$OUT/test_gpu_lora.log" | tail -30
echo "largest errors against HF / the CPU:"
grep -E "rel err" "$OUT/test_gpu_lora.log" | awk '{print $NF, $0}' | sort -g | tail -4 | cut -d' ' -f2-
echo "largest mixed-batch differences:"
grep -E "mixed batch" "$OUT/test_gpu_lora.log" | awk '{print $(NF-3), $0}' | sort -g | tail -2 |
    cut -d' ' -f2-

echo "== compute-sanitizer"
for run in "memcheck test_gather" "memcheck test_bf16_exact" "memcheck test_bf16_default" \
    "memcheck test_llama" \
    "racecheck test_gather" "racecheck test_bf16_exact"; do
    set -- $run
    log="$OUT/sanitizer_$1_$2.log"
    timeout 150 compute-sanitizer --tool "$1" --error-exitcode 9 "$BUILD/tests/test_gpu_lora" "$2" \
        > "$log" 2>&1
    echo "compute-sanitizer $run rc=$? $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -1)"
done

echo "== cvllm-bench-lora-decode --device cuda (L8B bf16)"
if [ ! -e "$MODEL/config.json" ]; then
    timeout 200 "$BUILD/bin/cvllm-dummy-model" --shape L8B --dtype bf16 --out "$MODEL" \
        > "$OUT/dummy.log" 2>&1 || tail -3 "$OUT/dummy.log"
fi
timeout 300 "$BUILD/bin/cvllm-bench-lora-decode" --device cuda --seqs 64 --rank 16 --prompt 256 \
    --steps 32 --reps 3 "$MODEL" > "$OUT/bench_lora.md" 2>&1
echo "bench rc=$?"
cat "$OUT/bench_lora.md"

echo
echo "== summary"
echo "test_gpu_lora rc=$rc"
exit $rc
