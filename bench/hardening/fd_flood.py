#!/usr/bin/python3
"""Descriptor-exhaustion probe of cvllm-server (issue 16, defect 1).

Starts SERVER (default build/bin/cvllm-server) on the shipped kjv model with
ports from PORT (PORT, PORT+1, PORT+2), lowers its RLIMIT_NOFILE to 48 above
what it uses, then holds 160 connections (3/4 on HTTP with a partial request
line, 1/4 on gRPC). Prints the server's CPU time over 3 s of exhaustion, its
log size, and whether gRPC ServerLive and HTTP /v2/health/live answer after
the clients leave. Needs Debian's python3-grpcio.

usage: bench/hardening/fd_flood.py [SERVER] [PORT]"""
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import grpc

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(SRC, "build", "bin", "cvllm-server")
port0 = int(sys.argv[2]) if len(sys.argv) > 2 else 18700

repo = tempfile.mkdtemp(prefix="cvllm_flood_")
os.makedirs(os.path.join(repo, "kjv", "1"))
with open(os.path.join(repo, "kjv", "config.pbtxt"), "w") as f:
    f.write('backend: "vllm"\ninstance_group [ { count: 1 kind: KIND_MODEL } ]\n')
with open(os.path.join(repo, "kjv", "1", "model.json"), "w") as f:
    json.dump({"model": os.path.join(SRC, "samples", "models", "cvllm-kjv-4m")}, f)
log_path = os.path.join(repo, "server.log")
log = open(log_path, "w")
p = subprocess.Popen([binary, "--model-repository=" + repo, "--http-port=%d" % port0,
                      "--grpc-port=%d" % (port0 + 1), "--metrics-port=%d" % (port0 + 2)],
                     stdout=log, stderr=subprocess.STDOUT)
try:
    for _ in range(200):
        try:
            urllib.request.urlopen("http://127.0.0.1:%d/v2/health/ready" % port0, timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    base = len(os.listdir("/proc/%d/fd" % p.pid))
    resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (base + 48, base + 48))
    socks = []
    for i in range(160):
        s = socket.create_connection(("127.0.0.1", port0 + 1 if i % 4 == 3 else port0))
        if i % 4 != 3:
            s.sendall(b"GET /v2/hea")
        socks.append(s)
    c0 = open("/proc/%d/stat" % p.pid).read().split()
    time.sleep(3)
    c1 = open("/proc/%d/stat" % p.pid).read().split()
    cpu = (int(c1[13]) + int(c1[14]) - int(c0[13]) - int(c0[14])) / os.sysconf("SC_CLK_TCK")
    print("server CPU seconds over 3 s of exhaustion: %.2f" % cpu)
    print("server log bytes: %d" % os.path.getsize(log_path))
    for s in socks:
        s.close()
    time.sleep(1)
    ch = grpc.insecure_channel("127.0.0.1:%d" % (port0 + 1))
    try:
        live = ch.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=10)
        print("gRPC ServerLive afterwards:", "live" if live == b"\x08\x01" else live)
    except grpc.RpcError as e:
        print("gRPC ServerLive afterwards: FAILED", e.code())
    try:
        st = urllib.request.urlopen("http://127.0.0.1:%d/v2/health/live" % port0, timeout=10).status
        print("HTTP /v2/health/live afterwards:", st)
    except OSError as e:
        print("HTTP /v2/health/live afterwards: FAILED", e)
finally:
    p.terminate()
    p.wait()
    log.close()
    shutil.rmtree(repo, True)
