#!/bin/bash
# PERFORMANCE.md's G4 through the product, on the GPU machine (the device
# tool), from the repository root, with BUILD (default build-cuda) made by
# tests/gpu/make_bundle.sh and carried: small models, where the host's time
# a step (scheduling, launches, sampling, the server) weighs most. Writes
# $OUT/gpu_small.md (the table for bench/results/) and every JSON and log
# beside it. For each of the Qwen2.5-0.5B and OPT-125M shapes (bf16, random
# weights, cvllm-dummy-model):
#
#   1. HF transformers on the same files (hf_small.py; HF=0 skips it);
#   2. cvllm-server on them (max_num_seqs 256), driven over gRPC by
#      cvllm-bench: "w256", 256 prompts at once with input and output
#      lengths uniform in 100..1024, and "b8", 24 prompts of 32 in / 128 out
#      eight at a time (vLLM's OPT-125M anchor: 0.21 s a batch of 8);
#   3. with the server stopped, the same two through cvllm-bench --backend
#      inprocess (the server-overhead baseline, and the engine's steps and
#      the GPU's own span a step);
#   4. report.py -> gpu_small.md.
set -u
BUILD=${1:-build-cuda}
OUT=${OUT:-/tmp/cvllm-gpu-small}
HF=${HF:-1}
SHAPES=${SHAPES:-Q0.5B O125M}
mkdir -p "$OUT"
cublas=/usr/local/cuda/lib64/libcublas.so.13
[ -e "$cublas" ] || cublas=$(find / -xdev -name libcublas.so.13 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$PWD/$BUILD/gpu-lib:$(dirname "$cublas"):${LD_LIBRARY_PATH:-}"
BIN=$BUILD/bin
TOK=$BUILD/gpu-shared/tokenizers/gpt2
ports=(18100 18101 18102)
source bench/gpu_serving/server.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"

# bench NAME SHAPE ARGS...: one cvllm-bench run, result NAME.json.
bench() {
    local name=$1 shape=$2
    shift 2
    timeout 300 "$BIN/cvllm-bench" "${BACKEND[@]}" --model "$shape" --tokenizer "$TOK" \
        --dataset-name random --ignore-eos --disable-progress --request-rate inf \
        --num-warmups 2 --result-file "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
    echo "$name rc=$?"
    grep -E "Output token throughput|Duration|TPOT|ITL|GPU span|Wall ms|Engine steps" \
        "$OUT/$name.log" | head -12
}
workloads() { # SHAPE SUFFIX
    bench "$1.w256$2" "$1" --num-prompts 256 --random-input-len 562 --random-output-len 562 \
        --random-range-ratio 0.822 --seed 11
    bench "$1.b8$2" "$1" --num-prompts 24 --max-concurrency 8 --random-input-len 32 \
        --random-output-len 128 --seed 12
}

REPO=/tmp/cvllm-small-repo
for shape in $SHAPES; do
    model=/tmp/dummy-$shape
    echo "== $shape"
    [ -f "$model/config.json" ] ||
        "$BIN/cvllm-dummy-model" --shape "$shape" --dtype bf16 --tokenizer "$TOK" \
            --out "$model" > "$OUT/dummy.$shape.log" 2>&1 || { cat "$OUT/dummy.$shape.log"; exit 1; }
    if [ "$HF" = 1 ]; then
        PYTHONUNBUFFERED=1 timeout 90 python3 bench/gpu_small/hf_small.py --model "$model" \
            --json "$OUT/hf.$shape.json" > "$OUT/hf.$shape.log" 2>&1
        echo "hf rc=$?"; tail -1 "$OUT/hf.$shape.log"
    fi
    rm -rf "$REPO" && mkdir -p "$REPO/$shape/1"
    echo 'backend: "vllm"' > "$REPO/$shape/config.pbtxt"
    cat > "$REPO/$shape/1/model.json" <<JSON
{"model": "$model", "max_model_len": 2048, "gpu_memory_utilization": 0.9,
 "max_num_seqs": 256, "max_num_batched_tokens": 8192}
JSON
    start_server "$OUT/server.$shape.log" "$shape"
    echo "{\"ready_ms\": $ready_ms}" > "$OUT/ready.$shape.json"
    echo "ready after $ready_ms ms"
    BACKEND=(--backend triton-grpc --port ${ports[1]})
    workloads "$shape" ""
    kill -TERM $server; wait $server
    BACKEND=(--backend inprocess --model-repository "$REPO")
    workloads "$shape" .inproc
done
python3 bench/gpu_small/report.py "$OUT" "HF=$HF bench/gpu_small/run.sh $BUILD" > "$OUT/gpu_small.md"
cat "$OUT/gpu_small.md"
