#!/usr/bin/env bash
# Runs `memrag bench` with the settings of the README's "Performance" section:
# 300 SQuAD v1.1 dev questions, k = 5 retrieved chunks out of 500 passages, every context mode
# (text, slots, K/V memory exact / int8 / with cross-chunk recovery / pruned, truncated, none).
#
# Usage:  benchmarks/run_bench.sh [more `memrag bench` options, e.g. --compressor DIR or --untrained]
# Settings (environment variables, defaults in brackets):
#   DATA         [../shared/data/squad_v1.1/dev.jsonl.gz]
#   LIMIT        [300]        questions
#   K            [5]          chunks retrieved per question
#   CORPUS_SIZE  [500]        passages in the store
#   DEVICE       [cpu]        cpu, cuda, cuda:N
#   DTYPE        [float32]    float32 (fastest on CPUs without AMX, e.g. AVX2-only) or bfloat16
#                             (about 2x faster on CPUs with AMX, and on GPUs)
#   MODES        [text,slots,kv-exact,kv-exact:int8,kv-exact:int8+cacheblend,kv-exact:int8+cacheblend:0.1:leading,
#                 kv-pruned:0.5,kv-pruned,truncated,none]
#   THREADS      [0]          torch CPU threads (0: torch's default, one per core)
#   OUT          [benchmarks/results/bench-$DEVICE-$DTYPE]
# Writes bench.json, bench.md, samples.jsonl, f1_vs_ttft.png, f1_vs_bytes.png and log.txt to OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data/squad_v1.1/dev.jsonl.gz}
LIMIT=${LIMIT:-300}
K=${K:-5}
CORPUS_SIZE=${CORPUS_SIZE:-500}
DEVICE=${DEVICE:-cpu}
DTYPE=${DTYPE:-float32}
MODES=${MODES:-text,slots,kv-exact,kv-exact:int8,kv-exact:int8+cacheblend,kv-exact:int8+cacheblend:0.1:leading,kv-pruned:0.5,kv-pruned,truncated,none}
THREADS=${THREADS:-0}
OUT=${OUT:-benchmarks/results/bench-${DEVICE%%:*}-${DTYPE}}

mkdir -p "$OUT"
set -x
memrag bench \
    --data "$DATA" --limit "$LIMIT" --k "$K" --corpus-size "$CORPUS_SIZE" \
    --device "$DEVICE" --dtype "$DTYPE" --threads "$THREADS" --modes "$MODES" \
    --json-out "$OUT/bench.json" --samples-out "$OUT/samples.jsonl" \
    --markdown-out "$OUT/bench.md" --plots-dir "$OUT" \
    "$@" 2>&1 | tee "$OUT/log.txt"
