#!/bin/bash
# Runs on the GPU machine (the device tool), from the repository root, with
# BUILD/tests/test_gpu_attention carried (BUILD default build-cuda; the
# binary links cudart statically and needs no other library):
#   1. correctness of the tensor-core attention kernels and their timing
#      (prefill TFLOP/s, decode GB/s against the measured copy bandwidth,
#      today's scalar kernel beside);
#   2. compute-sanitizer memcheck and racecheck on the head_dim 32 cases
#      (both tile heights, decode, mixed) and the 128-row tiles + decode at
#      head_dim 128 (a few minutes at most);
#   3. the SASS of the kernels: HMMA / LDSM / LDGSTS counts, local memory.
# Logs go to $OUT; a summary is printed last. Exit status: that of step 1.
set -u
BUILD=${1:-build-cuda}
OUT=${OUT:-/tmp/cvllm-attn-out}
BIN="$BUILD/tests/test_gpu_attention"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv \
    > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

echo "== test_gpu_attention --bench"
timeout 400 "$BIN" --bench 2>&1 | tee "$OUT/attention.log"
rc=${PIPESTATUS[0]}

echo "== compute-sanitizer"
for tool in memcheck racecheck; do
    for cases in hd32 "mixed128 hd128"; do
        log="$OUT/sanitizer_${tool}_${cases// /_}.log"
        timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 "$BIN" "$cases" > "$log" 2>&1
        echo "compute-sanitizer $tool '$cases' rc=$? $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" \
            "$log" | tail -1)"
    done
done

echo "== SASS"
if command -v cuobjdump > /dev/null; then
    cuobjdump -sass "$BIN" > "$OUT/attention.sass" 2>&1
    awk '/Function :/ { name = $3 }
         { for (i = 1; i <= NF; i++) if ($i ~ /^(HMMA|LDSM|LDGSTS|LDL|STL)/) { split($i, p, ".");
           n[name " " p[1]]++ } } END { for (k in n) print k, n[k] }' "$OUT/attention.sass" |
        grep -E "prefill|decode" | sort
else
    echo "no cuobjdump on this machine"
fi

echo
echo "== summary"
echo "test_gpu_attention rc=$rc"
grep -E "^(FAIL|PASS)" "$OUT/attention.log"
exit $rc
