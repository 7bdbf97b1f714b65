# Thin wrapper over CMake. `make` builds build/ (release), `make test` runs the
# suite there, again under ASan+UBSan in build-asan/, and the engine and
# server tests under ThreadSanitizer in build-tsan/.
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
# The tests labelled gpu need a CUDA device: where none is visible they are
# left out (tests/gpu/run_on_gpu.sh runs them on a GPU machine) instead of
# counting as skipped, which CI refuses (.ci/run).
CTEST_GPU := $(if $(shell nvidia-smi -L 2>/dev/null),,-LE gpu)

.PHONY: all build asan tsan tsan-build test test-fast fuzz quickstart format clean

all: build

build:
	@scripts/install-deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null
	cmake --build build -j $(JOBS)

asan:
	@scripts/install-deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCVLLM_SANITIZE=ON $(CMAKE_FLAGS) >/dev/null
	cmake --build build-asan -j $(JOBS)

# The server and engine tests under ThreadSanitizer (the server has six
# kinds of thread); tests/tsan.supp names the races that are libraries' own.
TSAN_CTEST = TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp" \
	  ctest --test-dir build-tsan --output-on-failure -j $(JOBS) -R 'test_engine|test_server'

# The plain suite, the same suite under AddressSanitizer+UBSan, then the
# engine and server tests under ThreadSanitizer.
test: build asan tsan-build
	ctest --test-dir build --output-on-failure -j $(JOBS) $(CTEST_GPU)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --test-dir build-asan --output-on-failure -j $(JOBS) $(CTEST_GPU)
	$(TSAN_CTEST)

tsan-build:
	@scripts/install-deps
	cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DCVLLM_TSAN=ON -DCVLLM_CUDA=OFF $(CMAKE_FLAGS) >/dev/null
	cmake --build build-tsan -j $(JOBS)

tsan: tsan-build
	$(TSAN_CTEST)

test-fast: build
	ctest --test-dir build --output-on-failure -j $(JOBS) $(CTEST_GPU)

fuzz:
	@scripts/install-deps
	cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DCVLLM_FUZZ=ON >/dev/null
	cmake --build build-fuzz -j $(JOBS) --target fuzz
	cmake --build build-fuzz --target run-fuzz

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cu')

clean:
	rm -rf build build-asan build-tsan build-fuzz

# Build everything, then serve the shipped sample model and query it.
quickstart: build
	scripts/quickstart
