"""Paired difference between two runs over the same questions, with a bootstrap interval.

Reads two samples files (``memrag eval qa --samples-out`` or ``memrag bench --samples-out``),
keeps one mode of each, pairs the answers by question id and reports, for F1, EM and
``contains``, each run's mean over the shared questions, the difference (second minus first)
and its 95 % percentile interval over seeded bootstrap resamples of the questions. Two runs of
one compressor at different steps, or two compressors, on the same seeded questions: is the
difference beyond the noise of that many questions?

Usage::

    python benchmarks/paired_difference.py \\
        "r = 8=experiments/rate8-kvzip/eval-step400/squad500-int4c-samples.jsonl" \\
        "r = 32=experiments/rate8-r32/eval-bf16/squad500-int4c-samples.jsonl" --mode kv:int4c
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from answer_agreement import load_samples, sample_score

METRICS = ("f1", "exact_match", "contains")


def load_scores(path: Path, mode: str) -> dict[str, dict[str, float]]:
    """Per question id, the scores of ``mode``'s answer in a samples file (read as
    ``answer_agreement.py`` reads them: ``contains`` scored from the prediction in older reports)."""
    samples = load_samples(path).get(mode)
    if not samples:
        raise SystemExit(f"{path}: no samples of mode {mode!r}")
    return {str(q): {metric: sample_score(sample, metric) for metric in METRICS} for q, sample in samples.items()}


def paired_difference(
    first: dict[str, dict[str, float]], second: dict[str, dict[str, float]], *, resamples: int, seed: int
) -> dict[str, Any]:
    """Means over the shared questions and the difference's bootstrap interval, per metric, in
    percentage points (sample scores are fractions)."""
    shared = sorted(set(first) & set(second))
    if not shared:
        raise SystemExit("the two runs share no question")
    rng = random.Random(seed)
    draws = [[rng.randrange(len(shared)) for _ in shared] for _ in range(resamples)]
    result: dict[str, Any] = {"questions": len(shared)}
    for metric in METRICS:
        a = [first[q][metric] for q in shared]
        b = [second[q][metric] for q in shared]
        diffs = [b_i - a_i for a_i, b_i in zip(a, b)]
        means = sorted(sum(diffs[i] for i in draw) / len(draw) for draw in draws)
        low, high = means[int(0.025 * resamples)], means[min(int(0.975 * resamples), resamples - 1)]
        result[metric] = {
            "first": 100.0 * sum(a) / len(a),
            "second": 100.0 * sum(b) / len(b),
            "difference": 100.0 * sum(diffs) / len(diffs),
            "interval": [100.0 * low, 100.0 * high],
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs=2, metavar="LABEL=SAMPLES", help="the first and the second run")
    parser.add_argument("--mode", required=True, help="the mode of the samples to compare (e.g. kv:int4c)")
    parser.add_argument("--second-mode", default=None, help="the second run's mode, if it differs")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    labelled = []
    for run in args.runs:
        label, separator, path = run.rpartition("=")
        if not separator:
            parser.error(f"{run!r}: expected LABEL=SAMPLES")
        if not Path(path).is_file():
            parser.error(f"{path}: no such samples file")
        labelled.append((label, Path(path)))
    (first_label, first_path), (second_label, second_path) = labelled
    result = paired_difference(
        load_scores(first_path, args.mode),
        load_scores(second_path, args.second_mode or args.mode),
        resamples=args.resamples,
        seed=args.seed,
    )
    lines = [
        (
            f"{result['questions']} shared questions; {second_label} minus {first_label}, "
            f"95 % interval over {args.resamples} bootstrap resamples (seed {args.seed}):"
        ),
        "",
        f"| metric | {first_label} | {second_label} | difference | interval |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for metric in METRICS:
        cell = result[metric]
        low, high = cell["interval"]
        lines.append(
            f"| {metric} | {cell['first']:.1f} | {cell['second']:.1f} | {cell['difference']:+.1f} | {low:+.1f} … {high:+.1f} |"
        )
    print("\n".join(lines))
    if args.json_out is not None:
        from memrag.utils.atomic import atomic_write_text

        atomic_write_text(args.json_out, json.dumps({"runs": args.runs, "mode": args.mode, **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
