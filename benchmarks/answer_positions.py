"""Do subset K/V slots keep the gold answer's tokens? Hits against misses of one eval run.

A scored subset compressor (any ``kv_selection`` but ``stride``) keeps, per layer, a
``1/rate`` share of each segment's positions. For the questions of a ``memrag eval qa
--samples-out`` file, this recomputes which positions the compressor keeps for each gold
passage and measures the gold answer's tokens there (the first reference answer found in the
passage): the share of (answer token, layer) pairs kept, the share of answer tokens kept in at
least one layer, and the same by thirds of the layers, split by whether the mode's answer
contained the gold answer. If the misses kept the answer's tokens as often as the hits did,
the positions are not why the slots miss; the encoder's mixing into them is.

Usage::

    python benchmarks/answer_positions.py --samples benchmarks/results/gate/qa500-kv-int8.samples.jsonl \\
        --mode kv:int8 --compressor gemma-3-270m-kv-subset \\
        --markdown-out benchmarks/results/contains-gap/answer-positions.md
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from memrag.compressor.kv_encoder import scored_positions
from memrag.compressor.resolve import resolve_compressor
from memrag.data.readers import iter_qa_records
from memrag.utils.atomic import atomic_write_text
from memrag.utils.progress import progress

logger = logging.getLogger(__name__)


def kept_matrix(compressor: Any, ids: list[int]) -> torch.Tensor:
    """``(tokens, layers)``: 1 where the compressor keeps that token's position at that layer."""
    segments = compressor.segment_ids(ids)
    picks = scored_positions(compressor, segments)
    rows = [torch.zeros(len(segment), pick.shape[1]).scatter_(0, pick, 1.0) for segment, pick in zip(segments, picks)]
    return torch.cat(rows)


def answer_tokens(tokenizer: Any, context: str, answers: list[str]) -> tuple[list[int], list[int]] | None:
    """The passage's token ids and the indices of the first reference answer found in it."""
    for answer in answers:
        start = context.find(answer)
        if start >= 0:
            break
    else:
        return None
    end = start + len(answer)
    encoded = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    span = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < end and b > start]
    return list(encoded["input_ids"]), span


def measure(samples: list[dict[str, Any]], contexts: dict[str, str], compressor: Any) -> dict[str, Any]:
    """Per group (answer contained or not): mean shares of the answer's positions kept."""
    groups: dict[str, list[list[float]]] = defaultdict(list)
    skipped = 0
    with progress(total=len(samples), desc="scoring passages", unit="q") as bar:
        for sample in samples:
            bar.update(1)
            found = answer_tokens(compressor.tokenizer, contexts[sample["id"]], sample["answers"])
            if found is None or not found[1]:
                skipped += 1
                continue
            ids, span = found
            kept = kept_matrix(compressor, ids)
            answer = kept[span]
            row = [
                float(answer.mean()),
                float((answer.sum(1) > 0).float().mean()),
                *(float(third.mean()) for third in torch.tensor_split(answer, 3, dim=1)),
                float(kept.mean()),
            ]
            groups["contains" if sample["contains"] else "misses"].append(row)
    result: dict[str, Any] = {"skipped_no_answer_in_passage": skipped, "groups": {}}
    for name, rows in sorted(groups.items()):
        mean = torch.tensor(rows).mean(0).tolist()
        result["groups"][name] = {
            "questions": len(rows),
            "answer_pairs_kept": mean[0],
            "answer_tokens_kept_any_layer": mean[1],
            "answer_pairs_kept_by_layer_third": mean[2:5],
            "all_pairs_kept": mean[5],
        }
    return result


def to_markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    """The result as a table."""
    lines = [
        (
            f"Gold-answer tokens among the positions `{args.compressor}` keeps, questions of "
            f"`{args.samples}` (mode `{args.mode}`), split by whether its answer contains the gold answer."
        ),
        "",
        (
            "| answer | questions | (answer token, layer) kept | answer tokens kept in ≥ 1 layer "
            "| kept, layers 1st / 2nd / 3rd third | every (token, layer) kept |"
        ),
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for name, group in result["groups"].items():
        thirds = " / ".join(f"{value:.2f}" for value in group["answer_pairs_kept_by_layer_third"])
        lines.append(
            f"| {name} | {group['questions']} | {group['answer_pairs_kept']:.3f} "
            f"| {group['answer_tokens_kept_any_layer']:.3f} | {thirds} | {group['all_pairs_kept']:.3f} |"
        )
    lines += ["", f"Questions whose answer is not in the passage verbatim (left out): {result['skipped_no_answer_in_passage']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, required=True, help="samples JSONL of `memrag eval qa`")
    parser.add_argument("--mode", required=True, help="the mode of the samples to split (e.g. kv:int8)")
    parser.add_argument("--compressor", required=True, help="a scored subset K/V compressor (name or directory)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/squad_v1.1/dev.jsonl.gz"))
    parser.add_argument("--limit", type=int, default=None, help="first N samples of the mode")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--markdown-out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    with args.samples.open(encoding="utf-8") as handle:
        samples = [s for s in map(json.loads, filter(str.strip, handle)) if s.get("mode") == args.mode]
    if not samples:
        parser.error(f"{args.samples} holds no samples of mode {args.mode!r}")
    samples = samples[: args.limit]
    contexts = {record.id: record.context for record in iter_qa_records(args.data)}
    missing = [s["id"] for s in samples if s["id"] not in contexts]
    if missing:
        parser.error(f"{len(missing)} sample ids are not in {args.data} (first: {missing[0]})")
    compressor = resolve_compressor(args.compressor, device="cpu", dtype="float32")
    if not compressor.config.scores_positions:
        parser.error(f"{args.compressor} does not keep scored subset positions")
    result = measure(samples, contexts, compressor)
    result.update(samples=str(args.samples), mode=args.mode, compressor=args.compressor, fingerprint=compressor.fingerprint)
    markdown = to_markdown(result, args)
    for path, text in ((args.json_out, json.dumps(result, indent=2) + "\n"), (args.markdown_out, markdown)):
        if path is not None:
            atomic_write_text(path, text)
    logger.info("\n%s", markdown)


if __name__ == "__main__":
    main()
