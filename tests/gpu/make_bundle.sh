#!/bin/bash
# Builds what tests/gpu/run_on_gpu.sh needs into BUILD (default build-cuda)
# on this machine: the CUDA targets, the shared libraries the GPU machine's
# image lacks (BUILD/gpu-lib) and a copy of stories260K (BUILD/gpu-shared).
# Then: device run with carry [BUILD/bin, BUILD/tests, BUILD/gpu-lib,
# BUILD/gpu-shared] and command "tests/gpu/run_on_gpu.sh BUILD".
set -eu
BUILD=${1:-build-cuda}
SHARED=${CVLLM_SHARED:-../shared}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$BUILD" -j2 --target test_gpu_fixtures test_gpu_engine cvllm-bench-gpu-decode \
    cvllm-dummy-model
mkdir -p "$BUILD/gpu-lib" "$BUILD/gpu-shared/models"
for lib in libjansson.so.4 libcmocka.so.0 libgomp.so.1 libpcre2-8.so.0 libutf8proc.so.2; do
    cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')" "$BUILD/gpu-lib/"
done
rm -rf "$BUILD/gpu-shared/models/stories260K"
cp -r "$SHARED/models/stories260K" "$BUILD/gpu-shared/models/"
du -sh "$BUILD/bin" "$BUILD/tests" "$BUILD/gpu-lib" "$BUILD/gpu-shared"
