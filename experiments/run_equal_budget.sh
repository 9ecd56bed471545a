#!/usr/bin/env bash
# Equal-budget comparison of slot kinds (issue #13): embedding slots, K/V memory-token slots
# and K/V subset slots, each fine-tuned from a fresh compressor on the same SQuAD stream for
# the same wall time (MINUTES, default 40), all at once with one torch thread each.
# Re-running resumes each arm from its newest checkpoint (pass a larger MINUTES to go on).
#   ARMS   which arms to train (default "embedding kv-memory kv-subset")
set -euo pipefail
MINUTES=${MINUTES:-40}
OUT=${OUT:-runs/equal-budget}
RATE=${RATE:-4}
ARMS=${ARMS:-embedding kv-memory kv-subset}
common=(--segment-length 64 --compression-rate "$RATE" --lora-rank 8 --lora-alpha 16
  --max-distractors 1 --batch-size 4 --max-steps 100000 --warmup-steps 10 --learning-rate 2e-4
  --eval-examples 0 --eval-questions 0 --eval-every 0 --save-every 10 --keep-checkpoints 1
  --distill-weight 1.0 --threads 1 --no-progress --log-every 1 --seed 0 --save-dtype bfloat16)
run_arm() {
  local name=$1; shift
  local resume=()
  [[ -d "$OUT/$name" ]] && resume=(--resume)
  memrag train finetune -o "$OUT/$name" "${common[@]}" "$@" --max-minutes "$MINUTES" "${resume[@]}" \
    > "$OUT/$name.out" 2>&1
}
mkdir -p "$OUT"
for arm in $ARMS; do
  case $arm in
    embedding) run_arm "embedding-r$RATE" --slot-kind embedding & ;;
    kv-memory) run_arm "kv-memory-r$RATE" --slot-kind kv --kv-positions memory & ;;
    kv-subset) run_arm "kv-subset-r$RATE" --slot-kind kv --kv-positions subset & ;;
    *) echo "unknown arm '$arm' in ARMS (embedding, kv-memory, kv-subset)" >&2; exit 2 ;;
  esac
done
wait
