"""Storage against quality: bytes per passage and per text token, F1 and ``contains`` of each
memory kind and codec, from ``memrag eval qa --json-out`` reports, as a table and a plot.

Each report's modes become rows (the same questions within one report); modes without stored
bytes (``text``, ``truncated``, ``none``) are kept as reference rows. Several reports can be
given (``LABEL=PATH`` names each, e.g. rate 4 and rate 8; by default the report's compressor);
the plot shows F1 against bytes per passage (log scale), one point per (report, mode), the
text's F1 as a line. Reports written before ``contains`` existed leave that column empty.

Usage::

    python benchmarks/storage_quality.py benchmarks/results/codec4/qa200.json \\
        --markdown-out benchmarks/results/codec4/storage_quality.md \\
        --plot-out benchmarks/results/codec4/storage_quality.png

    # the README's table: every kind and codec, k = 1 and (where benched) k = 5
    python benchmarks/storage_quality.py \
        gemma-3-270m-icae=benchmarks/results/eval-kv-cpu-float32/eval.json \
        gemma-3-270m-kv-subset=benchmarks/results/gate/qa500-kv-int8.json \
        gemma-3-270m-kv-subset=benchmarks/results/codec4/qa500.json \
        gemma-3-270m-kv-rate4-k5=memrag/resources/compressors/gemma-3-270m-kv-rate4-k5/eval/squad500.json \
        gemma-3-270m-kv-rate4-k5=memrag/resources/compressors/gemma-3-270m-kv-rate4-k5/eval/squad500-int4r.json \
        gemma-3-270m-kv-rate4-k5=memrag/resources/compressors/gemma-3-270m-kv-rate4-k5/eval/squad500-int4c.json \
        gemma-3-270m-kv-rate8=experiments/rate8-r32/eval-bf16/squad500-int4c.json \
        "rate 8, LoRA r8 (rate8-kvzip)=experiments/rate8-kvzip/eval-step400/squad500.json" \
        "rate 8, LoRA r8 (rate8-kvzip)=experiments/rate8-kvzip/eval-step400/squad500-int4r.json" \
        "rate 8, LoRA r8 (rate8-kvzip)=experiments/rate8-kvzip/eval-step400/squad500-int4c.json" \
        "rate 8 (rate8-k5)=experiments/rate8-k5/eval-step200/squad500-int4c.json" \
        "rate 16 (rate16-kvzip)=experiments/rate16-kvzip/eval-step300/squad500.json" \
        "rate 16 (rate16-kvzip)=experiments/rate16-kvzip/eval-step300/squad500-int4r.json" \
        "rate 16 (rate16-kvzip)=experiments/rate16-kvzip/eval-step300/squad500-int4c.json" \
        "rate 16, LoRA r32 (rate16-r32)=experiments/rate16-r32/eval-step220/squad500-int4c.json" \
        --bench gemma-3-270m-kv-subset=benchmarks/results/bench-k5-4bit/bench.json \
        --bench gemma-3-270m-kv-subset=benchmarks/results/bench-k5-trained-codecs/bench.json \
        --bench gemma-3-270m-kv-subset=benchmarks/results/bench-300q-kvzip/bench.json \
        --bench gemma-3-270m-kv-subset=benchmarks/results/bench-k5-more/bench.json \
        --bench gemma-3-270m-icae=benchmarks/results/bench-k5-embedding/bench.json \
        --bench gemma-3-270m-kv-rate4-k5=memrag/resources/compressors/gemma-3-270m-kv-rate4-k5/eval/bench-k5.json \
        --bench gemma-3-270m-kv-rate8=experiments/rate8-r32/eval-bf16/bench-k5-int4c.json \
        --bench "rate 8, LoRA r8 (rate8-kvzip)=experiments/rate8-kvzip/eval-step400/bench-k5.json" \
        --bench "rate 8, LoRA r8 (rate8-kvzip)=experiments/rate8-kvzip/eval-step400/bench-k5-int4c.json" \
        --bench "rate 8 (rate8-k5)=experiments/rate8-k5/eval-step200/bench-k5.json" \
        --markdown-out benchmarks/results/storage-quality/table.md \
        --plot-out benchmarks/results/storage-quality/f1_vs_bytes.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def samples_beside(path: Path) -> Path | None:
    """The per-question samples written next to an eval report (``samples.jsonl``,
    ``<stem>-samples.jsonl`` or ``<stem>.samples.jsonl``), if any."""
    for name in (f"{path.stem}-samples.jsonl", f"{path.stem}.samples.jsonl", "samples.jsonl"):
        candidate = path.with_name(name)
        if candidate.is_file():
            return candidate
    return None


def contains_from_samples(path: Path) -> dict[str, float]:
    """Per mode, the share (%) of answers that contain a reference answer, from a samples file
    (reports written before ``contains`` was scored keep their predictions there)."""
    from memrag.eval.metrics import contains_answer

    hits: dict[str, list[float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        sample = json.loads(line)
        score = max(contains_answer(sample["prediction"], answer) for answer in sample["answers"])
        hits.setdefault(sample["mode"], []).append(score)
    return {mode: 100.0 * sum(values) / len(values) for mode, values in hits.items()}


def load_rows(label: str, path: Path) -> list[dict[str, Any]]:
    """One row per mode of an eval report: bytes per passage / per text token, EM, F1, contains."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{path}: not an eval qa report ({err})") from None
    positions = report.get("passage_positions", {})
    # The passage's text tokens: the text mode's positions, or exact K/V memory's (one per token).
    exact = [v for k, v in positions.items() if k.split(":")[0] == "kv-exact"]
    text_tokens = positions.get("text") or (exact[0] if exact else None)
    label = label or str(report.get("compressor", ""))
    results = report.get("results", {})
    samples = samples_beside(path)
    rescored = (
        contains_from_samples(samples)
        if samples and any("contains" not in scores for scores in results.values())
        else {}
    )
    rows = []
    for mode, scores in report.get("results", {}).items():
        stored = report.get("memory", {}).get(mode, {}).get("bytes_per_passage")
        rows.append(
            {
                "label": label,
                "mode": mode,
                "questions": report.get("limit"),
                "bytes_per_passage": stored,
                "bytes_per_token": stored / text_tokens if stored and text_tokens else None,
                "positions": report.get("passage_positions", {}).get(mode),
                "exact_match": scores["exact_match"],
                "f1": scores["f1"],
                "contains": scores.get("contains", rescored.get(mode)),
            }
        )
    if not rows:
        raise SystemExit(f"{path}: no results")
    return rows


def load_bench(path: Path) -> dict[str, dict[str, Any]]:
    """Per mode of a ``memrag bench --json-out`` report (k retrieved chunks per question): F1,
    ``contains``, questions and k."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{path}: not a bench report ({err})") from None
    k = report.get("settings", {}).get("k")
    return {
        mode: {"f1": scores["f1"], "contains": scores.get("contains"), "n": scores.get("n"), "k": k}
        for mode, scores in report.get("results", {}).items()
    }


def compressor_free(mode: str) -> bool:
    """Whether a mode's answers do not depend on the compressor: the text, no passage, and the
    memory kinds the registry says need no training (the decoder's own K/V)."""
    from memrag.memory.kinds import MemoryKind

    name = mode.split(":")[0]
    if name in ("text", "none"):
        return True
    try:
        return not MemoryKind.parse(name).needs_training
    except ValueError:  # a context mode such as "slots" or "truncated"
        return False


def join_bench(rows: list[dict[str, Any]], label: str, bench: dict[str, dict[str, Any]]) -> None:
    """Adds the bench's F1 and ``contains`` to the rows of the same mode: of the same label
    (compressor) for trained memory, of any label for :func:`compressor_free` modes."""
    for row in rows:
        scores = bench.get(row["mode"]) if compressor_free(row["mode"]) or row["label"] == label else None
        if scores is not None:
            row["bench_f1"], row["bench_contains"] = scores["f1"], scores["contains"]
            row["bench_n"], row["bench_k"] = scores["n"], scores["k"]


def fill_bytes_per_token(rows: list[dict[str, Any]]) -> None:
    """Bytes per text token for rows of reports without a text mode, from the text's positions
    in another report over as many questions (the eval's sample is seeded: the same passages)."""
    text_tokens = {row["questions"]: row["positions"] for row in rows if row["mode"] == "text" and row["positions"]}
    for row in rows:
        tokens = text_tokens.get(row["questions"])
        if row["bytes_per_token"] is None and row["bytes_per_passage"] and tokens:
            row["bytes_per_token"] = row["bytes_per_passage"] / tokens


def _number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}" if digits else f"{value:,.0f}"


def markdown(rows: list[dict[str, Any]], sources: list[str]) -> str:
    with_bench = any("bench_f1" in row for row in rows)
    # the decoder's own memory and the text read the same with any compressor: labelled "any"
    k = next((row["bench_k"] for row in rows if row.get("bench_k")), "k")
    header = "| compressor | mode | bytes / passage | bytes / text token | positions | EM | F1 | contains |"
    rule = "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    if with_bench:
        header += f" F1, k = {k} | contains, k = {k} |"
        rule += " ---: | ---: |"
    lines = ["From " + ", ".join(f"`{s}`" for s in sources) + ":", "", header, rule]
    for row in rows:
        line = (
            f"| {'any' if compressor_free(row['mode']) else row['label']} | `{row['mode']}` | {_number(row['bytes_per_passage'], 0)} | "
            f"{_number(row['bytes_per_token'], 0)} | {_number(row['positions'])} | "
            f"{_number(row['exact_match'])} | {_number(row['f1'])} | {_number(row['contains'])} |"
        )
        if with_bench:
            line += f" {_number(row.get('bench_f1'))} | {_number(row.get('bench_contains'))} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _point_label(row: dict[str, Any]) -> str:
    return row["mode"] if compressor_free(row["mode"]) or not row["label"] else f"{row['mode']} ({row['label']})"


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """F1 and ``contains`` against bytes per passage (log scale), the text's as dashed lines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 5.5))
    panels = [("f1", "F1"), ("contains", "contains (%)")]
    for index, (metric, name) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), index)
        points = sorted(
            (row for row in rows if row["bytes_per_passage"] and row.get(metric) is not None),
            key=lambda row: row["bytes_per_passage"],
        )
        for i, row in enumerate(points):
            axes.scatter(row["bytes_per_passage"], row[metric])
            axes.annotate(
                _point_label(row),
                (row["bytes_per_passage"], row[metric]),
                textcoords="offset points",
                xytext=(4, 6 if i % 2 else -10),  # alternate above/below: neighbours do not overlap
                fontsize=7,
            )
        for row in rows:
            if row["mode"] == "text" and row.get(metric) is not None:
                axes.axhline(row[metric], linestyle="--", linewidth=1, color="gray")
                axes.text(
                    0.01, row[metric], "text", transform=axes.get_yaxis_transform(), fontsize=7, color="gray", va="bottom"
                )
        axes.set_xscale("log")
        axes.set_xlabel("bytes per passage (stored memory)")
        axes.set_ylabel(f"{name}, one passage per question")
        axes.grid(True, which="both", linewidth=0.3)
    figure.suptitle("Storage against quality")
    figure.tight_layout()
    figure.savefig(out, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="eval qa JSON reports, as PATH or LABEL=PATH.")
    parser.add_argument(
        "--bench",
        action="append",
        default=[],
        help="memrag bench JSON report (several chunks per question) as LABEL=PATH: its F1 and "
        "contains join the rows of the same label and mode; repeatable, the first report given "
        "for a row wins.",
    )
    parser.add_argument("--markdown-out", type=Path, default=None)
    parser.add_argument("--plot-out", type=Path, default=None)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for item in args.reports:
        label, sep, path = item.partition("=")
        rows += load_rows(label if sep else "", Path(path if sep else item))
    fill_bytes_per_token(rows)
    for item in reversed(args.bench):  # the first report given for a (label, mode) wins
        label, sep, path = item.partition("=")
        join_bench(rows, label if sep else "", load_bench(Path(path if sep else item)))
    sources = [r.partition("=")[2] or r for r in args.reports + args.bench]
    text = markdown(rows, sources)
    print(text)
    if args.markdown_out is not None:
        args.markdown_out.write_text(text, encoding="utf-8")
    if args.plot_out is not None:
        plot(rows, args.plot_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
