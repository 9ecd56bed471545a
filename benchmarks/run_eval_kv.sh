#!/usr/bin/env bash
# Runs `memrag eval qa` with the settings of the README's "K/V memory" section: 500 SQuAD v1.1
# dev questions, each answered from its own passage, every memory kind side by side.
#
# Usage:  benchmarks/run_eval_kv.sh [more `memrag eval qa` options]
# Settings (environment variables, defaults in brackets):
#   DATA     [../shared/data/squad_v1.1/dev.jsonl.gz]
#   LIMIT    [500]
#   DTYPE    [float32]
#   THREADS  [0]          torch CPU threads (0: torch's default)
#   MODES    [text,slots,kv-exact,kv-exact:int8,kv-pruned:0.5,kv-pruned:0.25,truncated,none]
#   OUT      [benchmarks/results/eval-kv-cpu-$DTYPE]
# Writes eval.json, samples.jsonl and log.txt to OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data/squad_v1.1/dev.jsonl.gz}
LIMIT=${LIMIT:-500}
DTYPE=${DTYPE:-float32}
THREADS=${THREADS:-0}
MODES=${MODES:-text,slots,kv-exact,kv-exact:int8,kv-pruned:0.5,kv-pruned:0.25,truncated,none}
OUT=${OUT:-benchmarks/results/eval-kv-cpu-${DTYPE}}

mkdir -p "$OUT"
set -x
memrag eval qa \
    --data "$DATA" --limit "$LIMIT" --dtype "$DTYPE" --threads "$THREADS" --modes "$MODES" \
    --json-out "$OUT/eval.json" --samples-out "$OUT/samples.jsonl" \
    "$@" 2>&1 | tee "$OUT/log.txt"
