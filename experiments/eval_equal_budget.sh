#!/usr/bin/env bash
# Evaluates each arm of experiments/run_equal_budget.sh (its final/ compressor, i.e. after the
# minutes trained so far) on the same seeded SQuAD dev sample, JOBS at a time, one thread each.
#   REFERENCE=1     also evaluate REFERENCE_MODES (default text,kv-exact,truncated,none; the
#                   truncated text depends on the rate, the others are the same at every rate)
#   ARMS=...        which arms to evaluate (default "embedding kv-memory kv-subset"; may be empty)
#   JOBS=2          how many evaluations run at once
#   UNTRAINED=1     also evaluate an untrained subset compressor at RATE (saved to
#                   $RUNS-untrained/kv-subset-r$RATE; its slots are the frozen decoder's own
#                   keys and values), reported as the subset arm after 0 minutes
# Usage: LIMIT=200 [RATE=4] [OUT=experiments/equal-budget] experiments/eval_equal_budget.sh <minutes trained>
set -euo pipefail
MINUTES=${1:?minutes trained so far}
LIMIT=${LIMIT:-200}
RATE=${RATE:-4}
RUNS=${RUNS:-runs/equal-budget}
OUT=${OUT:-experiments/equal-budget}
REFERENCE_MODES=${REFERENCE_MODES:-text,kv-exact,truncated,none}
ARMS=${ARMS-embedding kv-memory kv-subset}
JOBS=${JOBS:-2}
mkdir -p "$OUT"
evaluate() {  # name, then eval arguments
  local name=$1; shift
  memrag eval qa --limit "$LIMIT" --threads 1 "$@" --json-out "$OUT/$name.json" \
    --markdown-out "$OUT/$name.md" > "$OUT/$name.log" 2>&1
}
jobs_=()
for arm in $ARMS; do
  jobs_+=("$arm-r$RATE-${MINUTES}min --compressor $RUNS/$arm-r$RATE/final --modes slots")
done
if [[ "${UNTRAINED:-0}" == 1 ]]; then
  untrained="$RUNS-untrained/kv-subset-r$RATE"
  python -c "
import sys
from memrag.compressor import Compressor, CompressorConfig
config = CompressorConfig(base_model='gemma-3-270m', slot_kind='kv', kv_positions='subset',
                          segment_length=64, compression_rate=int(sys.argv[1]), lora_rank=8, lora_alpha=16)
Compressor.from_base('gemma-3-270m', config).save_pretrained(sys.argv[2])
" "$RATE" "$untrained"
  jobs_+=("kv-subset-r$RATE-0min --compressor $untrained --modes slots")
fi
if [[ "${REFERENCE:-0}" == 1 ]]; then
  jobs_+=("reference-r$RATE --compressor $RUNS/kv-subset-r$RATE/final --modes $REFERENCE_MODES")
fi
pids=()
for job in "${jobs_[@]}"; do
  # shellcheck disable=SC2086  # the job is a name followed by its arguments
  evaluate $job &
  pids+=($!)
  if (( ${#pids[@]} == JOBS )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
wait
