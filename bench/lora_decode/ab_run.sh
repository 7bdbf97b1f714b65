#!/bin/bash
# Runs on the GPU machine (the device tool), from the repository root, after
# tests/gpu/run_lora.sh BUILD made $MODEL (or making it): every bench binary
# of BUILD/ab (bench/lora_decode/ab_build.sh) on the same L8B-shaped model
# with the arguments of bench/results/lora_decode.md, twice in alternating
# order (A B C, then C B A) so that a drift of the card's clocks shows as a
# difference between the two rounds, not between the binaries. Each run's
# table goes to $OUT/ab_LABEL_ROUND.md (per-phase times in .err); the step
# times are printed last, one line per binary and round.
set -u
BUILD=${1:-build-cuda}
OUT=${OUT:-/tmp/cvllm-lora-out}
MODEL=${MODEL:-/tmp/l8b}
mkdir -p "$OUT" /tmp/cvllm-ab
cublas=/usr/local/cuda/lib64/libcublas.so.13
[ -e "$cublas" ] || cublas=$(find / -xdev -name libcublas.so.13 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$PWD/$BUILD/gpu-lib:$(dirname "$cublas"):${LD_LIBRARY_PATH:-}"
if [ ! -e "$MODEL/config.json" ]; then
    timeout 200 "$BUILD/bin/cvllm-dummy-model" --shape L8B --dtype bf16 --out "$MODEL" \
        > "$OUT/dummy.log" 2>&1 || tail -3 "$OUT/dummy.log"
fi
labels=()
for gz in "$BUILD"/ab/*.gz; do
    [ -e "$gz" ] || { echo "ab_run.sh: no binaries in $BUILD/ab (run ab_build.sh)"; exit 2; }
    label=$(basename "$gz" .gz)
    gunzip -c "$gz" > "/tmp/cvllm-ab/$label" && chmod +x "/tmp/cvllm-ab/$label"
    labels+=("$label")
done
order=("${labels[@]}")
for ((i = ${#labels[@]} - 1; i >= 0; i--)); do
    order+=("${labels[i]}")
done
round=1
for n in "${!order[@]}"; do
    [ "$n" -eq "${#labels[@]}" ] && round=2
    label=${order[n]}
    timeout 300 "/tmp/cvllm-ab/$label" --device cuda --seqs 64 --rank 16 --prompt 256 --steps 32 \
        --reps 3 "$MODEL" > "$OUT/ab_${label}_$round.md" 2> "$OUT/ab_${label}_$round.err"
    echo "$label round $round rc=$?"
done
echo "== step ms (adapters 0 / 1 / 4 / 16) and 16 vs none"
for label in "${labels[@]}"; do
    for round in 1 2; do
        printf '%-12s round %d: ' "$label" "$round"
        awk -F'|' '/^\| [0-9]+ \|/ { ms = ms $3 "/"; r = $5 } END { print ms " " r }' \
            "$OUT/ab_${label}_$round.md"
    done
done
