#!/bin/bash
# Builds cvllm-bench-lora-decode at several commits so that one device call
# times them all on the same warm GPU (tests/gpu/run_lora.sh runs every
# binary it finds in BUILD/ab after its own bench): a change to the LoRA
# path is judged against its baseline, never against a number from another
# session or card.
#
#   bench/lora_decode/ab_build.sh BUILD LABEL=COMMIT [LABEL=COMMIT ...]
#   e.g. bench/lora_decode/ab_build.sh build-cuda base=87e1275 fp16y=d85f7b5
#
# One scratch worktree (removed at the end) checks out each commit in turn
# and rebuilds the bench incrementally in its own build directory; each
# binary is stripped and gzipped to BUILD/ab/LABEL.gz (about 3 MB: the
# device tool carries 64 MiB in all).
set -eu
BUILD=${1:?usage: ab_build.sh BUILD LABEL=COMMIT...}
shift
[ $# -ge 1 ] || { echo "ab_build.sh: no LABEL=COMMIT given" >&2; exit 2; }
SCRATCH=$(mktemp -d /tmp/cvllm-ab.XXXXXX)
cleanup() { git worktree remove --force "$SCRATCH" 2> /dev/null || rm -rf "$SCRATCH"; }
trap cleanup EXIT
mkdir -p "$BUILD/ab"
first=1
for pair in "$@"; do
    label=${pair%%=*} commit=${pair#*=}
    if [ -z "$label" ] || [ "$label" = "$pair" ]; then
        echo "ab_build.sh: '$pair' is not LABEL=COMMIT" >&2
        exit 2
    fi
    if [ $first = 1 ]; then
        rmdir "$SCRATCH"
        git worktree add --detach "$SCRATCH" "$commit" > /dev/null
        cmake -S "$SCRATCH" -B "$SCRATCH/build-ab" -DCMAKE_BUILD_TYPE=Release > /dev/null
        first=0
    else
        git -C "$SCRATCH" checkout --quiet --detach "$commit"
    fi
    echo "== $label ($commit)"
    nice cmake --build "$SCRATCH/build-ab" -j2 --target cvllm-bench-lora-decode > /dev/null
    strip -o "$BUILD/ab/$label" "$SCRATCH/build-ab/bin/cvllm-bench-lora-decode"
    gzip -f "$BUILD/ab/$label"
done
ls -la "$BUILD/ab"
