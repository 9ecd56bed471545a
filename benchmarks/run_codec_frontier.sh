#!/usr/bin/env bash
# The K/V codec frontier (docs/RESULTS.md, "Transform codec"): the same exact memory stored by
# every codec, answered side by side.
#   1. `memrag eval qa`, SQuAD v1.1 dev, 500 questions, each from its own passage (k = 1);
#   2. the same on 500 SQuADShifts Amazon questions (out of domain: never trained or calibrated on);
#   3. `memrag bench`, k = 5 chunks retrieved from a 500-passage store on disk, BENCH_LIMIT
#      questions (first-token time includes reading and decoding the chunks);
#   4. trained rate-4 K/V slots (gemma-3-270m-kv-rate4-k5) through the codec, 500 questions;
#   5. benchmarks/codec_frontier.py: the table and the plot, with the other codecs and the text
#      from the committed reports of the same 500 questions.
# Each step resumes (`--resume`) or is skipped when its report is complete.
#
# Usage:  benchmarks/run_codec_frontier.sh [STEP ...]   (steps: squad amazon bench trained report)
# Settings (environment variables, defaults in brackets):
#   MODES    [kv-exact:int8,kv-exact:tc1.5,kv-exact:tc2,kv-exact:tc1,kv-exact:tc3,kv-exact:int4c]
#   AMAZON_MODES  [kv-exact:int8,kv-exact:tc1.5]
#   BENCH_MODES   [kv-exact:int8,kv-exact:tc1.5,kv-exact:tc1.5z]
#   TRAINED_MODES [kv:tc1.5]  (kv:int8 of the same 500 questions is committed beside the
#                  compressor: memrag/resources/compressors/gemma-3-270m-kv-rate4-k5/eval/)
#   BENCH_LIMIT   [300]
#   THREADS  [1]
#   OUT      [benchmarks/results/codec-frontier]
set -euo pipefail
cd "$(dirname "$0")/.."

MODES=${MODES:-kv-exact:int8,kv-exact:tc1.5,kv-exact:tc2,kv-exact:tc1,kv-exact:tc3,kv-exact:int4c}
AMAZON_MODES=${AMAZON_MODES:-kv-exact:int8,kv-exact:tc1.5}
BENCH_MODES=${BENCH_MODES:-kv-exact:int8,kv-exact:tc1.5,kv-exact:tc1.5z}
TRAINED_MODES=${TRAINED_MODES:-kv:tc1.5}
BENCH_LIMIT=${BENCH_LIMIT:-300}
THREADS=${THREADS:-1}
OUT=${OUT:-benchmarks/results/codec-frontier}
STEPS=${*:-squad amazon bench trained report}
SQUAD=../shared/data/squad_v1.1/dev.jsonl.gz
AMAZON=../shared/data/squadshifts_amazon/test.jsonl.gz
mkdir -p "$OUT"

eval_qa() {  # name data modes [options]
    local name=$1 data=$2 modes=$3 resume=()
    shift 3
    [ -s "$OUT/$name.json" ] && resume=(--resume)
    memrag eval qa --data "$data" --limit 500 --threads "$THREADS" --modes "$modes" "${resume[@]}" \
        --json-out "$OUT/$name.json" --samples-out "$OUT/$name-samples.jsonl" \
        --markdown-out "$OUT/$name.md" "$@" 2>&1 | tee -a "$OUT/$name-log.txt"
}

for step in $STEPS; do
    case $step in
        squad) eval_qa squad500 "$SQUAD" "$MODES" ;;
        amazon) eval_qa amazon500 "$AMAZON" "$AMAZON_MODES" ;;
        trained) eval_qa trained-rate4-500 "$SQUAD" "$TRAINED_MODES" --compressor gemma-3-270m-kv-rate4-k5 ;;
        bench)
            if [ ! -s "$OUT/bench-k5.json" ]; then
                memrag bench --limit "$BENCH_LIMIT" --k 5 --corpus-size 500 --threads "$THREADS" --modes "$BENCH_MODES" \
                    --json-out "$OUT/bench-k5.json" --markdown-out "$OUT/bench-k5.md" \
                    --samples-out "$OUT/bench-k5-samples.jsonl" 2>&1 | tee "$OUT/bench-k5-log.txt"
            fi
            ;;
        report)
            args=(--squad "$OUT/squad500.json" --markdown-out "$OUT/frontier.md" --plot-out "$OUT/frontier.png"
                --also benchmarks/results/eval-kv-cpu-float32/eval.json --also benchmarks/results/codec4/qa500.json
                --also benchmarks/results/gate/qa500-kv-int8.json)
            [ -s "$OUT/amazon500.json" ] && args+=(--amazon "$OUT/amazon500.json")
            [ -s "$OUT/bench-k5.json" ] && args+=(--bench "$OUT/bench-k5.json")
            python benchmarks/codec_frontier.py "${args[@]}"
            if [ -s "$OUT/trained-rate4-500.json" ]; then
                python benchmarks/codec_frontier.py --squad "$OUT/trained-rate4-500.json" --reference kv:int8 \
                    --also memrag/resources/compressors/gemma-3-270m-kv-rate4-k5/eval/squad500.json \
                    --also memrag/resources/compressors/gemma-3-270m-kv-rate4-k5/eval/squad500-int4c.json \
                    --markdown-out "$OUT/trained-rate4.md"
            fi
            ;;
        *) echo "unknown step $step (squad amazon bench trained report)" >&2; exit 2 ;;
    esac
done
