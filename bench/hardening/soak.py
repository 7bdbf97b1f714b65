#!/usr/bin/python3
"""Soak of cvllm-server (issue 16): mixed traffic for N minutes, sampling the
server's RSS and descriptors every 10 s.

Starts SERVER (default build/bin/cvllm-server) over a temporary repository
serving MODEL (default $CVLLM_SHARED/models/stories260K, else ../shared) as
"stories", then runs client threads, each in a loop until the end:
  generate      HTTP /generate, non-streaming (latency sampled)
  stream        HTTP /generate_stream read to the end
  cancel        HTTP /generate_stream closed after 2 events
  openai        /v1/completions, streaming and not, alternately
  grpc          ModelStreamInfer, 2 requests per stream; every 4th call
                cancelled after its first response
  bad           malformed JSON, unknown model, a 431 head, a 413 body,
                conflicting Content-Length, a %00 path: each status checked
  slow          a /generate request written 8 bytes every 100 ms
A request is "lost" when it gets no final answer, or not the expected one.
At the end the load stops, the server drains, and its metrics must show no
request running and no KV cache block in use.

Writes OUT.md (table), OUT.dat and, with gnuplot installed, OUT_rss.png;
the server's log goes to a temporary file (its path is printed).
Needs Debian's python3-grpcio and protoc (as tests/server/grpc_client_test.py).

usage: bench/hardening/soak.py [--minutes N] [--server PATH] [--model DIR]
                               [--out PREFIX] [--port P]"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("CVLLM_SOURCE_DIR", SRC)
sys.path.insert(0, os.path.join(SRC, "tests", "server"))
import grpc  # noqa: E402

from grpc_client_test import SERVICE, infer_request, pb  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--minutes", type=float, default=20)
ap.add_argument("--server", default=os.path.join(SRC, "build", "bin", "cvllm-server"))
shared = os.environ.get("CVLLM_SHARED", os.path.join(os.path.dirname(SRC), "shared"))
ap.add_argument("--model", default=os.path.join(shared, "models", "stories260K"))
ap.add_argument("--out", default=os.path.join(SRC, "bench", "results", "soak"))
ap.add_argument("--port", type=int, default=18760)
args = ap.parse_args()
if not os.path.isdir(args.model):
    sys.exit("soak: no model at %s (set CVLLM_SHARED or --model)" % args.model)

HTTP, GRPC, METRICS = args.port, args.port + 1, args.port + 2
END = None  # set when the server is up
lock = threading.Lock()
stats = {}  # kind -> [done, lost]
latencies = []  # (time, seconds) of /generate
lost_detail = []


def record(kind, ok, detail=""):
    with lock:
        s = stats.setdefault(kind, [0, 0])
        s[0] += 1
        if not ok:
            s[1] += 1
            if len(lost_detail) < 20:
                lost_detail.append("%s: %s" % (kind, detail))


def post(path, body, timeout=120):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (HTTP, path),
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def raw(data, timeout=60):
    """One raw HTTP exchange; the status code (0 when none came)."""
    with socket.create_connection(("127.0.0.1", HTTP), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may answer and close before reading it all
        buf = b""
        try:
            while b"\r\n" not in buf:
                d = s.recv(4096)
                if not d:
                    break
                buf += d
        except OSError:
            pass
    try:
        return int(buf.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def params(i):
    return {"max_tokens": 1 + i % 48, "temperature": 0.8, "seed": i}


def w_generate(i):
    t0 = time.time()
    st, body = post("/v2/models/stories/generate",
                    {"text_input": "Once upon a time", "parameters": params(i)})
    ok = st == 200 and "text_output" in json.loads(body)
    if ok:
        with lock:
            latencies.append((t0, time.time() - t0))
    record("generate", ok, "%d %s" % (st, body[:80]))


def sse(path, body, stop_after=0):
    """Reads an SSE reply; returns (status, events, final seen)."""
    data = json.dumps(body).encode()
    head = ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\nConnection: close\r\n\r\n" % (path, len(data))).encode()
    with socket.create_connection(("127.0.0.1", HTTP), timeout=120) as s:
        s.sendall(head + data)
        buf = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            buf += d
            if stop_after and buf.count(b"data: ") >= stop_after:
                return 200, stop_after, False
    try:
        status = int(buf.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    return status, buf.count(b"data: "), buf.endswith(b"0\r\n\r\n") or b"[DONE]" in buf


def w_stream(i):
    st, n, final = sse("/v2/models/stories/generate_stream",
                       {"text_input": "The little dog", "stream": True, "parameters": params(i)})
    record("stream", st == 200 and n >= 1 and final, "%d %d events" % (st, n))


def w_cancel(i):
    st, n, _ = sse("/v2/models/stories/generate_stream",
                   {"text_input": "One day", "stream": True,
                    "parameters": {"max_tokens": 200, "seed": i}},
                   stop_after=2)
    record("cancel", st == 200 and n == 2, "%d, %d events" % (st, n))


def w_openai(i):
    body = {"model": "stories", "prompt": "Lily went", "max_tokens": 1 + i % 32,
            "temperature": 0.7, "seed": i}
    if i % 2:
        body["stream"] = True
        st, n, final = sse("/v1/completions", body)
        record("openai", st == 200 and final and n >= 2, "%d %d" % (st, n))
    else:
        st, out = post("/v1/completions", body)
        record("openai", st == 200 and json.loads(out)["choices"], "%d %s" % (st, out[:80]))


channel = None


def w_grpc(i):
    call = channel.stream_stream(SERVICE + "ModelStreamInfer",
                                 request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=pb.ModelStreamInferResponse.FromString)
    reqs = [infer_request("stories", "r%d-%d" % (i, k), "Tim and Sam", stream=True,
                          sampling=params(i + k)) for k in range(2)]
    it = call(iter(reqs), timeout=120)
    try:
        if i % 4 == 3:
            next(it)
            it.cancel()
            record("grpc", True)
            return
        finals = sum(1 for r in it if r.error_message == "" and
                     r.infer_response.parameters["triton_final_response"].bool_param)
        record("grpc", finals == 2, "%d finals" % finals)
    except grpc.RpcError as e:
        record("grpc", e.code() == grpc.StatusCode.CANCELLED and i % 4 == 3, str(e.code()))


BAD = [
    (b"POST /v2/models/stories/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{bad}",
     400),
    (b"POST /v2/models/nope/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 404),
    (b"GET /v2/health/live HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    (b"POST /v2/models/stories/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n"
     b"\r\n{", 413),
    (b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
     b"Content-Length: 40\r\n\r\n{}", 400),
    (b"GET /v2/models/stories%00x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
]


def w_bad(i):
    req, want = BAD[i % len(BAD)]
    st = raw(req)
    record("bad", st == want, "case %d: %d, want %d" % (i % len(BAD), st, want))


def w_slow(i):
    body = json.dumps({"text_input": "Slowly", "parameters": {"max_tokens": 4}}).encode()
    data = ("POST /v2/models/stories/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            "Connection: close\r\n\r\n" % len(body)).encode() + body
    with socket.create_connection(("127.0.0.1", HTTP), timeout=120) as s:
        for k in range(0, len(data), 8):
            s.sendall(data[k:k + 8])
            time.sleep(0.1)
        buf = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            buf += d
    record("slow", buf.startswith(b"HTTP/1.1 200"), buf[:40])


WORKERS = [w_generate, w_generate, w_stream, w_cancel, w_openai, w_grpc, w_grpc, w_bad, w_slow]


def loop(fn, k):
    i = k * 100000
    while time.time() < END:
        try:
            fn(i)
        except Exception as e:  # an exception is a lost request
            record(fn.__name__[2:], False, repr(e)[:120])
        i += 1


def proc_sample(pid):
    rss = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir("/proc/%d/fd" % pid))


def metric(name):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % METRICS, timeout=30).read()
    for line in text.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def main():
    global END, channel
    repo = tempfile.mkdtemp(prefix="cvllm_soak_")
    os.makedirs(os.path.join(repo, "stories", "1"))
    with open(os.path.join(repo, "stories", "config.pbtxt"), "w") as f:
        f.write('backend: "vllm"\ninstance_group [ { count: 1 kind: KIND_MODEL } ]\n'
                'parameters: { key: "REPORT_CUSTOM_METRICS" value: { string_value: "true" } }\n')
    with open(os.path.join(repo, "stories", "1", "model.json"), "w") as f:
        # a 32 MiB KV cache: every block is touched within the warm-up
        json.dump({"model": args.model, "kv_cache_memory_bytes": 32 << 20}, f)
    log_path = os.path.join(tempfile.gettempdir(), "cvllm_soak_server_%d.log" % os.getpid())
    print("server log: %s" % log_path, flush=True)
    log = open(log_path, "w")
    proc = subprocess.Popen([args.server, "--model-repository=" + repo, "--http-port=%d" % HTTP,
                             "--grpc-port=%d" % GRPC, "--metrics-port=%d" % METRICS,
                             "--threads=1"], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/v2/health/ready" % HTTP, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        channel = grpc.insecure_channel("127.0.0.1:%d" % GRPC)
        t_start = time.time()
        END = t_start + args.minutes * 60
        threads = [threading.Thread(target=loop, args=(fn, k)) for k, fn in enumerate(WORKERS)]
        for t in threads:
            t.start()
        rows = []
        last_done = 0
        while time.time() < END:
            time.sleep(min(10, max(0, END - time.time())))
            rss, fds = proc_sample(proc.pid)
            now = time.time()
            with lock:
                done = sum(s[0] for s in stats.values())
                lost = sum(s[1] for s in stats.values())
                lat = [l for t, l in latencies if t >= now - 10]
            load = os.getloadavg()[0]
            rows.append((now - t_start, rss, fds, done - last_done, lost, pct(lat, 50),
                         pct(lat, 99), load))
            last_done = done
            print("%6.0f s  rss %7d KiB  fds %4d  reqs %5d  lost %d  p50 %.3f  p99 %.3f  "
                  "load %.1f" % rows[-1], flush=True)
        for t in threads:
            t.join()
        time.sleep(2)  # outputs of aborted requests drain
        running = metric("vllm:num_requests_running")
        cache = metric("vllm:gpu_cache_usage_perc")
        rss, fds = proc_sample(proc.pid)
    finally:
        proc.terminate()
        rc = proc.wait(timeout=120)
        shutil.rmtree(repo, True)
    report(rows, running, cache, rc, (rss, fds))


def report(rows, running, cache, rc, end_sample):
    with open(args.out + ".dat", "w") as f:
        f.write("# seconds rss_kib fds requests lost p50_s p99_s load1\n")
        for r in rows:
            f.write("%.0f %d %d %d %d %.4f %.4f %.2f\n" % r)
    warm = [r for r in rows if r[0] >= 120] or rows
    rss_w = [r[1] for r in warm]
    total = sum(s[0] for s in stats.values())
    lost = sum(s[1] for s in stats.values())
    with open(args.out + ".md", "w") as f:
        f.write("# Soak: %g minutes of mixed traffic (bench/hardening/soak.py)\n\n" %
                args.minutes)
        f.write("Model %s; load average (1 min) over the run: %.1f to %.1f on %d CPUs.\n\n" %
                (os.path.basename(args.model), min(r[7] for r in rows), max(r[7] for r in rows),
                 os.cpu_count()))
        f.write("| | value |\n|---|---|\n")
        f.write("| requests answered | %d |\n| requests lost | %d |\n" % (total, lost))
        f.write("| RSS after warm-up (2 min) min / max | %d / %d KiB (%+.1f%%) |\n" %
                (min(rss_w), max(rss_w), 100.0 * (max(rss_w) - min(rss_w)) / min(rss_w)))
        f.write("| RSS / open descriptors at the end | %d KiB / %d |\n" % end_sample)
        f.write("| descriptors min / max | %d / %d |\n" %
                (min(r[2] for r in rows), max(r[2] for r in rows)))
        f.write("| vllm:num_requests_running after the load | %s |\n" % running)
        f.write("| vllm:gpu_cache_usage_perc after the load (KV blocks in use) | %s |\n" % cache)
        f.write("| server exit status on SIGTERM | %d |\n\n" % rc)
        f.write("| kind | answered | lost |\n|---|---|---|\n")
        for k in sorted(stats):
            f.write("| %s | %d | %d |\n" % (k, stats[k][0], stats[k][1]))
        if lost_detail:
            f.write("\nFirst lost requests:\n\n" + "".join("- %s\n" % d for d in lost_detail))
        f.write("\n/generate latency per 10 s window (seconds):\n\n"
                "| t (s) | RSS KiB | fds | requests | p50 | p99 | load |\n"
                "|---|---|---|---|---|---|---|\n")
        for r in rows:
            f.write("| %.0f | %d | %d | %d | %.3f | %.3f | %.1f |\n" %
                    (r[0], r[1], r[2], r[3], r[5], r[6], r[7]))
    if shutil.which("gnuplot"):
        subprocess.run(["gnuplot"], input=(
            "set terminal png size 900,400\nset output '%s_rss.png'\n"
            "set xlabel 'seconds'\nset ylabel 'RSS (MiB)'\nset y2label 'open descriptors'\n"
            "set yrange [0:*]\nset y2range [0:*]\n"
            "set y2tics\nset ytics nomirror\nset key bottom right\n"
            "plot '%s.dat' using 1:($2/1024) with lines title 'RSS', "
            "'' using 1:3 axes x1y2 with lines title 'descriptors'\n" %
            (args.out, args.out)).encode(), check=False)
    print("wrote %s.md" % args.out)


if __name__ == "__main__":
    main()
