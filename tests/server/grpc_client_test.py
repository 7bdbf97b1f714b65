#!/usr/bin/python3
"""gRPC client test of cvllm-server, written from the protocol (Triton's
grpc_service.proto and docs/PROTOCOL.md), not from the server's code.

Uses Debian's python3-grpcio and message classes generated at run time by
protoc from proto/*.proto; the stubs are plain grpc.Channel method handles.
Checks raw BYTES/BOOL tensor encoding, ids echoed, triton_final_response,
triton_enable_empty_final_response, half-close -> OK, error messages,
ModelInfer -> UNIMPLEMENTED and cancel -> CANCELLED with the engine request
aborted. Runs a server on free loopback ports over a temporary repository
pointing at the shipped samples/models/cvllm-kjv-4m."""
import atexit
import json
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

import grpc

SRC = os.environ.get("CVLLM_SOURCE_DIR", os.getcwd())
BIN = os.environ.get("CVLLM_BIN_DIR", os.path.join(SRC, "build", "bin"))

GEN_DIR = tempfile.mkdtemp(prefix="cvllm_pb_")
atexit.register(shutil.rmtree, GEN_DIR, True)
subprocess.check_call(["protoc", "-I", os.path.join(SRC, "proto"), "--python_out", GEN_DIR,
                       "model_config.proto", "grpc_service.proto", "health.proto"])
sys.path.insert(0, GEN_DIR)
import grpc_service_pb2 as pb  # noqa: E402
import health_pb2  # noqa: E402

SERVICE = "/inference.GRPCInferenceService/"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bytes_tensor(value):
    """Raw BYTES: a 4-byte little-endian length, then the bytes."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return struct.pack("<I", len(data)) + data


def decode_bytes(raw):
    """All elements of a raw BYTES tensor."""
    out, off = [], 0
    while off < len(raw):
        (n,) = struct.unpack_from("<I", raw, off)
        out.append(raw[off + 4:off + 4 + n].decode("utf-8"))
        off += 4 + n
    return out


def infer_request(model, rid, prompt, stream=True, sampling=None, exclude=None,
                  empty_final=False, extra_bools=()):
    req = pb.ModelInferRequest(model_name=model, id=rid)
    inputs = [("text_input", "BYTES", bytes_tensor(prompt)),
              ("stream", "BOOL", b"\x01" if stream else b"\x00")]
    if sampling is not None:
        inputs.append(("sampling_parameters", "BYTES", bytes_tensor(json.dumps(sampling))))
    if exclude is not None:
        inputs.append(("exclude_input_in_output", "BOOL", b"\x01" if exclude else b"\x00"))
    for name in extra_bools:
        inputs.append((name, "BOOL", b"\x01"))
    for name, dtype, raw in inputs:
        t = req.inputs.add()
        t.name, t.datatype = name, dtype
        t.shape.append(1)
        req.raw_input_contents.append(raw)
    if empty_final:
        req.parameters["triton_enable_empty_final_response"].bool_param = True
    return req


def outputs_of(resp):
    """{name: raw bytes} of one ModelInferResponse."""
    return {o.name: resp.raw_output_contents[i] for i, o in enumerate(resp.outputs)}


class Server:
    def __init__(self):
        self.repo = tempfile.mkdtemp(prefix="cvllm_grpc_repo_")
        atexit.register(shutil.rmtree, self.repo, True)
        os.makedirs(os.path.join(self.repo, "kjv", "1"))
        with open(os.path.join(self.repo, "kjv", "config.pbtxt"), "w") as f:
            f.write('backend: "vllm"\ninstance_group [ { count: 1 kind: KIND_MODEL } ]\n')
        with open(os.path.join(self.repo, "kjv", "1", "model.json"), "w") as f:
            json.dump({"model": os.path.join(SRC, "samples", "models", "cvllm-kjv-4m"),
                       "gpu_memory_utilization": 0.5}, f)
        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        self.log_path = os.path.join(self.repo, "server.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "cvllm-server"), "--model-repository=" + self.repo,
             "--http-port=%d" % self.http, "--grpc-port=%d" % self.grpc,
             "--metrics-port=%d" % self.metrics, "--threads=1"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/v2/health/ready" % self.http,
                                       timeout=1)
                break
            except OSError:
                if self.proc.poll() is not None:
                    with open(self.log_path) as f:
                        raise RuntimeError("server exited: " + f.read())
                time.sleep(0.05)
        self.channel = grpc.insecure_channel("127.0.0.1:%d" % self.grpc)

    def unary(self, method, req, resp_cls):
        call = self.channel.unary_unary(SERVICE + method,
                                        request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=resp_cls.FromString)
        return call(req, timeout=30)

    def stream(self, requests, timeout=60):
        call = self.channel.stream_stream(
            SERVICE + "ModelStreamInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.ModelStreamInferResponse.FromString)
        return call(requests, timeout=timeout)

    def generate_http(self, body):
        req = urllib.request.Request("http://127.0.0.1:%d/v2/models/kjv/generate" % self.http,
                                     data=json.dumps(body).encode(), method="POST")
        return json.loads(urllib.request.urlopen(req, timeout=60).read())

    def stop(self):
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=60)
        self.log.close()
        return rc


SERVER = None


class DrainTest(unittest.TestCase):
    def test_sigterm_drains_stream_then_exit_0(self):
        """SIGTERM mid-stream: the request still gets every response, the
        half-closed stream ends OK, the server exits 0."""
        s = Server()
        req = infer_request("kjv", "d1", "Once upon a time",
                            sampling={"max_tokens": 64, "ignore_eos": True})
        call = s.stream(iter([req]))
        got = [next(call)]
        s.proc.send_signal(signal.SIGTERM)
        got.extend(call)  # ends without an exception: status OK
        self.assertEqual(len(got), 64)
        finals = [r.infer_response.parameters["triton_final_response"].bool_param for r in got]
        self.assertEqual(finals, [False] * 63 + [True])
        self.assertEqual(s.proc.wait(timeout=60), 0)
        s.channel.close()
        s.log.close()


class GrpcTest(unittest.TestCase):
    def test_health_metadata_config_index(self):
        s = SERVER
        self.assertTrue(s.unary("ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse).live)
        check = s.channel.unary_unary("/grpc.health.v1.Health/Check",
                                      request_serializer=lambda m: m.SerializeToString(),
                                      response_deserializer=health_pb2.HealthCheckResponse.FromString)
        self.assertEqual(check(health_pb2.HealthCheckRequest(), timeout=30).status,
                         health_pb2.HealthCheckResponse.SERVING)
        self.assertTrue(s.unary("ServerReady", pb.ServerReadyRequest(),
                                pb.ServerReadyResponse).ready)
        self.assertTrue(s.unary("ModelReady", pb.ModelReadyRequest(name="kjv"),
                                pb.ModelReadyResponse).ready)
        self.assertFalse(s.unary("ModelReady", pb.ModelReadyRequest(name="nope"),
                                 pb.ModelReadyResponse).ready)
        md = s.unary("ModelMetadata", pb.ModelMetadataRequest(name="kjv"),
                     pb.ModelMetadataResponse)
        self.assertEqual(md.name, "kjv")
        self.assertEqual(list(md.versions), ["1"])
        self.assertEqual([(t.name, t.datatype, list(t.shape)) for t in md.inputs][:3],
                         [("text_input", "BYTES", [1]), ("stream", "BOOL", [1]),
                          ("sampling_parameters", "BYTES", [1])])
        self.assertEqual([(t.name, t.datatype) for t in md.outputs][0], ("text_output", "BYTES"))
        cfg = s.unary("ModelConfig", pb.ModelConfigRequest(name="kjv"),
                      pb.ModelConfigResponse).config
        self.assertEqual(cfg.backend, "vllm")
        self.assertEqual(cfg.max_batch_size, 0)
        self.assertTrue(cfg.model_transaction_policy.decoupled)
        self.assertEqual(len(cfg.input), 9)
        idx = s.unary("RepositoryIndex", pb.RepositoryIndexRequest(), pb.RepositoryIndexResponse)
        self.assertEqual([(m.name, m.version, m.state) for m in idx.models],
                         [("kjv", "1", "READY")])
        stats = s.unary("ModelStatistics", pb.ModelStatisticsRequest(name="kjv"),
                        pb.ModelStatisticsResponse).model_stats
        self.assertEqual([(m.name, m.version) for m in stats], [("kjv", "1")])
        self.assertEqual(stats[0].inference_count,
                         stats[0].inference_stats.success.count)
        with self.assertRaises(grpc.RpcError) as e:
            s.unary("ModelStatistics", pb.ModelStatisticsRequest(name="nope"),
                    pb.ModelStatisticsResponse)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(grpc.RpcError) as e:
            s.unary("ModelMetadata", pb.ModelMetadataRequest(name="nope"),
                    pb.ModelMetadataResponse)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(e.exception.details(), "Request for unknown model: 'nope' is not found")

    def test_repository_load_refused_without_explicit_mode(self):
        for method, req, resp in (
                ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="kjv"),
                 pb.RepositoryModelLoadResponse),
                ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="kjv"),
                 pb.RepositoryModelUnloadResponse)):
            with self.assertRaises(grpc.RpcError) as e:
                SERVER.unary(method, req, resp)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
            # Triton's message and code (UNAVAILABLE; HTTP 503, test_http.c).
            self.assertEqual(e.exception.details(),
                             "explicit model load / unload is not allowed if polling is enabled")

    def test_message_over_4_mib(self):
        """A 5 MiB prompt reaches the engine (gRPC's default 4 MiB receive
        limit is lifted, as in tritonserver) and is refused there."""
        big = "Once upon a time " * (5 * 1024 * 1024 // 17)
        (r,) = list(SERVER.stream(iter([infer_request("kjv", "big", big)])))
        self.assertEqual(r.infer_response.id, "big")
        self.assertTrue(r.error_message.startswith(
            "Error generating stream: The decoder prompt (length "), r.error_message)

    def test_model_infer_unimplemented(self):
        with self.assertRaises(grpc.RpcError) as e:
            SERVER.unary("ModelInfer", infer_request("kjv", "1", "x", stream=False),
                         pb.ModelInferResponse)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertEqual(e.exception.details(),
                         "ModelInfer RPC doesn't support models with decoupled transaction "
                         "policy")

    def test_stream_raw_bytes_ids_and_final_flag(self):
        sampling = {"temperature": "0", "max_tokens": "12", "ignore_eos": "true"}
        ref = SERVER.generate_http({"text_input": "Once upon a time", "exclude_input_in_output":
                                    True, "parameters": {"max_tokens": 12, "temperature": 0,
                                                         "ignore_eos": True}})["text_output"]
        reqs = [infer_request("kjv", "17", "Once upon a time", sampling=sampling,
                              extra_bools=("return_finish_reason", "return_num_output_tokens")),
                infer_request("kjv", "18", "Once upon a time", stream=False,
                              sampling=sampling)]
        by_id = {}
        for r in SERVER.stream(iter(reqs)):  # the iterator's end is the half-close
            self.assertEqual(r.error_message, "")
            ir = r.infer_response
            self.assertEqual(ir.model_name, "kjv")
            self.assertEqual(ir.model_version, "1")
            by_id.setdefault(ir.id, []).append(ir)
        self.assertEqual(sorted(by_id), ["17", "18"])
        streamed = by_id["17"]
        self.assertEqual(len(streamed), 12)
        finals = [ir.parameters["triton_final_response"].bool_param for ir in streamed]
        self.assertEqual(finals, [False] * 11 + [True])
        text = "".join(decode_bytes(outputs_of(ir)["text_output"])[0] for ir in streamed)
        self.assertEqual(text, ref)
        reasons = [decode_bytes(outputs_of(ir)["finish_reason"])[0] for ir in streamed]
        self.assertEqual(reasons, ["None"] * 11 + ["length"])
        counts = [struct.unpack("<I", outputs_of(ir)["num_output_tokens"])[0] for ir in streamed]
        self.assertEqual(counts, [1] * 12)
        self.assertEqual([o.datatype for o in streamed[0].outputs], ["BYTES", "BYTES", "UINT32"])
        # Not streamed: one final response with the prompt prepended.
        (whole,) = by_id["18"]
        self.assertTrue(whole.parameters["triton_final_response"].bool_param)
        self.assertEqual(decode_bytes(outputs_of(whole)["text_output"]),
                         ["Once upon a time" + ref])
        self.assertEqual(list(whole.outputs[0].shape), [1])

    def test_empty_final_response(self):
        """triton_enable_empty_final_response (perf_analyzer, genai-perf):
        Triton adds an empty final response only where the backend marks a
        request final without a response; the vLLM backend's last data
        response carries the flag, so the responses are those without it."""
        sampling = {"max_tokens": 3, "ignore_eos": True, "temperature": 0}
        for stream in (True, False):
            got = {}
            for empty_final in (False, True):
                rs = list(SERVER.stream(iter([infer_request(
                    "kjv", "e1", "Once", stream=stream, sampling=sampling,
                    empty_final=empty_final)])))
                got[empty_final] = [
                    (r.infer_response.parameters["triton_final_response"].bool_param,
                     decode_bytes(outputs_of(r.infer_response)["text_output"]))
                    for r in rs]
                self.assertTrue(all(r.infer_response.id == "e1" for r in rs))
            self.assertEqual(got[True], got[False])
            self.assertEqual([f for f, _ in got[True]],
                             [False, False, True] if stream else [True])

    def test_stream_errors(self):
        reqs = [infer_request("kjv", "x1", "Once", stream=True, exclude=False),
                infer_request("nope", "x2", "Once"),
                infer_request("kjv", "x3", "Once", sampling={"bogus": 1})]
        got = {r.infer_response.id: r.error_message for r in SERVER.stream(iter(reqs))}
        self.assertEqual(got, {
            "x1": "Error generating stream: When streaming, `exclude_input_in_output` = False "
                  "is not allowed.",
            "x2": "Request for unknown model: 'nope' is not found",
            "x3": "Error generating stream: unknown sampling parameter 'bogus'",
        })

    def test_cancel(self):
        q = queue.Queue()
        q.put(infer_request("kjv", "c1", "Once upon a time",
                            sampling={"max_tokens": 500, "ignore_eos": True}))

        def requests():  # keeps the stream open until cancelled
            while True:
                item = q.get()
                if item is None:
                    return
                yield item

        call = SERVER.stream(requests())
        first = next(call)
        self.assertEqual(first.infer_response.id, "c1")
        call.cancel()
        q.put(None)
        with self.assertRaises(grpc.RpcError) as e:
            for _ in call:
                pass
        self.assertEqual(e.exception.code(), grpc.StatusCode.CANCELLED)
        deadline = time.time() + 20
        while time.time() < deadline:
            with open(SERVER.log_path) as f:
                log = f.read()
            if "[vllm] Successfully cancelled the request" in log:
                break
            time.sleep(0.05)
        self.assertIn("[vllm] Cancelling the request", log)
        self.assertIn("[vllm] Successfully cancelled the request", log)
        # The server keeps serving.
        out = SERVER.generate_http({"text_input": "Once", "parameters": {"max_tokens": 2}})
        self.assertTrue(out["text_output"].startswith("Once"))


def main():
    global SERVER
    SERVER = Server()
    try:
        result = unittest.main(exit=False, verbosity=2).result
    finally:
        rc = SERVER.stop()
    if rc != 0:
        print("server exit status %d (expected 0 after SIGTERM)" % rc)
        sys.exit(1)
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
