"""Table and learning curves of the equal-budget slot-kind comparison (issue #13).

Reads each arm's training log (copied from ``--runs`` into ``<out>/logs`` when present, so
the report can be re-made from the committed files) the evaluations written by
``experiments/eval_equal_budget.sh`` (``<arm>-<minutes>min.json``, ``reference-r<rate>.json``)
and any ``--reference`` evaluation reports of the same questions, and writes
``<out>/report.md`` and ``<out>/curves.png``.

    python benchmarks/equal_budget_report.py --runs runs/equal-budget --out experiments/equal-budget \
        --reference benchmarks/results/kv-study/modes/{text,kv-exact,truncated,none}.json

The 500-question comparison keeps four modes of an eight-mode reference run:

    python benchmarks/equal_budget_report.py --runs runs/equal-budget --out experiments/equal-budget-500 \
        --reference benchmarks/results/eval-kv-cpu-float32/eval.json \
        --reference-modes text,kv-exact,truncated,none
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from pathlib import Path

_EVAL = re.compile(r"^(?P<arm>.+)-(?P<minutes>\d+)min\.json$")


def _train_events(log: Path) -> tuple[list[dict], list[int]]:
    """The log's training events (one per step) and the step each time-boxed piece ended at."""
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    events = {}
    starts = []
    for row in rows:
        if row.get("event") == "train":
            events[row["step"]] = row  # a resumed run may repeat steps after its checkpoint
        elif row.get("event") == "start":
            starts.append(int(row["step"]))
    ordered = [events[step] for step in sorted(events)]
    ends = starts[1:] + ([ordered[-1]["step"]] if ordered else [])
    return ordered, ends


def _number(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


def _rate_then_name(log: Path) -> tuple[int, str]:
    """Arms (``embedding-r4`` ...) ordered by compression rate, then name."""
    rate = re.search(r"-r(\d+)$", log.stem)
    return (int(rate.group(1)) if rate else 0, log.stem)


def _collect(
    runs: Path | None, out: Path, extra: list[Path], modes: set[str]
) -> tuple[dict, dict, dict]:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if runs is not None and runs.is_dir():
        for arm in sorted(p for p in runs.iterdir() if (p / "log.jsonl").is_file()):
            shutil.copyfile(arm / "log.jsonl", logs / f"{arm.name}.jsonl")
            if (arm / "training_args.json").is_file():
                shutil.copyfile(arm / "training_args.json", logs / f"{arm.name}.args.json")
    training = {log.stem: _train_events(log) for log in sorted(logs.glob("*.jsonl"), key=_rate_then_name)}
    evals: dict[str, dict[int, dict]] = {}
    references = {}
    for path in sorted(out.glob("*.json")):
        match = _EVAL.match(path.name)
        report = json.loads(path.read_text(encoding="utf-8"))
        if match:
            evals.setdefault(match["arm"], {})[int(match["minutes"])] = report
        elif path.name.startswith("reference"):
            references[path.stem] = report
    for path in extra:
        report = json.loads(path.read_text(encoding="utf-8"))
        if modes:
            report["results"] = {mode: result for mode, result in report["results"].items() if mode in modes}
        references[str(path)] = report
    return training, evals, references


def _reference_label(name: str, mode: str) -> str:
    """``truncated (rate 16)`` for a mode of ``reference-r16.json`` (measured at that rate: the
    truncated text's length depends on it), the mode alone for other references."""
    return f"{mode} (rate {name.rsplit('-r', 1)[1]})" if name.startswith("reference-r") else mode


def _table(training: dict, evals: dict, references: dict) -> str:
    lines = [
        "| arm | trained (min) | steps | examples | tokens compressed | last-10-step QA loss | "
        "KL | eval | F1 | EM | bytes / passage (float16) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for arm, (events, ends) in training.items():
        # Evaluations after 0 minutes are of the untrained compressor; the others, in order,
        # of the compressor each time-boxed piece ended with.
        timed = [m for m in sorted(evals.get(arm, {})) if m > 0]
        for minutes, report in sorted(evals.get(arm, {}).items()):
            last = ends[timed.index(minutes)] if minutes > 0 and timed.index(minutes) < len(ends) else 0
            upto = [e for e in events if e["step"] <= last]
            state = upto[-1] if upto else {"elapsed_s": 0.0, "step": 0, "examples": 0}
            tokens = state.get("source_tokens", 0)  # cumulative in the trainer's log
            qa = _mean([e.get("loss_qa", float("nan")) for e in upto[-10:]]) if upto else float("nan")
            kl = _mean([e.get("loss_kl", float("nan")) for e in upto[-10:]]) if upto else float("nan")
            result = report["results"]["slots"]
            size = report["memory"]["slots"]["bytes_per_passage"]
            lines.append(
                f"| {arm} | {state['elapsed_s'] / 60:.1f} | {state['step']} | {state['examples']:,} | "
                f"{tokens:,} | {_number(qa)} | {_number(kl)} | {result['n']} q | {result['f1']:.1f} | "
                f"{result['exact_match']:.1f} | {size:,.0f} |"
            )
    for name, report in references.items():
        for mode, result in report["results"].items():
            size = report.get("memory", {}).get(mode, {}).get("bytes_per_passage")
            lines.append(
                f"| {_reference_label(name, mode)} | | | | | | | {result['n']} q | {result['f1']:.1f} | "
                f"{result['exact_match']:.1f} | {f'{size:,.0f}' if size else ''} |"
            )
    return "\n".join(lines) + "\n"


def _plot(training: dict, evals: dict, references: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, scores) = plt.subplots(1, 2, figsize=(11, 4))
    for arm, (events, _) in training.items():
        minutes = [e["elapsed_s"] / 60 for e in events]
        values = [e.get("loss_qa", float("nan")) for e in events]
        window = 5
        smooth = [_mean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]
        losses.plot(minutes, smooth, label=arm)
        points = sorted(evals.get(arm, {}).items())
        if points:
            scores.plot([m for m, _ in points], [r["results"]["slots"]["f1"] for _, r in points], "o-", label=arm)
    for name, report in references.items():
        for mode, result in report["results"].items():
            scores.axhline(result["f1"], linestyle="--", linewidth=0.8, color="grey")
            scores.annotate(_reference_label(name, mode), (0, result["f1"]), fontsize=7, color="grey")
    losses.set(xlabel="training minutes", ylabel="QA cross-entropy (5-step mean)", title="training loss")
    scores.set(xlabel="training minutes", ylabel="SQuAD dev F1", title="answers from slots")
    scores.set_xlim(left=-2)  # the reference lines are labelled at 0 minutes
    for axis in (losses, scores):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=None, help="training runs (their logs are copied)")
    parser.add_argument("--out", type=Path, default=Path("experiments/equal-budget"))
    parser.add_argument(
        "--reference", type=Path, nargs="*", default=[],
        help="eval qa reports of the same questions (text, truncated, ...) to show beside the arms",
    )
    parser.add_argument(
        "--reference-modes", default="",
        help="comma-separated modes to keep from the --reference reports (default: all of them)",
    )
    args = parser.parse_args()
    modes = {mode for mode in args.reference_modes.split(",") if mode}
    training, evals, references = _collect(args.runs, args.out, args.reference, modes)
    (args.out / "report.md").write_text(_table(training, evals, references), encoding="utf-8")
    _plot(training, evals, references, args.out / "curves.png")
    print((args.out / "report.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
