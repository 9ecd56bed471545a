#!/usr/bin/env bash
# Evaluates each arm of experiments/run_equal_budget.sh (its final/ compressor, i.e. after the
# minutes trained so far) on the same seeded SQuAD dev sample, two at a time, one thread each;
# with REFERENCE=1 also text, kv-exact, truncated and none (the same for every arm at one rate).
# Usage: LIMIT=200 experiments/eval_equal_budget.sh <minutes trained>
set -euo pipefail
MINUTES=${1:?minutes trained so far}
LIMIT=${LIMIT:-200}
RATE=${RATE:-4}
RUNS=${RUNS:-runs/equal-budget}
OUT=${OUT:-experiments/equal-budget}
mkdir -p "$OUT"
evaluate() {  # name, then eval arguments
  local name=$1; shift
  memrag eval qa --limit "$LIMIT" --threads 1 "$@" --json-out "$OUT/$name.json" \
    --markdown-out "$OUT/$name.md" > "$OUT/$name.log" 2>&1
}
pids=()
for arm in "embedding-r$RATE" "kv-memory-r$RATE" "kv-subset-r$RATE"; do
  evaluate "$arm-${MINUTES}min" --compressor "$RUNS/$arm/final" --modes slots &
  pids+=($!)
  if (( ${#pids[@]} == 2 )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
if [[ "${REFERENCE:-0}" == 1 ]]; then
  evaluate "reference-r$RATE" --modes text,kv-exact,truncated,none &
  pids+=($!)
fi
wait
