#!/usr/bin/python3
"""gRPC hardening checks of cvllm-server (issue 16), with the client and
server of grpc_client_test.py: string fields that are not valid UTF-8 or
hold a NUL are refused with INVALID_ARGUMENT (never echoed back, never
truncated to another model's name), on unary calls and on the stream, and a
uint64 max_tokens of 2^64-1 is refused rather than wrapped to -1."""
import sys
import threading
import time
import unittest

import grpc

import grpc_client_test as gct
from grpc_client_test import SERVICE, Server, infer_request, pb

SERVER = None


def raw_unary(method, payload):
    """A unary call with hand-made message bytes (what a protobuf library
    would refuse to serialize)."""
    call = SERVER.channel.unary_unary(SERVICE + method, request_serializer=None,
                                      response_deserializer=None)
    return call(payload, timeout=30)


def raw_stream(payloads):
    call = SERVER.channel.stream_stream(
        SERVICE + "ModelStreamInfer", request_serializer=None,
        response_deserializer=pb.ModelStreamInferResponse.FromString)
    return list(call(iter(payloads), timeout=60))


class StringFieldTest(unittest.TestCase):
    def expect_invalid(self, method, payload, details):
        with self.assertRaises(grpc.RpcError) as e:
            raw_unary(method, payload)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(e.exception.details(), details)

    def test_invalid_utf8_model_name(self):
        self.expect_invalid("ModelReady", b"\x0a\x04kjv\xff",
                            "field 'name' of inference.ModelReadyRequest is not valid UTF-8 "
                            "(byte 3)")
        self.expect_invalid("ModelMetadata", b"\x0a\x05\xc0\xafabc",
                            "field 'name' of inference.ModelMetadataRequest is not valid UTF-8 "
                            "(byte 0)")

    def test_nul_in_model_name(self):
        self.expect_invalid("ModelReady", b"\x0a\x08kjv\x00evil",
                            "field 'name' of inference.ModelReadyRequest holds a NUL byte "
                            "(byte 3)")
        # A map entry nested in the message is checked too.
        req = pb.RepositoryModelLoadRequest(model_name="kjv")
        req.parameters["conf\x01g"].string_param = "x"
        raw = req.SerializeToString().replace(b"conf\x01g", b"conf\x00g")
        self.expect_invalid("RepositoryModelLoad", raw,
                            "field 'key' of inference.RepositoryModelLoadRequest.ParametersEntry "
                            "holds a NUL byte (byte 4)")

    def test_stream_refuses_then_keeps_serving(self):
        bad = infer_request("kjvX", "b1", "Once", stream=False,
                            sampling={"max_tokens": 2}).SerializeToString()
        bad = bad.replace(b"kjvX", b"kjv\xfe")
        good = infer_request("kjv", "g1", "Once", stream=False,
                             sampling={"max_tokens": 2}).SerializeToString()
        got = raw_stream([bad, good])
        self.assertEqual(len(got), 2)
        self.assertEqual(got[0].error_message,
                         "field 'model_name' of inference.ModelInferRequest is not valid UTF-8 "
                         "(byte 3)")
        self.assertEqual(got[0].infer_response.model_name, "")
        self.assertEqual(got[1].error_message, "")
        self.assertEqual(got[1].infer_response.id, "g1")


class Uint64ParamTest(unittest.TestCase):
    def test_max_tokens_2_64_minus_1(self):
        req = infer_request("kjv", "u1", "Once", stream=False)
        req.parameters["max_tokens"].uint64_param = 2**64 - 1
        got = list(SERVER.stream(iter([req])))
        self.assertEqual(got[0].error_message,
                         "parameter 'max_tokens': uint64_param 18446744073709551615 is out of "
                         "range")
        req.parameters["max_tokens"].uint64_param = 3
        got = list(SERVER.stream(iter([req])))
        self.assertEqual(got[0].error_message, "")


class LongPromptTest(unittest.TestCase):
    def test_long_prompt_does_not_stall_other_calls(self):
        """A 40 MB prompt is tokenized on the worker pool, not on the
        completion-queue thread: a unary call and another stream are
        answered while it is still being tokenized."""
        big = infer_request("kjv", "big", "In the b" * (5 << 20), stream=False,
                            sampling={"max_tokens": 1})
        big_got = []
        written = threading.Event()

        def requests():
            yield big
            written.set()  # gRPC asks for the next message: big is written out

        t = threading.Thread(target=lambda: big_got.extend(SERVER.stream(requests(),
                                                                         timeout=300)))
        t.start()
        self.assertTrue(written.wait(300))
        time.sleep(0.5)  # the server has the message and is tokenizing it
        live = SERVER.channel.unary_unary(
            SERVICE + "ServerLive", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.ServerLiveResponse.FromString)
        self.assertTrue(live(pb.ServerLiveRequest(), timeout=300).live)
        small = infer_request("kjv", "small", "Once", stream=False, sampling={"max_tokens": 2})
        got = list(SERVER.stream(iter([small]), timeout=300))
        self.assertEqual(got[0].error_message, "")
        self.assertEqual(got[0].infer_response.id, "small")
        self.assertTrue(t.is_alive())  # still tokenizing
        t.join()
        self.assertEqual(len(big_got), 1)
        self.assertEqual(big_got[0].infer_response.id, "big")
        self.assertEqual(big_got[0].error_message,
                         "Error generating stream: The decoder prompt (length 15728641) is "
                         "longer than the maximum model length of 512.")


def main():
    global SERVER
    SERVER = gct.SERVER = Server()
    try:
        result = unittest.main(exit=False, verbosity=2).result
    finally:
        SERVER.stop()
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
