"""The K/V codec frontier: bytes against answers for every storage codec of the same memory, side
by side, from ``memrag eval qa`` (k = 1, SQuAD dev and SQuADShifts Amazon) and ``memrag bench``
(k = 5) reports of the same modes.

Per mode: bytes per passage and per text token, EM / F1 / contains at k = 1 with their share of
the reference codec's (``kv-exact:int8`` by default), the answers word for word the same as the
reference's, the median time to decode one passage's stored bytes (in RAM, one thread), the
Amazon figures, and at k = 5 F1 / contains and the first-token time p50 against the reference's
(measured in the same run, the retrieved chunks read from the store on disk and decoded).

Usage (``benchmarks/run_codec_frontier.sh`` runs the reports, then this)::

    python benchmarks/codec_frontier.py \\
        --squad benchmarks/results/codec-frontier/squad500.json \\
        --amazon benchmarks/results/codec-frontier/amazon500.json \\
        --bench benchmarks/results/codec-frontier/bench-k5.json \\
        --markdown-out benchmarks/results/codec-frontier/frontier.md \\
        --plot-out benchmarks/results/codec-frontier/frontier.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from answer_agreement import agreement, load_samples, sample_score  # noqa: E402
from storage_quality import samples_beside  # noqa: E402

from memrag.utils.atomic import atomic_write_text  # noqa: E402


def load_report(path: Path) -> dict[str, Any]:
    """An eval or bench JSON report, or a clear exit naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{path}: cannot read the report ({err})") from None


def merged_samples(paths: list[Path]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{mode: {question id: sample}}`` of several eval samples files (of the same questions)."""
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for path in paths:
        for mode, samples in load_samples(path).items():
            merged.setdefault(mode, samples)
    return merged


def same_answers(by_mode: dict[str, dict[str, dict[str, Any]]], mode: str, reference: str) -> float | None:
    """Percent of questions ``mode`` answered word for word as ``reference``
    (:func:`answer_agreement.agreement`), or ``None`` without samples of both."""
    if mode not in by_mode or reference not in by_mode:
        return None
    return float(agreement(by_mode, mode, reference)["same_answer"])


def with_also(squad: dict[str, Any], also: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """``squad`` with the modes of earlier reports of the same questions that it lacks.

    Raises:
        SystemExit: a report of other questions (data, limit or seed), naming it.
    """
    merged = {key: dict(squad.get(key, {})) for key in ("results", "memory", "passage_positions")}
    for path, report in also:
        for key in ("data", "limit", "seed"):
            if report.get(key) != squad.get(key):
                raise SystemExit(f"{path}: {key} is {report.get(key)!r}, the SQuAD report's {squad.get(key)!r}")
        for mode in report["results"]:
            if mode not in merged["results"]:
                for key in merged:
                    if mode in report.get(key, {}):
                        merged[key][mode] = report[key][mode]
    return {**squad, **merged}


def frontier_rows(
    squad: dict[str, Any],
    samples: dict[str, dict[str, dict[str, Any]]],
    amazon: dict[str, Any] | None,
    bench: dict[str, Any] | None,
    reference: str,
) -> list[dict[str, Any]]:
    """One row per mode of the SQuAD report (in its order)."""
    results, memory = squad["results"], squad.get("memory", {})
    if reference not in results:
        raise SystemExit(f"the SQuAD report has no {reference!r} mode to compare with")
    text_tokens = squad.get("passage_positions", {}).get(reference)
    base = results[reference]
    amazon_results = (amazon or {}).get("results", {})
    bench_results = (bench or {}).get("results", {})
    bench_base = bench_results.get(reference, {})
    rows = []
    for mode, scores in results.items():
        if scores.get("contains") is None and samples.get(mode):
            # Reports written before `contains` existed: scored from their samples.
            answered = samples[mode].values()
            scores = {**scores, "contains": 100 * sum(sample_score(s, "contains") for s in answered) / len(answered)}
        cost = memory.get(mode, {})
        size = cost.get("bytes_per_passage")
        row: dict[str, Any] = {
            "mode": mode,
            "bytes": size,
            "bytes_per_token": size / text_tokens if size and text_tokens else None,
            "em": scores["exact_match"],
            "f1": scores["f1"],
            "contains": scores.get("contains"),
            "f1_share": 100 * scores["f1"] / base["f1"],
            "contains_share": (
                100 * scores["contains"] / base["contains"]
                if base.get("contains") and scores.get("contains") is not None
                else None
            ),
            "same_answers": same_answers(samples, mode, reference),
            "decode_ms": cost.get("decode_ms_per_passage"),
        }
        if mode in amazon_results and reference in amazon_results:
            ours, theirs = amazon_results[mode], amazon_results[reference]
            row["amazon_f1"], row["amazon_contains"] = ours["f1"], ours.get("contains")
            row["amazon_f1_share"] = 100 * ours["f1"] / theirs["f1"]
            row["amazon_contains_share"] = 100 * ours["contains"] / theirs["contains"]
        if mode in bench_results and bench_base:
            ours = bench_results[mode]
            row["k5_f1"], row["k5_contains"] = ours["f1"], ours.get("contains")
            row["k5_f1_share"] = 100 * ours["f1"] / bench_base["f1"]
            row["ttft_ms"] = 1000 * ours["ttft_p50_s"]
            row["ttft_ratio"] = ours["ttft_p50_s"] / bench_base["ttft_p50_s"]
        rows.append(row)
    return rows


def _cell(value: float | None, fmt: str = "{:.1f}") -> str:
    return "" if value is None else fmt.format(value)


def markdown(rows: list[dict[str, Any]], reference: str, sources: list[str], environment: str) -> str:
    """The frontier as a markdown table (shares are of ``reference``'s figures)."""
    lines = [
        f"From {', '.join(f'`{s}`' for s in sources)}. {environment}",
        "",
        f"Shares are of `{reference}`'s figures on the same questions; 'same' is the answers word "
        "for word the same as its.",
        "",
        "| mode | bytes / passage | bytes / token | EM | F1 | contains | F1 % | contains % | same % "
        "| decode ms / passage | Amazon F1 / contains | Amazon % (F1 / contains) | k = 5 F1 / contains "
        "| k = 5 F1 % | k = 5 first token ms (x ref) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        amazon = (
            f"{row['amazon_f1']:.1f} / {row['amazon_contains']:.1f}" if "amazon_f1" in row else ""
        )
        amazon_share = (
            f"{row['amazon_f1_share']:.0f} / {row['amazon_contains_share']:.0f}" if "amazon_f1" in row else ""
        )
        k5 = f"{row['k5_f1']:.1f} / {row['k5_contains']:.1f}" if "k5_f1" in row else ""
        ttft = f"{row['ttft_ms']:.0f} ({row['ttft_ratio']:.2f}x)" if "ttft_ms" in row else ""
        lines.append(
            "| "
            + " | ".join(
                [
                    f"`{row['mode']}`",
                    _cell(row["bytes"], "{:,.0f}"),
                    _cell(row["bytes_per_token"], "{:,.0f}"),
                    _cell(row["em"]),
                    _cell(row["f1"]),
                    _cell(row["contains"]),
                    _cell(row["f1_share"], "{:.0f}"),
                    _cell(row["contains_share"], "{:.0f}"),
                    _cell(row["same_answers"], "{:.0f}"),
                    _cell(row["decode_ms"]),
                    amazon,
                    amazon_share,
                    k5,
                    _cell(row.get("k5_f1_share"), "{:.0f}"),
                    ttft,
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], reference: str, out: Path) -> None:
    """F1 and contains (k = 1) against bytes per passage, log scale, one point per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sized = [r for r in rows if r["bytes"]]
    figure, axis = plt.subplots(figsize=(8, 5))
    for key, marker, label in (("f1", "o", "F1"), ("contains", "s", "contains")):
        axis.scatter([r["bytes"] for r in sized], [r[key] for r in sized], marker=marker, label=label)
        for r in sized:
            axis.annotate(r["mode"], (r["bytes"], r[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    base = next(r for r in rows if r["mode"] == reference)
    for key, style in (("f1", "--"), ("contains", ":")):
        axis.axhline(0.97 * base[key], linestyle=style, color="grey", linewidth=0.8)
    axis.axvline(300_000, color="red", linewidth=0.8, linestyle="--")
    axis.set_xscale("log")
    axis.set_xlabel("bytes per passage (log)")
    axis.set_ylabel("SQuAD dev, k = 1 (%)")
    axis.set_title(f"K/V codecs of the same memory (grey: 97 % of {reference}; red: 300 kB)")
    axis.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_suffix(".tmp.png")
    figure.savefig(temporary, dpi=120)
    temporary.replace(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--squad", type=Path, required=True, help="memrag eval qa --json-out report (k = 1)")
    parser.add_argument("--amazon", type=Path, help="the same modes on SQuADShifts Amazon")
    parser.add_argument("--bench", type=Path, help="memrag bench --json-out report (k = 5)")
    parser.add_argument("--reference", default="kv-exact:int8", help="the mode shares are of")
    parser.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        help="an earlier eval report of the same questions whose other modes join the table (repeatable)",
    )
    parser.add_argument("--markdown-out", type=Path, required=True)
    parser.add_argument("--plot-out", type=Path)
    args = parser.parse_args()
    squad = load_report(args.squad)
    squad = with_also(squad, [(path, load_report(path)) for path in args.also])
    amazon = load_report(args.amazon) if args.amazon else None
    bench = load_report(args.bench) if args.bench else None
    sample_files = [p for p in (samples_beside(path) for path in [args.squad, *args.also]) if p]
    rows = frontier_rows(squad, merged_samples(sample_files), amazon, bench, args.reference)
    sources = [str(p) for p in (args.squad, *args.also, args.amazon, args.bench) if p]
    environment = f"Machine: {squad.get('hardware', 'unknown')}, {squad.get('dtype', '')} compute, {squad.get('threads', '')} thread(s)."
    atomic_write_text(args.markdown_out, markdown(rows, args.reference, sources, environment))
    if args.plot_out:
        plot(rows, args.reference, args.plot_out)
    print(args.markdown_out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
