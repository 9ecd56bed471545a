"""Do subset K/V slots miss names and numbers because their positions leave them out? An intervention.

``answer_positions.py`` found the gold answer's tokens kept about as often where the slots'
answer misses as where it contains the gold answer (a correlation). This intervenes: for each
question, the positions of the first reference answer found in its passage are kept at every
layer, in place of the lowest-scored positions (the slot count and the bytes stay), the others
chosen by the compressor's own scores as usual; the same questions are then answered through
:func:`memrag.eval.qa.evaluate_qa` (the eval's splice path) with and without the forcing, on the
same machine in one run, and compared answer for answer.

Forcing the gold answer in uses the answer: it bounds what any choice of positions could gain and
is not a selection to deploy. If ``contains`` rises toward the text's, the positions are what
loses the facts; if it does not, what the encoder mixes into them is. (A passage asked two
questions gets both answers forced for both; such questions are counted in the report.)

A control arm forces a *decoy* span instead: as many positions as the gold answer has, in its
segment, not overlapping it (seeded). What the oracle gains over the decoy is the answer's
positions themselves; what the decoy gains over the unforced run is only the shuffle of the kept
set (and the decoy's own tokens).

A fourth arm is a selection one could deploy: the segment's *salient* tokens (those holding a
digit or starting a capitalised word) forced into every layer, at most half of the segment's
slots (the best-scored of them when there are more), without looking at any question.

Usage::

    python benchmarks/answer_forcing.py --compressor gemma-3-270m-kv-subset --mode kv:int8 --limit 500 \\
        --json-out benchmarks/results/contains-gap/answer-forcing.json \\
        --markdown-out benchmarks/results/contains-gap/answer-forcing.md

``--arms decoy`` runs the unforced arm and the decoy control only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from answer_positions import answer_tokens

from memrag.compressor.resolve import resolve_compressor
from memrag.eval.qa import evaluate_qa, sample_qa_records
from memrag.memory.salience import force_rows, forced_salient_rows
from memrag.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)


SpanChoice = Callable[[list[int], list[tuple[int, int]]], list[int]]


def gold_span(span: list[int], _segments: list[tuple[int, int]]) -> list[int]:
    """The gold answer's own token indices."""
    return span


def decoy_span(seed: int) -> SpanChoice:
    """Same-length spans elsewhere in the gold answer's segment, not overlapping it (seeded).

    The control for the oracle: as many positions forced, in the same segment, but not the
    answer's. A span with no room for a decoy gets none.
    """
    rng = random.Random(seed)

    def choose(span: list[int], segments: list[tuple[int, int]]) -> list[int]:
        begin, end = next((a, b) for a, b in segments if a <= span[0] < b)
        width = len(span)
        starts = [s for s in range(begin, end - width + 1) if s + width <= span[0] or s > span[-1]]
        if not starts:
            return []
        start = rng.choice(starts)
        return list(range(start, start + width))

    return choose


def forced_rows(
    compressor: Any, records: list[Any], choose: SpanChoice = gold_span
) -> tuple[dict[tuple[int, ...], set[int]], int, int]:
    """Per segment (its token ids), the rows to force: by default the gold answers' tokens in it.

    ``choose`` maps a gold answer's token indices in its passage (and the passage's segments as
    ``(begin, end)`` token ranges) to the indices to force. Returns the map, the number of
    questions whose answer is not in the passage verbatim, and the number of questions whose
    passage is shared with another question.
    """
    forced: dict[tuple[int, ...], set[int]] = defaultdict(set)
    missing = 0
    per_context = Counter(record.context for record in records)
    for record in records:
        found = answer_tokens(compressor.tokenizer, record.context, record.answers)
        if found is None or not found[1]:
            missing += 1
            continue
        ids, span = found
        pieces = list(compressor.segment_ids(ids))
        ends = list(itertools.accumulate(len(piece) for piece in pieces))
        segments = [(end - len(piece), end) for piece, end in zip(pieces, ends)]
        chosen = choose(span, segments)
        for (begin, end), segment in zip(segments, pieces):
            rows = {index - begin for index in chosen if begin <= index < end}
            if rows:
                forced[tuple(segment)] |= rows
    shared = sum(count for count in per_context.values() if count > 1)
    return dict(forced), missing, shared


#: The arms by their command-line names.
ARMS = {
    "unforced": "unforced",
    "oracle": "gold answer forced (oracle)",
    "decoy": "decoy span forced (control)",
    "salient": "salient tokens forced",
}

RowsToForce = Callable[[list[int], torch.Tensor], set[int]]


def salient_rows(compressor: Any) -> RowsToForce:
    """Rows of a segment's tokens that hold a digit or start a capitalised word, at most half
    of the segment's slots (the best-scored by their mean score over layers): the rows the
    ``kvzip-salient`` selection forces (:mod:`memrag.memory.salience`)."""

    def rows(sequence: list[int], scores: torch.Tensor) -> set[int]:
        slots = compressor.config.slots_for(len(sequence))
        return set(forced_salient_rows(compressor.tokenizer, sequence, scores, slots))

    return rows


@contextmanager
def forcing(rows_to_force: RowsToForce) -> Iterator[Counter[str]]:
    """While active, the rows ``rows_to_force`` names get an infinite selection score at every layer.

    Wraps :func:`memrag.memory.pruning.score_and_capture`, which the compressor's
    ``scored_positions`` calls for every scored subset selection; counts what it forced.
    """
    from memrag.memory import pruning

    original = pruning.score_and_capture
    counts: Counter[str] = Counter()

    def with_forced(decoder: Any, sequences: Any, config: Any, **kwargs: Any) -> Any:
        results = []
        for sequence, (captured, scores) in zip(sequences, original(decoder, sequences, config, **kwargs)):
            rows = rows_to_force(list(sequence), scores)
            counts["segments"] += 1
            if rows:
                scores = force_rows(scores, sorted(rows))
                counts["segments_forced"] += 1
                counts["rows_forced"] += len(rows)
            results.append((captured, scores))
        return results

    pruning.score_and_capture = with_forced
    try:
        yield counts
    finally:
        pruning.score_and_capture = original


def compare(unforced: list[dict[str, Any]], forced: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired counts: answers that gained or lost the gold answer."""
    by_id = {sample["id"]: sample for sample in unforced}
    gained = lost = 0
    for sample in forced:
        before = by_id[sample["id"]]["contains"]
        gained += int(sample["contains"] > before)
        lost += int(sample["contains"] < before)
    return {"contains_gained": gained, "contains_lost": lost, "questions": len(forced)}


def to_markdown(result: dict[str, Any]) -> str:
    """The arms side by side, with the paired changes against the unforced run."""
    lines = [
        (
            f"Positions forced into every layer's kept positions, `{result['compressor']}` "
            f"(`{result['mode']}`), {result['questions']} SQuAD dev questions (seed {result['seed']}), "
            "one passage each, answered in one run."
        ),
        "",
        "| arm | EM | F1 | contains | answers gaining / losing the gold answer | segments forced | positions forced |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for arm, scores in result["arms"].items():
        paired = result["paired"].get(arm)
        change = f"{paired['contains_gained']} / {paired['contains_lost']}" if paired else ""
        counts = result["counts"].get(arm, {})
        lines.append(
            f"| {arm} | {scores['exact_match']:.1f} | {scores['f1']:.1f} | {scores['contains']:.1f} | {change} "
            f"| {counts.get('segments_forced', '')} | {counts.get('rows_forced', '')} |"
        )
    lines += [
        "",
        (
            f"Answers not in their passage verbatim (nothing forced by the oracle): {result['answer_not_in_passage']}; "
            f"questions sharing a passage with another: {result['shared_passage_questions']}."
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compressor", required=True, help="a scored subset K/V compressor (name or directory)")
    parser.add_argument("--mode", default="kv:int8", help="the K/V memory mode (e.g. kv:int8, kv:int4c)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/squad_v1.1/dev.jsonl.gz"))
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--markdown-out", type=Path, default=None)
    parser.add_argument("--samples-out", type=Path, default=None, help="every arm's answers, JSONL")
    parser.add_argument(
        "--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="the arms to run (unforced always runs)"
    )
    args = parser.parse_args()
    args.arms = list(dict.fromkeys(["unforced", *args.arms]))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    compressor = resolve_compressor(args.compressor, device="cpu", dtype="float32")
    if not compressor.config.scores_positions:
        parser.error(f"{args.compressor} does not keep scored subset positions")
    records = sample_qa_records(args.data, limit=args.limit, seed=args.seed)
    forced, missing, shared = forced_rows(compressor, records)
    decoys, _, _ = forced_rows(compressor, records, decoy_span(args.seed))
    selections: dict[str, RowsToForce] = {
        "unforced": lambda _sequence, _scores: set(),
        "oracle": lambda sequence, _scores: forced.get(tuple(sequence), set()),
        "decoy": lambda sequence, _scores: decoys.get(tuple(sequence), set()),
        "salient": salient_rows(compressor),
    }
    arms: dict[str, Any] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, dict[str, int]] = {}
    for short in args.arms:
        arm, selection = ARMS[short], selections[short]
        with forcing(selection) as counted:
            evaluation = evaluate_qa(compressor, records, modes=[args.mode], batch_size=args.batch_size, show_progress=True)
        arms[arm] = evaluation.results[args.mode]
        counts[arm] = dict(counted)
        samples[arm] = [{**sample, "arm": arm} for sample in evaluation.predictions]
    result = {
        "compressor": args.compressor,
        "fingerprint": compressor.fingerprint,
        "mode": args.mode,
        "questions": len(records),
        "seed": args.seed,
        "arms": arms,
        "paired": {arm: compare(samples["unforced"], arm_samples) for arm, arm_samples in samples.items() if arm != "unforced"},
        "counts": counts,
        "answer_not_in_passage": missing,
        "shared_passage_questions": shared,
    }
    markdown = to_markdown(result)
    outputs = [(args.json_out, json.dumps(result, indent=2) + "\n"), (args.markdown_out, markdown)]
    if args.samples_out is not None:
        lines = [json.dumps(sample) for arm in samples.values() for sample in arm]
        outputs.append((args.samples_out, "\n".join(lines) + "\n"))
    for path, text in outputs:
        if path is not None:
            atomic_write_text(path, text)
    logger.info("\n%s", markdown)


if __name__ == "__main__":
    main()
