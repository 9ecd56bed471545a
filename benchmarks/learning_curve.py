"""F1 from slots against QA examples trained on, across a compressor's training stages.

Each ``--point`` is the number of QA examples the compressor had been trained on (summed over
its stages) and a ``memrag eval qa`` report of its slots; ``--reference`` reports of the same
questions (text, truncated, ...) are drawn as horizontal lines. Writes ``<out>.md`` (a table)
and ``<out>.png`` (the curve).

    python benchmarks/learning_curve.py --out experiments/continued-kv-subset/learning_curve \
        --point 0 experiments/equal-budget/kv-subset-r4-0min.json \
        --point 312 experiments/equal-budget/kv-subset-r4-75min.json \
        --reference benchmarks/results/kv-study/modes/text.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _load(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{path}: not a readable eval qa report ({err})") from err


def _slots(report: dict, path: str) -> dict:
    try:
        return report["results"]["slots"]
    except KeyError:
        raise SystemExit(f"{path}: the report has no 'slots' result") from None


def table(points: list[tuple[int, str, dict]], references: list[tuple[str, dict]]) -> str:
    """The Markdown table of the points (examples, report path, report) and references."""
    lines = ["| QA examples trained on | eval | F1 | EM | report |", "| ---: | --- | ---: | ---: | --- |"]
    for examples, path, report in points:
        result = _slots(report, path)
        lines.append(
            f"| {examples:,} | {result['n']} q | {result['f1']:.1f} | {result['exact_match']:.1f} | `{path}` |"
        )
    for path, report in references:
        for mode, result in report["results"].items():
            lines.append(f"| {mode} (reference) | {result['n']} q | {result['f1']:.1f} | {result['exact_match']:.1f} | `{path}` |")
    return "\n".join(lines) + "\n"


def plot(points: list[tuple[int, str, dict]], references: list[tuple[str, dict]], path: Path, title: str) -> None:
    """Draws F1 from slots against examples trained on, with the references as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([p[0] for p in points], [_slots(p[2], p[1])["f1"] for p in points], "o-", label="slots")
    for _, report in references:
        for mode, result in report["results"].items():
            axis.axhline(result["f1"], linestyle="--", linewidth=0.8, color="grey")
            axis.annotate(mode, (0, result["f1"]), fontsize=7, color="grey", va="bottom")
    axis.set(xlabel="QA examples trained on", ylabel="SQuAD dev F1", title=title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument(
        "--point", nargs=2, action="append", required=True, metavar=("EXAMPLES", "REPORT"),
        help="QA examples trained on, and the eval qa report of the slots at that point",
    )
    parser.add_argument("--reference", nargs="*", default=[], help="eval qa reports drawn as lines")
    parser.add_argument("--title", default="answers from slots while training")
    args = parser.parse_args()
    try:
        points = sorted(((int(examples), path, _load(path)) for examples, path in args.point), key=lambda p: p[0])
    except ValueError as err:
        raise SystemExit(f"--point: EXAMPLES must be an integer ({err})") from err
    references = [(path, _load(path)) for path in args.reference]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(table(points, references), encoding="utf-8")
    plot(points, references, args.out.with_suffix(".png"), args.title)
    print(args.out.with_suffix(".md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
