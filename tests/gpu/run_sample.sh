#!/bin/bash
# Runs on the GPU machine (the device tool), from the repository root, with
# what tests/gpu/make_bundle.sh builds carried (BUILD default build-cuda):
#   1. test_gpu_sample: the device sampler against the CPU sampler;
#   2. compute-sanitizer memcheck, racecheck and synccheck on its small cases
#      (the penalty cases and the batch-composition case);
#   3. test_gpu_engine (device-sampled requests against the CPU engine);
#   4. with SAMPLE_BENCH=1: an L8B-shaped bf16 dummy model and
#      cvllm-bench-gpu-decode --sample 256 (decode step of 256 sequences
#      with ~1.1k tokens of context sampled on the GPU vs downloaded and
#      sampled by the CPU sampler).
# Logs go to $OUT; a summary is printed last. Exit status: that of step 1.
set -u
BUILD=${1:-build-cuda}
OUT=${OUT:-/tmp/cvllm-sample-out}
MODEL=${MODEL:-/tmp/l8b}
mkdir -p "$OUT"
cublas=/usr/local/cuda/lib64/libcublas.so.13
[ -e "$cublas" ] || cublas=$(find / -xdev -name libcublas.so.13 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$PWD/$BUILD/gpu-lib:$(dirname "$cublas"):${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

echo "== test_gpu_sample"
timeout 300 "$BUILD/tests/test_gpu_sample" 2>&1 | tee "$OUT/test_gpu_sample.log"
rc=${PIPESTATUS[0]}

echo "== compute-sanitizer"
for tool in memcheck racecheck synccheck; do
    for t in test_penalties_move_greedy test_seeds_reproducible; do
        log="$OUT/sanitizer_${tool}_$t.log"
        timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 \
            "$BUILD/tests/test_gpu_sample" "$t" > "$log" 2>&1
        echo "compute-sanitizer $tool $t rc=$? $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" \
            "$log" | tail -1)"
    done
done

echo "== test_gpu_engine"
CVLLM_SHARED="$PWD/$BUILD/gpu-shared" CVLLM_SOURCE_DIR="$PWD" timeout 200 \
    "$BUILD/tests/test_gpu_engine" > "$OUT/test_gpu_engine.log" 2>&1
engine_rc=$?
grep -E "^\[  (PASSED|FAILED|  FAILED|  ERROR) |ERROR|request|GPU" "$OUT/test_gpu_engine.log" |
    tail -12

if [ "${SAMPLE_BENCH:-0}" = 1 ]; then
    echo "== cvllm-bench-gpu-decode --sample 256"
    [ -e "$MODEL/config.json" ] || timeout 200 "$BUILD/bin/cvllm-dummy-model" --shape L8B \
        --dtype bf16 --out "$MODEL" > "$OUT/dummy.log" 2>&1
    timeout 400 "$BUILD/bin/cvllm-bench-gpu-decode" --model "$MODEL" --prompt 1024 --gen 16 \
        --batches 8 --batch-gen 32 --sample 256 --json "$OUT/sample_bench.json" \
        > "$OUT/sample_bench.log" 2>&1
    echo "bench rc=$?"
    grep -A4 "sequences, temperature" "$OUT/sample_bench.log"
fi

echo
echo "== summary"
echo "test_gpu_sample rc=$rc; test_gpu_engine rc=$engine_rc"
grep -E "^\[  (PASSED|FAILED|  FAILED) |chi-square|equal to the CPU" "$OUT/test_gpu_sample.log"
exit $rc
