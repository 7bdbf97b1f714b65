#!/bin/bash
# Issue 10's serving workloads through the product, on the GPU machine (the
# device tool), from the repository root, with BUILD (default build-cuda)
# made by tests/gpu/make_bundle.sh and carried. Writes $OUT/gpu_serving.md
# (the table for bench/results/) and every JSON and log beside it.
#
#   1. the card's ceilings (copy bandwidth, cuBLAS bf16 GEMM peak);
#   2. an L8B-shaped bf16 model of random weights (cvllm-dummy-model);
#   3. cvllm-server on it, time from start to ready (after step 4);
#   4. HF transformers on the same files (hf_serving.py), before the server
#      holds the GPU;
#   5. cvllm-bench over gRPC: G2 (concurrency 1, 512/256), G1 (1000 prompts
#      at once, 1024/128), concurrency 64 and 256 (1024/128);
#   6. with the server stopped, cvllm-bench --backend inprocess on the same
#      repository for every workload (the same engine in the benchmark's
#      process; one engine holds the GPU at a time): the server-overhead
#      baseline;
#   7. report.py -> gpu_serving.md.
# WORKLOADS (default "g2 g1 c64 c256", issue 10's) picks the workloads; the
# rest of PERFORMANCE.md's G3 are c16 (gRPC, concurrency 16) and h1, h16,
# h64, h256 (HTTP SSE at concurrency 1 (G2's shape), 16, 64, 256); HF=0 skips step 4;
# INPROC=0 skips step 6; ASYNC=0 turns the engine's async_scheduling off
# (model.json; on by default: step N+1 is scheduled while step N runs);
# FRESH=1 restarts the server before each workload (server.NAME.log), as
# every in-process run starts a fresh engine, instead of one server that
# has served the workloads before.
set -u
BUILD=${1:-build-cuda}
OUT=${OUT:-/tmp/cvllm-gpu-out}
MODEL=${MODEL:-/tmp/l8b}
WORKLOADS=${WORKLOADS:-g2 g1 c64 c256}
HF=${HF:-1}
INPROC=${INPROC:-1}
ASYNC=${ASYNC:-1}
FRESH=${FRESH:-0}
mkdir -p "$OUT"
cublas=/usr/local/cuda/lib64/libcublas.so.13
[ -e "$cublas" ] || cublas=$(find / -xdev -name libcublas.so.13 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$PWD/$BUILD/gpu-lib:$(dirname "$cublas"):${LD_LIBRARY_PATH:-}"
BIN=$BUILD/bin
source bench/gpu_serving/server.sh

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
echo "== ceilings"
python3 bench/gpu_serving/ceilings.py | tee "$OUT/ceilings.json"

if [ ! -f "$MODEL/config.json" ]; then
    echo "== cvllm-dummy-model L8B bf16"
    t0=$(now_ms)
    "$BIN/cvllm-dummy-model" --shape L8B --dtype bf16 \
        --tokenizer "$BUILD/gpu-shared/tokenizers/gpt2" --out "$MODEL" > "$OUT/dummy.log" 2>&1 ||
        { cat "$OUT/dummy.log"; exit 1; }
    echo "written in $(( $(now_ms) - t0 )) ms"
fi
cat "$MODEL"/*.safetensors > /dev/null # into the page cache, as the issue's start time assumes

if [ "$HF" = 1 ]; then
    echo "== HF transformers"
    PYTHONUNBUFFERED=1 timeout 150 python3 bench/gpu_serving/hf_serving.py --model "$MODEL" \
        --json "$OUT/hf.json" > "$OUT/hf.log" 2>&1
    echo "hf rc=$?"; tail -2 "$OUT/hf.log"
fi

REPO=/tmp/cvllm-repo
rm -rf "$REPO" && mkdir -p "$REPO/l8b/1"
# REPORT_CUSTOM_METRICS: metrics.txt then shows the prefix cache's hits.
cat > "$REPO/l8b/config.pbtxt" <<'PBTXT'
backend: "vllm"
parameters: { key: "REPORT_CUSTOM_METRICS" value: { string_value: "true" } }
PBTXT
async=false
[ "$ASYNC" = 1 ] && async=true
cat > "$REPO/l8b/1/model.json" <<JSON
{"model": "$MODEL", "max_model_len": 4096, "gpu_memory_utilization": 0.9,
 "max_num_seqs": 256, "max_num_batched_tokens": 8192, "async_scheduling": $async}
JSON
ports=(18000 18001 18002)
echo "== cvllm-server"
start_server "$OUT/server.log" l8b
echo "ready after $ready_ms ms"
echo "{\"ready_ms\": $ready_ms}" > "$OUT/ready.json"
grep -iE "engine|load|graph|kv|ready" "$OUT/server.log" | head -20

# BACKEND picks the target: the server over gRPC, or the same repository's
# engine in cvllm-bench's process (results NAME.inproc.json). Two warm-up
# requests (not measured) before each workload, so that an in-process run,
# which loads its engine afresh, starts as warm as the server's.
BACKEND=(--backend triton-grpc --port ${ports[1]})
SUFFIX=
# Each workload draws its prompts with its own seed: with one seed, a
# workload's first prompts would be the previous workload's, found in the
# prefix cache, and its throughput would count prefill it never computed.
bench() { # name n_prompts in out concurrency(0 = all at once) seed
    local conc=()
    [ "$5" -gt 0 ] && conc=(--max-concurrency "$5")
    echo "== $1$SUFFIX: $2 prompts, $3 in / $4 out, concurrency ${5/#0/all}"
    timeout 400 "$BIN/cvllm-bench" "${BACKEND[@]}" --model l8b \
        --tokenizer "$BUILD/gpu-shared/tokenizers/gpt2" --dataset-name random \
        --random-input-len "$3" --random-output-len "$4" --num-prompts "$2" "${conc[@]}" \
        --num-warmups 2 --request-rate inf --ignore-eos --disable-progress --seed "$6" \
        --result-file "$OUT/$1$SUFFIX.json" \
        > "$OUT/$1$SUFFIX.log" 2>&1
    echo "rc=$?"; grep -E "throughput|TTFT|TPOT|ITL|Duration|Successful" "$OUT/$1$SUFFIX.log" | head -12
}
# The h* workloads reach the server through Triton's HTTP generate_stream
# (SSE) instead of gRPC; in process they run as the others.
workload() {
    local BACKEND=("${BACKEND[@]}")
    case $1 in h*) [ -n "$SUFFIX" ] || BACKEND=(--backend triton-http --port ${ports[0]}) ;; esac
    case $1 in
    g2) bench g2 20 512 256 1 1 ;;
    c64) bench c64 256 1024 128 64 2 ;;
    c256) bench c256 512 1024 128 256 3 ;;
    g1) bench g1 1000 1024 128 0 4 ;;
    c16) bench c16 128 1024 128 16 5 ;;
    h1) bench h1 20 512 256 1 6 ;;
    h16) bench h16 128 1024 128 16 7 ;;
    h64) bench h64 256 1024 128 64 8 ;;
    h256) bench h256 512 1024 128 256 9 ;;
    *) echo "unknown workload $1" >&2; exit 2 ;;
    esac
}
first=1
for w in $WORKLOADS; do
    if [ "$FRESH" = 1 ] && [ $first = 0 ]; then
        kill -TERM $server; wait $server
        start_server "$OUT/server.$w.log" l8b
    fi
    first=0
    workload "$w"
done
LD_LIBRARY_PATH= curl -s "localhost:${ports[2]}/metrics" > "$OUT/metrics.txt"
kill -TERM $server; wait $server; echo "server exit $?"

if [ "$INPROC" = 1 ]; then
    # The GPU is free again: each run loads the engine the server ran.
    BACKEND=(--backend inprocess --model-repository "$REPO")
    SUFFIX=.inproc
    for w in $WORKLOADS; do workload "$w"; done
fi

python3 bench/gpu_serving/report.py "$OUT" "ASYNC=$ASYNC FRESH=$FRESH bench/gpu_serving/run.sh $BUILD" \
    > "$OUT/gpu_serving.md"
cat "$OUT/gpu_serving.md"
