#!/bin/bash
# async_scheduling off vs on through cvllm-bench --backend inprocess on the CPU
# (bench/results/async_scheduling.md), from the repository root: ROUNDS
# rounds, each both ways, concurrency 1 (20 prompts) and 16 (64 prompts),
# 128 in / 128 out. Prints "round async concurrency total-tok/s TPOT-p50-ms
# TTFT-p50-ms" a line.
set -eu
OUT=${OUT:-/tmp/cvllm-async-ab}
mkdir -p "$OUT"
BUILD=${1:-build}; MODEL=$(realpath "${MODEL:-samples/models/cvllm-kjv-4m}"); ROUNDS=${ROUNDS:-3}
for r in $(seq 1 $ROUNDS); do
  for mode in false true; do
    rm -rf $OUT/repo && mkdir -p $OUT/repo/m/1 && echo 'backend: "vllm"' > $OUT/repo/m/config.pbtxt
    echo "{\"model\": \"$MODEL\", \"async_scheduling\": $mode}" > $OUT/repo/m/1/model.json
    for conc in 1 16; do
      n=$((conc == 1 ? 20 : 64))
      $BUILD/bin/cvllm-bench --backend inprocess --model-repository $OUT/repo --threads 2 --model m \
        --dataset-name random --random-input-len 128 --random-output-len 128 --num-prompts $n --num-warmups 2 \
        --max-concurrency $conc --ignore-eos --disable-progress --seed $r --result-file $OUT/r.json > $OUT/log.txt 2>&1
      echo "$r $mode c$conc $(grep -E 'Total token throughput' $OUT/log.txt | awk '{print $NF}') $(grep -E 'Median TPOT' $OUT/log.txt | awk '{print $NF}') $(grep -E 'Median TTFT' $OUT/log.txt | awk '{print $NF}')"
    done
  done
done
