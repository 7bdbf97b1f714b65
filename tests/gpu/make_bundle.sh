#!/bin/bash
# Builds what tests/gpu/run_on_gpu.sh, tests/gpu/run_lora.sh and
# bench/gpu_serving/run.sh need into BUILD (default build-cuda) on this machine: the CUDA targets, the shared libraries the GPU machine's
# image lacks (BUILD/gpu-lib) and a copy of stories260K (BUILD/gpu-shared).
# Then: device run with carry [BUILD/bin, BUILD/tests, BUILD/gpu-lib,
# BUILD/gpu-shared] and command "tests/gpu/run_on_gpu.sh BUILD".
set -eu
BUILD=${1:-build-cuda}
SHARED=${CVLLM_SHARED:-../shared}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$BUILD" -j2 --target test_gpu_fixtures test_gpu_engine cvllm-bench-gpu-decode \
    cvllm-dummy-model cvllm-server cvllm-bench test_gpu_server_stream test_gpu_attention test_gpu_gemv \
    test_gpu_lora cvllm-bench-lora-decode test_gpu_sample
mkdir -p "$BUILD/gpu-lib" "$BUILD/gpu-shared/models" "$BUILD/gpu-shared/tokenizers"
# Every shared library the programs use that is not the C runtime or CUDA's
# (the GPU machine's image has those): gRPC, libevent, jansson, ...
for prog in "$BUILD/bin/cvllm-server" "$BUILD/bin/cvllm-bench" "$BUILD/tests/test_gpu_engine" \
    "$BUILD/tests/test_gpu_lora" \
    "$BUILD/tests/test_gpu_server_stream"; do
    ldd "$prog" | awk '$3 ~ /^\// { print $3 }'
done | sort -u | grep -vE '/(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|ld-linux[^/]*|libcublas[^/]*|libcuda)\.so' |
    while read -r lib; do cp -L "$lib" "$BUILD/gpu-lib/"; done
rm -rf "$BUILD/gpu-shared/models/stories260K" "$BUILD/gpu-shared/tokenizers/gpt2"
cp -r "$SHARED/models/stories260K" "$BUILD/gpu-shared/models/"
cp -r "$SHARED/tokenizers/gpt2" "$BUILD/gpu-shared/tokenizers/"
du -sh "$BUILD/bin" "$BUILD/tests" "$BUILD/gpu-lib" "$BUILD/gpu-shared"
