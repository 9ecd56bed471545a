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

A third arm is a selection one could deploy: the segment's *salient* tokens (those holding a
digit or starting a capitalised word) forced into every layer, at most half of the segment's
slots (the best-scored of them when there are more), without looking at any question.

Usage::

    python benchmarks/answer_forcing.py --compressor gemma-3-270m-kv-subset --mode kv:int8 --limit 500 \\
        --json-out benchmarks/results/contains-gap/answer-forcing.json \\
        --markdown-out benchmarks/results/contains-gap/answer-forcing.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from answer_positions import answer_tokens, keeps_scored_positions

from memrag.compressor.resolve import resolve_compressor
from memrag.eval.qa import evaluate_qa, sample_qa_records
from memrag.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)


def forced_rows(compressor: Any, records: list[Any]) -> tuple[dict[tuple[int, ...], set[int]], int, int]:
    """Per segment (its token ids), the rows of the gold answers' tokens in it.

    Returns the map, the number of questions whose answer is not in the passage verbatim, and
    the number of questions whose passage is shared with another question.
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
        start = 0
        for segment in compressor.segment_ids(ids):
            rows = {index - start for index in span if start <= index < start + len(segment)}
            if rows:
                forced[tuple(segment)] |= rows
            start += len(segment)
    shared = sum(count for count in per_context.values() if count > 1)
    return dict(forced), missing, shared


RowsToForce = Callable[[list[int], torch.Tensor], set[int]]


def salient_rows(compressor: Any) -> RowsToForce:
    """Rows of a segment's tokens that hold a digit or start a capitalised word, at most half
    of the segment's slots (the best-scored by their mean score over layers)."""
    tokenizer = compressor.tokenizer

    def rows(sequence: list[int], scores: torch.Tensor) -> set[int]:
        pieces = [tokenizer.decode([token]) for token in sequence]
        found = [
            i for i, piece in enumerate(pieces)
            if any(c.isdigit() for c in piece) or (piece[:1].isspace() or i == 0) and piece.strip()[:1].isupper()
        ]
        cap = max(1, compressor.config.slots_for(len(sequence)) // 2)
        if len(found) > cap:
            mean = scores[found].float().mean(dim=1)
            found = [found[i] for i in torch.topk(mean, cap).indices.tolist()]
        return set(found)

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
                scores = scores.clone()
                scores[sorted(rows)] = float("inf")
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    compressor = resolve_compressor(args.compressor, device="cpu", dtype="float32")
    if not keeps_scored_positions(compressor):
        parser.error(f"{args.compressor} does not keep scored subset positions")
    records = sample_qa_records(args.data, limit=args.limit, seed=args.seed)
    forced, missing, shared = forced_rows(compressor, records)
    selections: dict[str, RowsToForce] = {
        "unforced": lambda _sequence, _scores: set(),
        "gold answer forced (oracle)": lambda sequence, _scores: forced.get(tuple(sequence), set()),
        "salient tokens forced": salient_rows(compressor),
    }
    arms: dict[str, Any] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, dict[str, int]] = {}
    for arm, selection in selections.items():
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
