"""Does a chunk's fidelity score predict how well its memory answers? (the store's quality gate)

For the questions of two ``memrag eval qa --samples-out`` runs over the same seeded sample
(one with the ``text`` mode, one with a memory mode such as ``kv:int8``), this scores each
question's passage at index time, as a store would, with both gates:

* ``agreement``: :class:`memrag.store.fidelity.AgreementScorer` (the frozen decoder reading
  the memory against reading the text, on cloze questions made from the chunk);
* ``reconstruct``: :class:`memrag.store.fidelity.FidelityScorer` (likelihood of repeating the
  chunk from its memory);

and relates each score to the per-question F1 difference (memory - text): Pearson and Spearman
correlations, a scatter plot, and a threshold sweep (chunks below a threshold served as text,
as a store does: the share that falls back, the F1 of the chunks that pass, from memory and
from text, and the F1 of the whole policy). Writes ``<out>.json`` (every row), ``<out>.md``
and ``<out>.png``.

    memrag eval qa --modes kv:int8 --limit 500 --threads 1 \
        --samples-out benchmarks/results/gate/qa500-kv-int8.samples.jsonl
    python benchmarks/quality_gate.py --limit 300 \
        --text-samples benchmarks/results/eval-kv-cpu-float32/samples.jsonl \
        --memory-samples benchmarks/results/gate/qa500-kv-int8.samples.jsonl --memory kv:int8 \
        --out benchmarks/results/gate/gate300
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any


def _samples(path: str, mode: str) -> dict[str, dict[str, Any]]:
    rows = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SystemExit(f"{path}:{number}: not JSON ({err})") from err
            if row.get("mode") == mode:
                rows[row["id"]] = row
    if not rows:
        raise SystemExit(f"{path}: no predictions of mode {mode!r}")
    return rows


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in range(start, end + 1):
            ranks[order[i]] = (start + end) / 2
        start = end + 1
    return ranks


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson correlation (0 when either side is constant)."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else 0.0


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation."""
    return pearson(_ranks(x), _ranks(y))


def sweep(rows: list[dict[str, Any]], score: str) -> list[dict[str, float]]:
    """:func:`at_threshold` at thresholds on the score's quantiles (0-50 % served as text)."""
    values = sorted(r[score] for r in rows)
    shares = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
    return [
        at_threshold(rows, score, values[min(int(share * len(values)), len(values) - 1)] if share else 0.0)
        for share in shares
    ]


def at_threshold(rows: list[dict[str, Any]], score: str, threshold: float) -> dict[str, float]:
    """The gate's figures at one threshold: the share served as text, the F1 of the chunks that
    pass and fail (from memory and from text), and the store's F1 and contains (memory where
    the chunk passes, text where it fails)."""
    passed = [r for r in rows if r[score] >= threshold]
    failed = [r for r in rows if r[score] < threshold]
    mean = lambda values: 100 * sum(values) / max(len(values), 1)
    return {
        "threshold": threshold,
        "fallback": len(failed) / max(len(rows), 1),
        "passed": len(passed),
        "passed_f1_memory": mean([r["f1_memory"] for r in passed]),
        "passed_f1_text": mean([r["f1_text"] for r in passed]),
        "failed_f1_memory": mean([r["f1_memory"] for r in failed]),
        "failed_f1_text": mean([r["f1_text"] for r in failed]),
        "policy_f1": mean([r["f1_memory"] for r in passed] + [r["f1_text"] for r in failed]),
        "policy_contains": mean(
            [r["contains_memory"] for r in passed] + [r["contains_text"] for r in failed]
        ),
        "memory_f1": mean([r["f1_memory"] for r in rows]),
        "text_f1": mean([r["f1_text"] for r in rows]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", default="../shared/data/squad_v1.1/dev.jsonl.gz")
    parser.add_argument("--limit", type=int, default=300, help="questions (the eval's seeded sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-samples", required=True)
    parser.add_argument("--memory-samples", required=True)
    parser.add_argument("--memory", default="kv:int8", help="memory mode of --memory-samples")
    parser.add_argument("--compressor", default=None, help="compressor (default: the shipped one)")
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--exclude", default=None, help="a report of this script: leave its questions out (held-out check)"
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="also report the agreement gate at this threshold"
    )
    parser.add_argument("--out", required=True, help="output path without extension")
    args = parser.parse_args()

    import torch

    from memrag.compressor import Compressor
    from memrag.eval.metrics import answer_scores
    from memrag.eval.qa import sample_qa_records
    from memrag.memory.builders import as_stored, build_memory, make_codec
    from memrag.memory.spec import parse_memory_mode
    from memrag.store.fidelity import AgreementScorer, FidelityScorer
    from memrag.utils.progress import progress

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    records = sample_qa_records(args.data, limit=args.limit, seed=args.seed)
    if args.exclude:
        seen = {row["id"] for row in json.loads(Path(args.exclude).read_text())["rows"]}
        records = [r for r in records if r.id not in seen]
    text_rows = _samples(args.text_samples, "text")
    memory_rows = _samples(args.memory_samples, args.memory)
    missing = [r.id for r in records if r.id not in text_rows or r.id not in memory_rows]
    if missing:
        raise SystemExit(f"{len(missing)} of the {len(records)} questions lack a prediction, e.g. {missing[:3]}")
    compressor = Compressor.from_pretrained(args.compressor, dtype="float32")
    spec = parse_memory_mode(args.memory)
    passages = list(dict.fromkeys(r.context for r in records))
    started = time.perf_counter()
    made = build_memory(compressor, spec, passages, batch_size=8)
    stored, _ = as_stored(made, make_codec(compressor, spec))  # type: ignore[arg-type]
    build_s = time.perf_counter() - started
    agreement = AgreementScorer(compressor, probes=args.probes)
    reconstruct = FidelityScorer(compressor)
    scores: dict[str, dict[str, float]] = {}
    seconds = {"agreement": 0.0, "reconstruct": 0.0}
    for passage, memory in progress(iterable=list(zip(passages, stored)), desc="gate", unit="chunk"):
        started = time.perf_counter()
        (measured,) = agreement.measure([passage], [memory])
        seconds["agreement"] += time.perf_counter() - started
        started = time.perf_counter()
        (recon,) = reconstruct.score([passage], [memory])
        seconds["reconstruct"] += time.perf_counter() - started
        scores[passage] = {"agreement": math.exp(-measured["kl"]), "top1": measured["top1"], "reconstruct": recon}
    rows = []
    for record in records:
        text, memory = text_rows[record.id], memory_rows[record.id]
        t, m = answer_scores(text["prediction"], record.answers), answer_scores(memory["prediction"], record.answers)
        rows.append(
            {
                "id": record.id,
                "f1_text": t["f1"],
                "f1_memory": m["f1"],
                "contains_text": t["contains"],
                "contains_memory": m["contains"],
                "diff": m["f1"] - t["f1"],
                **scores[record.context],
            }
        )
    diffs = [r["diff"] for r in rows]
    gates = ("agreement", "top1", "reconstruct")
    report = {
        "settings": vars(args),
        "questions": len(rows),
        "passages": len(passages),
        "seconds_per_chunk": {k: v / len(passages) for k, v in seconds.items()},
        "memory_build_s_per_chunk": build_s / len(passages),
        "f1_text": 100 * sum(r["f1_text"] for r in rows) / len(rows),
        "f1_memory": 100 * sum(r["f1_memory"] for r in rows) / len(rows),
        "correlation": {
            g: {"pearson": pearson([r[g] for r in rows], diffs), "spearman": spearman([r[g] for r in rows], diffs)}
            for g in gates
        },
        "sweep": {g: sweep(rows, g) for g in gates},
        "at_threshold": at_threshold(rows, "agreement", args.threshold) if args.threshold is not None else None,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    plot(rows, gates, out.with_suffix(".png"), args.memory)
    print(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    """The correlations and the threshold sweeps as markdown tables."""
    lines = [
        f"{report['questions']} questions over {report['passages']} passages; F1 text "
        f"{report['f1_text']:.1f}, memory {report['f1_memory']:.1f}. Scoring cost per chunk: "
        + ", ".join(f"{g} {s:.2f} s" for g, s in report["seconds_per_chunk"].items())
        + ".",
        "",
        "| gate | Pearson r (score vs F1 memory - text) | Spearman rho |",
        "| --- | ---: | ---: |",
    ]
    for gate, c in report["correlation"].items():
        lines.append(f"| {gate} | {c['pearson']:+.3f} | {c['spearman']:+.3f} |")
    fixed = report.get("at_threshold")
    if fixed:
        lines += [
            "",
            f"At the agreement threshold {fixed['threshold']:g}: {100 * fixed['fallback']:.0f} % served as text; "
            f"passing chunks F1 {fixed['passed_f1_memory']:.1f} from memory vs {fixed['passed_f1_text']:.1f} "
            f"from text; failing chunks {fixed['failed_f1_memory']:.1f} vs {fixed['failed_f1_text']:.1f}; "
            f"the policy {fixed['policy_f1']:.1f} (memory everywhere {fixed['memory_f1']:.1f}, text "
            f"{fixed['text_f1']:.1f}).",
        ]
    for gate, rows in report["sweep"].items():
        lines += [
            "",
            f"`{gate}`: chunks scoring below the threshold are served as text",
            "",
            "| threshold | served as text | passing: F1 memory | passing: F1 text | failing: F1 memory "
            "| failing: F1 text | policy F1 | policy contains |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            lines.append(
                f"| {r['threshold']:.3f} | {100 * r['fallback']:.0f} % | {r['passed_f1_memory']:.1f} | "
                f"{r['passed_f1_text']:.1f} | {r['failed_f1_memory']:.1f} | {r['failed_f1_text']:.1f} | "
                f"{r['policy_f1']:.1f} | {r['policy_contains']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], gates: tuple[str, ...], path: Path, memory: str) -> None:
    """Scatter of each gate's score against the per-question F1 difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(gates), figsize=(5 * len(gates), 4), sharey=True)
    for axis, gate in zip(axes, gates):
        axis.scatter([r[gate] for r in rows], [100 * r["diff"] for r in rows], s=8, alpha=0.5)
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.set_xlabel(f"{gate} score of the passage")
        axis.set_title(f"r = {pearson([r[gate] for r in rows], [r['diff'] for r in rows]):+.2f}")
    axes[0].set_ylabel(f"F1 {memory} - F1 text (per question)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
