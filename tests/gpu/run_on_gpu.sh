#!/bin/bash
# Runs on the GPU machine (the device tool), from the repository root, with
# BUILD (default build-cuda) carried: BUILD/tests/test_gpu_fixtures,
# BUILD/bin/{cvllm-dummy-model,cvllm-bench-gpu-decode}, BUILD/gpu-lib (the
# shared libraries that machine's image lacks: jansson, cmocka, gomp) and
# BUILD/gpu-shared/models/stories260K (a copy of ../shared's, which does not
# travel). Make both with tests/gpu/make_bundle.sh.
#
# 1. test_gpu_fixtures (all HF fixtures, stories260K greedy), test_gpu_engine,
#    test_gpu_server_stream, test_gpu_attention, test_gpu_sample;
# 2. cvllm-dummy-model --shape L8B --dtype bf16 (timed);
# 3. cvllm-bench-gpu-decode on it, then HF transformers on the same files;
# 4. bench/gpu_decode/report.py -> $OUT/gpu_decode.md.
# Logs go to $OUT; a summary is printed last.
set -u
BUILD=${1:-build-cuda}
OUT=${OUT:-/tmp/cvllm-gpu-out}
MODEL=${MODEL:-/tmp/l8b}
mkdir -p "$OUT"
cublas=/usr/local/cuda/lib64/libcublas.so.13
[ -e "$cublas" ] || cublas=$(find / -xdev -name libcublas.so.13 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$PWD/$BUILD/gpu-lib:$(dirname "$cublas"):${LD_LIBRARY_PATH:-}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  echo "cublas: $cublas"; uname -r; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

echo "== test_gpu_fixtures"
t0=$(date +%s%N)
CVLLM_SHARED="$PWD/$BUILD/gpu-shared" CVLLM_SOURCE_DIR="$PWD" timeout 150 \
    "$BUILD/tests/test_gpu_fixtures" > "$OUT/test_gpu.log" 2>&1
test_rc=$?
test_s=$(( ($(date +%s%N) - t0) / 1000000 ))
grep -E "^\[  (PASSED|FAILED|  FAILED|  ERROR) |ERROR|greedy" "$OUT/test_gpu.log" | tail -20
echo "largest errors:"
grep "rel err" "$OUT/test_gpu.log" | awk '{print $NF, $0}' | sort -g | tail -6 | cut -d' ' -f2-

echo "== test_gpu_engine (the engine with device \"cuda\")"
CVLLM_SHARED="$PWD/$BUILD/gpu-shared" CVLLM_SOURCE_DIR="$PWD" timeout 120 \
    "$BUILD/tests/test_gpu_engine" > "$OUT/test_gpu_engine.log" 2>&1
echo "test_gpu_engine rc=$?"
grep -E "^\[  (PASSED|FAILED|  FAILED|  ERROR) |ERROR" "$OUT/test_gpu_engine.log" | tail -8

echo "== test_gpu_engine with async_scheduling (steps on the runner's worker thread)"
CVLLM_SHARED="$PWD/$BUILD/gpu-shared" CVLLM_SOURCE_DIR="$PWD" CVLLM_TEST_ASYNC_SCHEDULING=1 \
    timeout 120 "$BUILD/tests/test_gpu_engine" > "$OUT/test_gpu_engine_async.log" 2>&1
echo "test_gpu_engine (async) rc=$?"
grep -E "^\[  (PASSED|FAILED|  FAILED|  ERROR) |ERROR" "$OUT/test_gpu_engine_async.log" | tail -8

echo "== test_gpu_server_stream (cvllm-server's HTTP and gRPC streaming, a model on the GPU, vs the CPU engine)"
CVLLM_SHARED="$PWD/$BUILD/gpu-shared" CVLLM_SOURCE_DIR="$PWD" CVLLM_BIN_DIR="$PWD/$BUILD/bin" \
    timeout 240 "$BUILD/tests/test_gpu_server_stream" > "$OUT/test_gpu_server_stream.log" 2>&1
stream_rc=$?
echo "test_gpu_server_stream rc=$stream_rc"
grep -E "^\[  (PASSED|FAILED|  FAILED|  ERROR) |ERROR|SKIP| got | want " \
    "$OUT/test_gpu_server_stream.log" | tail -12

echo "== test_gpu_attention (tensor-core kernels vs an fp64 reference, timed)"
timeout 120 "$BUILD/tests/test_gpu_attention" --bench > "$OUT/test_gpu_attention.log" 2>&1
echo "test_gpu_attention rc=$?"
tail -20 "$OUT/test_gpu_attention.log"

echo "== test_gpu_sample (the device sampler vs the CPU sampler)"
timeout 200 "$BUILD/tests/test_gpu_sample" > "$OUT/test_gpu_sample.log" 2>&1
sample_rc=$?
echo "test_gpu_sample rc=$sample_rc"
grep -E "^\[  (PASSED|FAILED|  FAILED|  ERROR) |ERROR|chi-square|equal to the CPU" \
    "$OUT/test_gpu_sample.log" | tail -12

echo "== compute-sanitizer (memcheck, racecheck) on qwen3_bf16, memcheck on opt_postnorm_f32"
for tool in memcheck racecheck; do
    CVLLM_SHARED="$PWD/$BUILD/gpu-shared" CVLLM_SOURCE_DIR="$PWD" timeout 30 \
        compute-sanitizer --tool $tool --error-exitcode 9 "$BUILD/tests/test_gpu_fixtures" \
        "qwen3_bf16" >> "$OUT/test_gpu.log" 2>&1
    echo "compute-sanitizer $tool rc=$?"
done
# The OPT / GPT-2 kernels (kernels/norm_act.cu, kernels/embed.cu): post-norm, project_in/out.
CVLLM_SHARED="$PWD/$BUILD/gpu-shared" CVLLM_SOURCE_DIR="$PWD" timeout 30 \
    compute-sanitizer --tool memcheck --error-exitcode 9 "$BUILD/tests/test_gpu_fixtures" \
    "opt_postnorm_f32" >> "$OUT/test_gpu.log" 2>&1
echo "compute-sanitizer memcheck opt_postnorm_f32 rc=$?"
grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/test_gpu.log" | tail -6

echo "== cvllm-dummy-model L8B bf16"
t0=$(date +%s%N)
timeout 200 "$BUILD/bin/cvllm-dummy-model" --shape L8B --dtype bf16 --out "$MODEL" > "$OUT/dummy.log" 2>&1
dm_rc=$?
dm_s=$(( ($(date +%s%N) - t0) / 1000000 ))
cat "$OUT/dummy.log" | tail -3; du -sh "$MODEL"

echo "== cvllm-bench-gpu-decode"
timeout 180 "$BUILD/bin/cvllm-bench-gpu-decode" --model "$MODEL" --json "$OUT/cvllm.json" \
    > "$OUT/bench.log" 2>&1
bench_rc=$?
cat "$OUT/bench.log"

echo "== HF transformers"
PYTHONUNBUFFERED=1 timeout 150 python3 bench/gpu_decode/hf_decode.py --model "$MODEL" \
    --json "$OUT/hf.json" > "$OUT/hf.log" 2>&1
hf_rc=$?
tail -3 "$OUT/hf.log"

python3 bench/gpu_decode/report.py "$OUT/cvllm.json" "$OUT/hf.json" \
    "tests/gpu/run_on_gpu.sh $BUILD" > "$OUT/gpu_decode.md" 2>> "$OUT/hf.log"

echo
echo "== summary"
echo "test_gpu_fixtures rc=$test_rc (${test_s} ms)  test_gpu_server_stream rc=$stream_rc" \
     " test_gpu_sample rc=$sample_rc" \
     " dummy-model rc=$dm_rc (${dm_s} ms)" \
     " bench rc=$bench_rc  hf rc=$hf_rc"
grep -E "^(###|\| (TTFT|TPOT|[0-9]+ \|))" "$OUT/bench.log"
grep -E "^HF" "$OUT/hf.log"
