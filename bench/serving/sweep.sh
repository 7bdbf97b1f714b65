#!/usr/bin/env bash
# Concurrency sweep of cvllm-server with cvllm-bench (issue 6): starts a
# server on a model (by default an L125M-shaped f16 Llama with random weights
# and the Llama-2 tokenizer, made by cvllm-dummy-model), runs cvllm-bench at
# each concurrency on random prompts, and writes under $OUT:
#   $NAME.md   the table (with the command, CPU and date)
#   $NAME.png  latency vs throughput (gnuplot)
#   $NAME.json every level's full cvllm-bench result
#
# Run from the repository root after `make`. Environment (defaults):
#   BIN=build/bin  CVLLM_SHARED=../shared  OUT=bench/results
#   NAME=serving_sweep_L125M  MODEL_DIR=<generated L125M f16>  MODEL_DESC=<text>
#   CONCURRENCY="1 4 16 64"  INPUT_LEN=128  OUTPUT_LEN=128
#   PROMPTS_PER_SLOT=2 (num prompts = max(8, PROMPTS_PER_SLOT * concurrency))
#   BACKEND=triton-grpc (or triton-http)  SERVER_ARGS=""  SEED=0  COMMIT=<git HEAD>
set -euo pipefail

BIN=${BIN:-build/bin}
SHARED=${CVLLM_SHARED:-../shared}
OUT=${OUT:-bench/results}
NAME=${NAME:-serving_sweep_L125M}
CONCURRENCY=${CONCURRENCY:-"1 4 16 64"}
INPUT_LEN=${INPUT_LEN:-128}
OUTPUT_LEN=${OUTPUT_LEN:-128}
PROMPTS_PER_SLOT=${PROMPTS_PER_SLOT:-2}
BACKEND=${BACKEND:-triton-grpc}
SERVER_ARGS=${SERVER_ARGS:-}
SEED=${SEED:-0}

for tool in cvllm-server cvllm-bench; do
  [ -x "$BIN/$tool" ] || { echo "sweep.sh: $BIN/$tool is not built (run make)" >&2; exit 1; }
done
command -v gnuplot >/dev/null || { echo "sweep.sh: gnuplot missing (scripts/install-deps)" >&2; exit 1; }

work=$(mktemp -d /tmp/cvllm-sweep-XXXXXX)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"; wait "$server_pid" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${MODEL_DIR:-}" ]; then
  [ -x "$BIN/cvllm-dummy-model" ] || { echo "sweep.sh: $BIN/cvllm-dummy-model is not built" >&2; exit 1; }
  MODEL_DIR=$work/model
  MODEL_DESC=${MODEL_DESC:-"L125M geometry, f16, random weights, Llama-2 tokenizer"}
  "$BIN/cvllm-dummy-model" --shape L125M --dtype f16 --tokenizer "$SHARED/tokenizers/llama2" \
    --out "$MODEL_DIR" >/dev/null
fi
MODEL_DIR=$(cd "$MODEL_DIR" && pwd)
MODEL_DESC=${MODEL_DESC:-$MODEL_DIR}

mkdir -p "$work/repo/vllm_model/1"
cat > "$work/repo/vllm_model/config.pbtxt" <<PBTXT
backend: "vllm"
instance_group [{ count: 1, kind: KIND_MODEL }]
parameters: { key: "REPORT_CUSTOM_METRICS" value: { string_value: "true" } }
PBTXT
echo "{\"model\": \"$MODEL_DIR\", \"seed\": 0}" > "$work/repo/vllm_model/1/model.json"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port); grpc_port=$(free_port); metrics_port=$(free_port)
# shellcheck disable=SC2086
"$BIN/cvllm-server" --model-repository="$work/repo" --http-port="$http_port" \
  --grpc-port="$grpc_port" --metrics-port="$metrics_port" $SERVER_ARGS > "$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 600); do
  curl -sf -o /dev/null "http://127.0.0.1:$http_port/v2/health/ready" && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.2
done

port=$grpc_port
[ "$BACKEND" = triton-grpc ] || port=$http_port
# Other processes on the same cores skew every figure: record the load.
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
results=()
for c in $CONCURRENCY; do
  n=$((PROMPTS_PER_SLOT * c)); [ "$n" -ge 8 ] || n=8
  echo "sweep.sh: concurrency $c, $n prompts" >&2
  if ! "$BIN/cvllm-bench" --backend "$BACKEND" --host 127.0.0.1 --port "$port" \
    --tokenizer "$MODEL_DIR" --dataset-name random --random-input-len "$INPUT_LEN" \
    --random-output-len "$OUTPUT_LEN" --ignore-eos --num-prompts "$n" --num-warmups 1 \
    --max-concurrency "$c" --seed "$SEED" --result-file "$work/c$c.json" --disable-progress \
    > "$work/c$c.txt" 2>&1; then
    echo "sweep.sh: cvllm-bench failed at concurrency $c:" >&2
    cat "$work/c$c.txt" >&2
    echo "sweep.sh: server log (tail):" >&2
    tail -20 "$work/server.log" >&2
    exit 1
  fi
  if [ "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed"])' "$work/c$c.json")" != 0 ]; then
    echo "sweep.sh: failed requests at concurrency $c:" >&2
    cat "$work/c$c.txt" >&2
    exit 1
  fi
  results+=("$work/c$c.json")
done

load_end=$(cut -d' ' -f1-3 /proc/loadavg)
commit=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p "$OUT"
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
cores=$(nproc)
cmd="CONCURRENCY=\"$CONCURRENCY\" INPUT_LEN=$INPUT_LEN OUTPUT_LEN=$OUTPUT_LEN BACKEND=$BACKEND bench/serving/sweep.sh"
python3 - "$OUT/$NAME" "$cpu" "$cores" "$cmd" "$MODEL_DESC" "$commit" "$load_start" "$load_end" \
  "${results[@]}" <<'PY'
import json, sys, datetime
base, cpu, cores, cmd, model, commit, load_start, load_end = sys.argv[1:9]
runs = [json.load(open(p)) for p in sys.argv[9:]]
with open(base + ".json", "w") as f:
    json.dump([{k: v for k, v in r.items() if k != "requests"} for r in runs], f, indent=1)
with open(base + ".dat", "w") as f:
    f.write("# concurrency output_tok_s median_ttft_ms median_tpot_ms median_e2el_s p99_tpot_ms\n")
    for r in runs:
        f.write("%d %.3f %.3f %.3f %.4f %.3f\n" % (r["max_concurrency"], r["output_throughput"],
                r["median_ttft_ms"], r["median_tpot_ms"], r["median_e2el_ms"] / 1000, r["p99_tpot_ms"]))
rows = []
for r in runs:
    rows.append("| %d | %d | %d | %.2f | %.1f | %.1f | %.0f / %.0f / %.0f | %.1f / %.1f / %.1f | %.1f / %.1f | %.2f / %.2f |" % (
        r["max_concurrency"], r["completed"], r["failed"], r["request_throughput"],
        r["output_throughput"], r["total_token_throughput"],
        r["mean_ttft_ms"], r["median_ttft_ms"], r["p99_ttft_ms"],
        r["mean_tpot_ms"], r["median_tpot_ms"], r["p99_tpot_ms"],
        r["median_itl_ms"], r["p99_itl_ms"],
        r["median_e2el_ms"] / 1000, r["p99_e2el_ms"] / 1000))
name = base.rsplit("/", 1)[-1]
with open(base + ".md", "w") as f:
    f.write("# cvllm-server concurrency sweep (%s)\n\n" % name)
    f.write("Measured %s on %s (%s cores, shared by server and client), backend %s, "
            "model: %s; random prompts "
            "of exactly %d tokens, %d output tokens (ignore_eos), greedy, one warm-up request per "
            "level.\n\n" % (datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"), cpu, cores,
            runs[0]["backend"], model, runs[0]["requests"][0]["prompt_len"],
            runs[0]["requests"][0]["expected_output_len"]))
    f.write("Command: `%s` (cvllm %s). Load average (1/5/15 min) at the start: %s, at the end: "
            "%s.\n\n" % (cmd, commit, load_start, load_end))
    f.write("| concurrency | done | failed | req/s | output tok/s | total tok/s | TTFT mean / p50 / p99 (ms) | TPOT mean / p50 / p99 (ms) | ITL p50 / p99 (ms) | E2EL p50 / p99 (s) |\n")
    f.write("|---|---|---|---|---|---|---|---|---|---|\n")
    f.write("\n".join(rows) + "\n\n")
    f.write("![latency vs throughput](%s.png)\n" % name)
PY

"$(dirname "$0")/plot.sh" "$OUT/$NAME.dat" "$OUT/$NAME.png" \
  "cvllm-server $NAME: $INPUT_LEN in / $OUTPUT_LEN out, $cores CPU cores, $BACKEND" 2>/dev/null
echo "sweep.sh: wrote $OUT/$NAME.md, $OUT/$NAME.png, $OUT/$NAME.json" >&2
