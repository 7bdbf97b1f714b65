#!/bin/bash
# Runs on the GPU machine (the device tool), from the repository root, with
# BUILD/tests/test_gpu_gemv carried (BUILD default build-cuda; cudart is
# static, cuBLAS is found as run_on_gpu.sh finds it):
#   1. correctness of the decode-size GEMV / RMSNorm kernels and their timing
#      (GB/s per L8B shape against the copy bandwidth and cuBLAS, a 32-layer
#      batch-1 chain against the weight-read floor);
#   2. compute-sanitizer memcheck, racecheck and synccheck on small cases.
# Logs go to $OUT; a summary is printed last. Exit status: that of step 1.
set -u
BUILD=${1:-build-cuda}
OUT=${OUT:-/tmp/cvllm-gemv-out}
BIN="$BUILD/tests/test_gpu_gemv"
mkdir -p "$OUT"
cublas=/usr/local/cuda/lib64/libcublas.so.13
[ -e "$cublas" ] || cublas=$(find / -xdev -name libcublas.so.13 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$PWD/$BUILD/gpu-lib:$(dirname "$cublas"):${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv \
    > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

echo "== test_gpu_gemv --bench"
timeout 400 "$BIN" --bench 2>&1 | tee "$OUT/gemv.log"
rc=${PIPESTATUS[0]}

echo "== compute-sanitizer"
for tool in memcheck racecheck synccheck; do
    for cases in "1040x2056 tok" "gated 2x520" "norm" "pdl chain"; do
        log="$OUT/sanitizer_${tool}_${cases// /_}.log"
        timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 "$BIN" "$cases" > "$log" 2>&1
        echo "compute-sanitizer $tool '$cases' rc=$? $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" \
            "$log" | tail -1)"
    done
done

echo
echo "== summary"
echo "test_gpu_gemv rc=$rc"
grep -E "^(FAIL|PASS)|decode chain" "$OUT/gemv.log"
exit $rc
