#!/bin/bash
# Evaluates a compressor of this experiment beside the shipped one, in two lanes (one thread
# each): SQuAD dev (500 q, k = 1) and continuation of held-out Gutenberg; SQuADShifts Amazon
# (500 q, k = 1) and memrag bench (300 q, k = 5). Usage: evaluate.sh COMPRESSOR_DIR OUT_DIR
set -euo pipefail
compressor=$1
out=$2
mkdir -p "$out"
(
  memrag eval qa --modes kv:int8,kv:int4 --limit 500 --threads 1 --compressor "$compressor" \
    --json-out "$out/squad500.json" --markdown-out "$out/squad500.md" --samples-out "$out/squad500-samples.jsonl" \
    > "$out/squad500.log" 2>&1
  memrag eval lm --data ../shared/data/gutenberg_en/books.jsonl.gz --holdout-fraction 0.01 --limit 200 \
    --threads 1 --modes text,slots,truncated,none --compressor "$compressor" --json-out "$out/gutenberg-lm.json" \
    > "$out/gutenberg-lm.log" 2>&1
) &
(
  memrag eval qa --data ../shared/data/squadshifts_amazon/test.jsonl.gz --modes kv:int8 --limit 500 --threads 1 \
    --compressor "$compressor" --json-out "$out/amazon500.json" --markdown-out "$out/amazon500.md" \
    --samples-out "$out/amazon500-samples.jsonl" > "$out/amazon500.log" 2>&1
  memrag bench --limit 300 --k 5 --corpus-size 500 --modes kv:int8 --threads 1 --compressor "$compressor" \
    --json-out "$out/bench-k5.json" --markdown-out "$out/bench-k5.md" --samples-out "$out/bench-k5-samples.jsonl" \
    > "$out/bench-k5.log" 2>&1
) &
wait
