# Sourced by bench/gpu_serving/run.sh and bench/gpu_small/run.sh (on the GPU
# machine, from the repository root): the clock and the server start they
# share. The caller sets BIN (cvllm-server's folder), REPO (the model
# repository) and ports (HTTP, gRPC, metrics).

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# start_server LOG MODEL: cvllm-server on $REPO in the background (pid in
# server), waited for until MODEL is ready (ready_ms: how long that took);
# exits the script with the log's tail when it never is (180 s).
start_server() {
    local t0
    t0=$(now_ms)
    "$BIN/cvllm-server" --model-repository="$REPO" --http-port=${ports[0]} \
        --grpc-port=${ports[1]} --metrics-port=${ports[2]} --log-verbose=1 > "$1" 2>&1 &
    server=$!
    ready_ms=
    for _ in $(seq 1 1800); do
        if LD_LIBRARY_PATH= curl -sf "localhost:${ports[0]}/v2/models/$2/ready" > /dev/null; then
            ready_ms=$(( $(now_ms) - t0 )); break
        fi
        kill -0 $server 2> /dev/null || break
        sleep 0.1
    done
    [ -n "$ready_ms" ] || { tail -20 "$1"; exit 1; }
}
