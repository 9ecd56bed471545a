"""Answer-for-answer agreement between the modes of one ``memrag eval qa`` run.

Reads the predictions ``memrag eval qa --samples-out`` wrote and, for each pair (mode,
reference) given, counts the questions both modes answered identically (after whitespace
normalisation), and the mean F1 and ``contains`` of each over the questions both answered.
Used to compare storage codecs of the same memory (``kv:int4`` against ``kv:int8`` ...).
With ``--misses``, a second table looks at the questions where exactly one of the pair
contains the gold answer: is the other's answer wrong (no word of the gold answer), partly
right, or only shorter (the containing answer has more than ``--short-words`` words)? It tells a
gap in ``contains`` that comes from what the memory holds from one that comes from answer length.

Usage::

    python benchmarks/answer_agreement.py kv:int4=kv:int8 kv-exact:int4=kv-exact:int8 \\
        --samples benchmarks/results/codec4/qa200-samples.jsonl \\
        --markdown-out benchmarks/results/codec4/agreement200.md

    # why the trained slots contain the gold answer less often than the text does
    python benchmarks/answer_agreement.py kv:int8=text --misses \\
        --samples benchmarks/results/eval-kv-cpu-float32/samples.jsonl \\
        --samples benchmarks/results/gate/qa500-kv-int8.samples.jsonl \\
        --markdown-out benchmarks/results/contains-gap/slots-vs-text.md
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any


def load_samples(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{mode: {question id: sample}}`` from a samples JSONL file (the last line of a pair wins)."""
    by_mode: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
                by_mode[sample["mode"]][sample["id"]] = sample
            except (json.JSONDecodeError, KeyError) as err:
                raise SystemExit(f"{path}:{number}: not a sample line ({err})") from None
    return by_mode


def sample_score(sample: dict[str, Any], key: str) -> float:
    """A sample's score; ``contains`` computed from the prediction when an older report lacks it."""
    if key in sample:
        return float(sample[key])
    if key == "contains":
        from memrag.eval.metrics import contains_answer

        return max(
            (contains_answer(sample["prediction"], a) for a in sample["answers"]), default=0.0
        )
    raise SystemExit(f"sample {sample.get('id')!r} has no {key!r}")


def _normalized(text: str) -> str:
    return " ".join(text.split())


def agreement(
    samples: dict[str, dict[str, dict[str, Any]]], mode: str, reference: str
) -> dict[str, Any]:
    """Agreement of ``mode`` with ``reference`` over the questions both answered."""
    for name in (mode, reference):
        if name not in samples:
            raise SystemExit(
                f"no predictions of mode {name!r}; modes: {', '.join(sorted(samples))}"
            )
    shared = sorted(set(samples[mode]) & set(samples[reference]))
    if not shared:
        raise SystemExit(f"{mode!r} and {reference!r} answered no question in common")
    ours = [samples[mode][q] for q in shared]
    theirs = [samples[reference][q] for q in shared]
    same = sum(
        _normalized(a["prediction"]) == _normalized(b["prediction"]) for a, b in zip(ours, theirs)
    )

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return 100.0 * sum(sample_score(r, key) for r in rows) / len(rows)

    return {
        "mode": mode,
        "reference": reference,
        "questions": len(shared),
        "same_answer": 100.0 * same / len(shared),
        "f1": mean(ours, "f1"),
        "reference_f1": mean(theirs, "f1"),
        "contains": mean(ours, "contains"),
        "reference_contains": mean(theirs, "contains"),
    }


def contains_misses(
    samples: dict[str, dict[str, dict[str, Any]]], mode: str, reference: str, short_words: int = 5
) -> dict[str, Any]:
    """Where exactly one of ``mode`` and ``reference`` contains the gold answer, and why.

    Returns, over the questions both answered: ``only_reference`` (the reference's answer
    contains the gold answer, the mode's does not) split by the mode's answer into ``wrong``
    (F1 0: no word of the gold answer), ``partial`` (F1 above 0) and ``reference_short`` (of all
    of them, the reference's answer has at most ``short_words`` words, so its length does not
    explain the difference); and ``only_mode`` the other way round.
    """
    agreement(samples, mode, reference)  # the same checks of modes and common questions
    shared = sorted(set(samples[mode]) & set(samples[reference]))
    only_reference = [
        q
        for q in shared
        if sample_score(samples[reference][q], "contains") and not sample_score(samples[mode][q], "contains")
    ]
    only_mode = [
        q
        for q in shared
        if sample_score(samples[mode][q], "contains") and not sample_score(samples[reference][q], "contains")
    ]
    wrong = sum(sample_score(samples[mode][q], "f1") == 0.0 for q in only_reference)
    short = sum(len(samples[reference][q]["prediction"].split()) <= short_words for q in only_reference)
    return {
        "mode": mode,
        "reference": reference,
        "questions": len(shared),
        "only_reference": len(only_reference),
        "wrong": wrong,
        "partial": len(only_reference) - wrong,
        "reference_short": short,
        "short_words": short_words,
        "only_mode": len(only_mode),
    }


def misses_markdown(rows: list[dict[str, Any]]) -> str:
    """The ``--misses`` table: questions where only one of a pair contains the gold answer."""
    lines = [
        "Questions where exactly one of the pair contains the gold answer (\"only reference\": the",
        "reference's answer does, the mode's does not; the mode's answer there shares no word with",
        "the gold answer (wrong) or some (partial); \"reference short\": the reference's answer has",
        "at most that many words):",
        "",
        "| mode | reference | questions | only reference | mode wrong | mode partial | reference short | only mode |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| `{row['mode']}` | `{row['reference']}` | {row['questions']} | {row['only_reference']} | "
            f"{row['wrong']} | {row['partial']} | {row['reference_short']} (≤ {row['short_words']} words) | "
            f"{row['only_mode']} |"
        )
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict[str, Any]], sources: list[Path]) -> str:
    lines = [
        "Answer-for-answer agreement, from " + ", ".join(f"`{s}`" for s in sources) + ":",
        "",
        "| mode | reference | questions | same answer | F1 | reference F1 | contains | reference contains |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| `{row['mode']}` | `{row['reference']}` | {row['questions']} | {row['same_answer']:.1f} % | "
            f"{row['f1']:.1f} | {row['reference_f1']:.1f} | {row['contains']:.1f} | {row['reference_contains']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="+", help="MODE=REFERENCE pairs.")
    parser.add_argument(
        "--samples",
        type=Path,
        action="append",
        required=True,
        help="JSONL written by memrag eval qa --samples-out (repeat for runs of the same questions).",
    )
    parser.add_argument(
        "--misses",
        action="store_true",
        help="Add a table of the questions where only one of each pair contains the gold answer.",
    )
    parser.add_argument(
        "--short-words",
        type=int,
        default=5,
        help="With --misses: a containing answer of at most this many words counts as short.",
    )
    parser.add_argument("--markdown-out", type=Path, default=None)
    args = parser.parse_args()
    samples: dict[str, dict[str, dict[str, Any]]] = {}
    for path in args.samples:
        for mode, by_id in load_samples(path).items():
            samples.setdefault(mode, {}).update(by_id)
    rows = []
    for pair in args.pairs:
        mode, sep, reference = pair.partition("=")
        if not sep or not mode or not reference:
            parser.error(f"pairs are MODE=REFERENCE, got {pair!r}")
        rows.append(agreement(samples, mode, reference))
    text = markdown(rows, args.samples)
    if args.misses:
        pairs = [(row["mode"], row["reference"]) for row in rows]
        text += "\n" + misses_markdown(
            [contains_misses(samples, m, r, args.short_words) for m, r in pairs]
        )
    print(text)
    if args.markdown_out is not None:
        args.markdown_out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
