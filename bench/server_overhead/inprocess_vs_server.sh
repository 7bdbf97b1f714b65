#!/bin/bash
# Server overhead with cvllm-bench (issue 10): each workload through
# cvllm-server over gRPC and through `cvllm-bench --backend inprocess` on
# the same model repository (the engine the server loads, in the
# benchmark's process). The server is stopped before the in-process runs,
# so one engine runs at a time; ROUNDS alternations show the noise.
# Prints bench/gpu_serving/report.py's overhead table for every round.
#
#   bench/server_overhead/inprocess_vs_server.sh [BUILD]
#
# MODEL (default ../shared/models/stories260K), CONCS (default "1 8"),
# PROMPTS (per concurrency 1; x4 above, default 20), IN / OUTLEN (tokens,
# default 128 / 128), ROUNDS (3), THREADS (engine threads, 1), OUT,
# FRONTEND (triton-grpc, or triton-http for generate_stream over SSE).
set -eu
BUILD=${1:-build}
MODEL=$(realpath "${MODEL:-../shared/models/stories260K}")
CONCS=${CONCS:-1 8}
PROMPTS=${PROMPTS:-20}
IN=${IN:-128}
OUTLEN=${OUTLEN:-128}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-1}
OUT=${OUT:-/tmp/cvllm-overhead}
FRONTEND=${FRONTEND:-triton-grpc}
BIN=$BUILD/bin
rm -rf "$OUT" && mkdir -p "$OUT/repo/m/1"
echo 'backend: "vllm"' > "$OUT/repo/m/config.pbtxt"
echo "{\"model\": \"$MODEL\"}" > "$OUT/repo/m/1/model.json"
read -r hp gp mp < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')

run() { # name concurrency backend-args...
    local name=$1 conc=$2 n=$PROMPTS
    shift 2
    [ "$conc" -gt 1 ] && n=$((PROMPTS * 4))
    "$BIN/cvllm-bench" "$@" --model m --dataset-name random --random-input-len "$IN" \
        --random-output-len "$OUTLEN" --num-prompts "$n" --num-warmups 2 \
        --max-concurrency "$conc" --ignore-eos --disable-progress \
        --result-file "$dir/$name.json" > "$dir/$name.log" 2>&1 ||
        { cat "$dir/$name.log"; exit 1; }
}

echo "model $MODEL, server through $FRONTEND, engine threads $THREADS, $IN in / $OUTLEN out, $(nproc) cores," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
    dir=$OUT/round$r
    mkdir -p "$dir"
    "$BIN/cvllm-server" --model-repository="$OUT/repo" --http-port="$hp" --grpc-port="$gp" \
        --metrics-port="$mp" --threads="$THREADS" > "$dir/server.log" 2>&1 &
    server=$!
    until curl -sf "127.0.0.1:$hp/v2/health/ready" > /dev/null; do
        kill -0 $server 2> /dev/null || { cat "$dir/server.log"; exit 1; }
        sleep 0.1
    done
    for c in $CONCS; do
        port=$gp
        [ "$FRONTEND" = triton-http ] && port=$hp
        run "c$c" "$c" --backend "$FRONTEND" --host 127.0.0.1 --port "$port" --tokenizer "$MODEL"
    done
    kill -TERM $server
    wait $server
    for c in $CONCS; do
        run "c$c.inproc" "$c" --backend inprocess --model-repository "$OUT/repo" \
            --threads "$THREADS" --tokenizer "$MODEL"
    done
    echo
    echo "Round $r:"
    python3 bench/gpu_serving/report.py --overhead "$dir" | tail -n +4
done
