"""Question answering with the frozen decoder, reading each question's own passage four ways.

* ``text``: the passage as text;
* ``slots``: the passage's memory slots;
* ``truncated``: the passage text cut to as many tokens as it has slots (the same number of
  decoder context positions), the baseline that slots must beat;
* ``none``: no passage.

Every mode uses the same decoder, the same prompt (:func:`memrag.training.objectives.qa_prompt`,
the one fine-tuning teaches) and greedy decoding up to :data:`memrag.prompts.ANSWER_STOP`.
Scores are SQuAD v1.1 exact match and token F1 in percent.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memrag.data.readers import OnError, QARecord, ReadReport, iter_qa_records
from memrag.eval.metrics import aggregate_squad, squad_scores
from memrag.generation import GenerationOptions
from memrag.prompts import ANSWER_STOP
from memrag.slots import Slots
from memrag.utils.progress import progress

logger = logging.getLogger(__name__)

MODES = ("text", "slots", "truncated", "none")


@dataclass
class QAEvaluation:
    """Scores of a QA evaluation.

    Attributes:
        results: ``{mode: {"exact_match": %, "f1": %, "n": int}}``.
        passage_positions: Mean decoder context positions the passage took, per mode.
        prompt_positions: Mean decoder context positions of the whole prompt, per mode.
        predictions: One dict per question and mode (id, mode, prediction, answers, em, f1).
    """

    results: dict[str, dict[str, float]]
    passage_positions: dict[str, float]
    prompt_positions: dict[str, float]
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, **info: Any) -> dict[str, Any]:
        """The JSON report: ``{"results": ..., "passage_positions": ..., ..., **info}``."""
        return {
            "results": self.results,
            "passage_positions": self.passage_positions,
            "prompt_positions": self.prompt_positions,
            **info,
        }

    def table(self) -> str:
        """A plain-text table of the scores."""
        lines = [f"{'mode':<10} {'EM':>6} {'F1':>6} {'n':>6} {'passage pos':>12}"]
        for mode, scores in self.results.items():
            lines.append(
                f"{mode:<10} {scores['exact_match']:6.1f} {scores['f1']:6.1f} {scores['n']:6d} "
                f"{self.passage_positions.get(mode, 0.0):12.1f}"
            )
        return "\n".join(lines)


def sample_qa_records(
    path: str | Path,
    *,
    limit: int | None = None,
    seed: int = 0,
    on_error: OnError = "skip",
    report: ReadReport | None = None,
) -> list[QARecord]:
    """Reads QA records, or a seeded uniform sample of ``limit`` of them (in file order).

    The sample is taken in one streaming pass (each record gets a random key; the ``limit``
    smallest keys win), so it does not depend on anything but the file and the seed.
    """
    records: Iterable[QARecord] = iter_qa_records(path, on_error=on_error, report=report)
    if limit is None:
        return list(records)
    rng = random.Random(seed)
    keyed = heapq.nsmallest(limit, ((rng.random(), r.line, r) for r in records), key=lambda item: item[:2])
    return [item[2] for item in sorted(keyed, key=lambda item: item[1])]


def truncated_context(compressor: Any, context: str) -> str:
    """The first ``num_slots(context)`` tokens of ``context``, as text."""
    segments = compressor.segment(context)
    count = sum(compressor.config.slots_for(len(s)) for s in segments)
    ids = [token for segment in segments for token in segment][:count]
    return compressor.tokenizer.decode(ids, skip_special_tokens=True)


def _contexts(compressor: Any, records: Sequence[QARecord], mode: str, batch_size: int, show_progress: bool) -> list[list[str | Slots]]:
    if mode == "none":
        return [[] for _ in records]
    unique = list(dict.fromkeys(r.context for r in records))
    if mode == "text":
        by_text: dict[str, str | Slots] = {c: c for c in unique}
    elif mode == "truncated":
        by_text = {c: truncated_context(compressor, c) for c in unique}
    elif mode == "slots":
        slots = compressor.compress(unique, batch_size=batch_size, show_progress=show_progress)
        by_text = dict(zip(unique, slots))
    else:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    return [[by_text[r.context]] for r in records]


def _positions(compressor: Any, context: str | Slots) -> int:
    if isinstance(context, Slots):
        return context.num_slots
    return len(compressor.tokenizer(context, add_special_tokens=False)["input_ids"])


def evaluate_qa(
    compressor: Any,
    records: Sequence[QARecord],
    *,
    modes: Sequence[str] = MODES,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    show_progress: bool = False,
) -> QAEvaluation:
    """Answers every question in every mode and scores the answers.

    Args:
        compressor: Provides the frozen decoder, the tokenizer and (for ``slots``) the encoder.
        records: The questions, each with its own passage.
        modes: Any of :data:`MODES`.
        batch_size: Questions per ``generate`` call (and passages per compression batch).
        max_new_tokens: Answer length limit.
        show_progress: Show progress bars.
    """
    from memrag.training.objectives import qa_prompt

    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    options = GenerationOptions(max_new_tokens=max_new_tokens, stop=ANSWER_STOP)
    tokenizer = compressor.tokenizer
    evaluation = QAEvaluation(results={}, passage_positions={}, prompt_positions={})
    for mode in modes:
        contexts = _contexts(compressor, records, mode, batch_size, show_progress)
        prompts = [qa_prompt(tokenizer, ctx, r.question) for ctx, r in zip(contexts, records)]
        passage = [sum(_positions(compressor, c) for c in ctx) for ctx in contexts]
        # Similar lengths together: less padding per generate call.
        order = sorted(range(len(records)), key=lambda i: passage[i], reverse=True)
        answers: dict[int, Any] = {}
        with progress(total=len(order), desc=f"qa {mode}", unit="q", disable=not show_progress) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                for index, generation in zip(chunk, compressor.generate([prompts[i] for i in chunk], options)):
                    answers[index] = generation
                bar.update(len(chunk))
        pairs = []
        for i, record in enumerate(records):
            text = answers[i].text.strip()
            em, f1 = squad_scores(text, record.answers)
            pairs.append((text, record.answers))
            evaluation.predictions.append(
                {"id": record.id, "mode": mode, "prediction": text, "answers": record.answers, "exact_match": em, "f1": f1}
            )
        evaluation.results[mode] = aggregate_squad(pairs)
        count = max(len(records), 1)
        evaluation.passage_positions[mode] = sum(passage) / count
        evaluation.prompt_positions[mode] = sum(a.prompt_positions for a in answers.values()) / count
        logger.info("qa %s: %s", mode, evaluation.results[mode])
    return evaluation
