#!/usr/bin/env python3
"""Sample client for cvllm-server (or Triton with the vLLM backend) built on
tritonclient (pip install tritonclient[grpc]).

Sends every prompt of --input-prompts over gRPC ModelStreamInfer with the
sampling parameters {"temperature": "0.1", "top_p": "0.95", "max_tokens":
"100"}, request ids offset + len(prompts) * iteration + i, gathers the
streamed chunks per id into --results-file (separated by
"\\n\\n=========\\n\\n") and prints "PASS: vLLM example" or
"FAIL: vLLM example". cvllm ships the same client in C: build/bin/cvllm-client.
"""
import argparse
import json
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def make_request(prompt, request_id, args):
    inputs = []
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode("utf-8")], dtype=np.object_))
    inputs.append(text)
    stream = grpcclient.InferInput("stream", [1], "BOOL")
    stream.set_data_from_numpy(np.array([args.streaming_mode], dtype=bool))
    inputs.append(stream)
    sampling = {"temperature": "0.1", "top_p": "0.95", "max_tokens": "100"}
    if args.lora_name:
        sampling["lora_name"] = args.lora_name
    params = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
    params.set_data_from_numpy(np.array([json.dumps(sampling).encode("utf-8")], dtype=np.object_))
    inputs.append(params)
    if args.exclude_inputs_in_outputs:
        exclude = grpcclient.InferInput("exclude_input_in_output", [1], "BOOL")
        exclude.set_data_from_numpy(np.array([True], dtype=bool))
        inputs.append(exclude)
    outputs = [grpcclient.InferRequestedOutput("text_output")]
    return dict(model_name=args.model, inputs=inputs, outputs=outputs, request_id=str(request_id),
                enable_empty_final_response=True)


def run(args):
    with open(args.input_prompts) as f:
        prompts = [line.rstrip("\n") for line in f if line.strip()]
    results = {}
    errors = []
    responses = queue.Queue()

    def callback(result, error):
        responses.put((result, error))

    client = grpcclient.InferenceServerClient(url=args.url, verbose=args.verbose)
    client.start_stream(callback=callback, stream_timeout=args.stream_timeout)
    expected = 0
    for it in range(args.iterations):
        for i, prompt in enumerate(prompts):
            rid = args.offset + len(prompts) * it + i
            results[str(rid)] = []
            client.async_stream_infer(**make_request(prompt, rid, args))
            expected += 1
    finished = 0
    while finished < expected:
        result, error = responses.get()
        if error is not None:
            errors.append(str(error))
            finished += 1
            continue
        response = result.get_response()
        rid = response.id
        text = result.as_numpy("text_output")
        if text is not None:
            results[rid].extend(t.decode("utf-8") for t in text)
        if response.parameters["triton_final_response"].bool_param:
            finished += 1
    client.stop_stream()
    client.close()

    print("Storing results into `{}`...".format(args.results_file))
    with open(args.results_file, "w") as f:
        f.write("\n\n=========\n\n".join("".join(chunks) for chunks in results.values()))
    if errors or any(not chunks for chunks in results.values()):
        for e in errors:
            print(e)
        print("FAIL: vLLM example")
        return 1
    print("PASS: vLLM example")
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-m", "--model", default="vllm_model", help="model name")
    parser.add_argument("-v", "--verbose", action="store_true", default=False)
    parser.add_argument("-u", "--url", default="localhost:8001", help="gRPC host:port")
    parser.add_argument("-t", "--stream-timeout", type=float, default=None,
                        help="stream timeout in seconds")
    parser.add_argument("--offset", type=int, default=0, help="first request id")
    parser.add_argument("--input-prompts", default="prompts.txt")
    parser.add_argument("--results-file", default="results.txt")
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("-s", "--streaming-mode", action="store_true", default=False)
    parser.add_argument("--exclude-inputs-in-outputs", action="store_true", default=False)
    parser.add_argument("-l", "--lora-name", default=None)
    args = parser.parse_args()
    print("Loading inputs from `{}`...".format(args.input_prompts))
    try:
        sys.exit(run(args))
    except InferenceServerException as e:
        print(e)
        print("FAIL: vLLM example")
        sys.exit(1)


if __name__ == "__main__":
    main()
