"""Question answering with the frozen decoder, reading each question's own passage in many ways.

The modes (``text``, ``slots``, ``truncated``, ``none``, K/V memory modes such as
``kv-exact:int8``) are those of :mod:`memrag.contexts`; K/V memory is read as a store keeps it
(after its storage codec's round trip).

Every mode uses the same decoder, the same prompt (:func:`memrag.prompts.qa_prompt`,
the one fine-tuning teaches) and greedy decoding up to :data:`memrag.prompts.ANSWER_STOP`.
Scores are SQuAD v1.1 exact match and token F1 in percent, and ``contains`` (the gold answer
inside the prediction, :func:`memrag.eval.metrics.contains_answer`): F1 rewards short answers,
``contains`` what the answer holds.
"""

from __future__ import annotations

import heapq
import logging
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memrag.contexts import PLAIN_MODES, check_context_modes, truncated_context
from memrag.data.readers import OnError, QARecord, ReadReport, iter_qa_records
from memrag.eval.metrics import aggregate_squad, answer_scores
from memrag.generation import GenerationOptions
from memrag.memory.kv import KVSlots
from memrag.memory.protocol import Memory
from memrag.memory.slots import Slots
from memrag.prompts import ANSWER_STOP
from memrag.utils.progress import progress

if TYPE_CHECKING:
    from memrag.protocols import DecodingModel

logger = logging.getLogger(__name__)

#: What ``memrag eval qa`` runs by default.
DEFAULT_MODES = ("text", "slots", "kv-exact", "kv-pruned", "truncated", "none")
#: The modes without settings (:data:`memrag.contexts.PLAIN_MODES`); any K/V memory mode too.
MODES = tuple(PLAIN_MODES)


def check_modes(modes: Sequence[str]) -> None:
    """Raises ``ValueError`` naming the first mode that is neither plain nor a K/V memory mode."""
    check_context_modes(modes, memory=True)


@dataclass
class QAEvaluation:
    """Scores of a QA evaluation.

    Attributes:
        results: ``{mode: {"exact_match": %, "f1": %, "contains": %, "n": int}}`` (reports
            written before ``contains`` existed lack it).
        passage_positions: Mean decoder context positions the passage took, per mode (text
            tokens, slots, or the K/V entries kept).
        prompt_positions: Mean decoder context positions of the whole prompt, per mode.
        prefilled_positions: Mean positions of the whole prompt the decoder computed at query
            time (K/V memory is not recomputed).
        memory: Per compressed mode, what making and storing the passage's memory cost:
            ``{"seconds_per_passage", "bytes_per_passage"}``, and for K/V memory
            ``"decode_ms_per_passage"`` (median time to decode its stored bytes).
        predictions: One dict per question and mode (id, mode, prediction, answers,
            exact_match, f1, contains).
    """

    results: dict[str, dict[str, float]]
    passage_positions: dict[str, float]
    prompt_positions: dict[str, float]
    prefilled_positions: dict[str, float] = field(default_factory=dict)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, **info: Any) -> dict[str, Any]:
        """The JSON report: ``{"results": ..., "passage_positions": ..., ..., **info}``."""
        return {
            "results": self.results,
            "passage_positions": self.passage_positions,
            "prompt_positions": self.prompt_positions,
            "prefilled_positions": self.prefilled_positions,
            "memory": self.memory,
            **info,
        }

    def merge(self, other: QAEvaluation) -> None:
        """Adds ``other``'s modes (an evaluation of the same questions) to this one."""
        self.results.update(other.results)
        self.passage_positions.update(other.passage_positions)
        self.prompt_positions.update(other.prompt_positions)
        self.prefilled_positions.update(other.prefilled_positions)
        self.memory.update(other.memory)
        self.predictions.extend(other.predictions)

    @classmethod
    def from_json(cls, report: dict[str, Any], predictions: Sequence[dict[str, Any]] = ()) -> QAEvaluation:
        """Inverse of :meth:`to_json` (with the predictions, when they were kept)."""
        return cls(
            results=dict(report["results"]),
            passage_positions=dict(report["passage_positions"]),
            prompt_positions=dict(report["prompt_positions"]),
            prefilled_positions=dict(report.get("prefilled_positions", {})),
            memory=dict(report.get("memory", {})),
            predictions=[p for p in predictions if p.get("mode") in report["results"]],
        )

    def markdown(self, labels: dict[str, str] | None = None) -> str:
        """A markdown table of every mode, with F1 against ``text`` and ``truncated``.

        Args:
            labels: Names to show instead of the modes' (e.g. with every setting spelled out).
        """
        labels = labels or {}
        text_f1 = self.results.get("text", {}).get("f1")
        cut_f1 = self.results.get("truncated", {}).get("f1")
        lines = [
            "| mode | EM | F1 | contains | F1 / text | F1 - truncated | passage positions "
            "| prefilled | bytes / passage | offline s / passage | decode ms / passage |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for mode, scores in self.results.items():
            cost = self.memory.get(mode, {})
            size, seconds = cost.get("bytes_per_passage"), cost.get("seconds_per_passage")
            cells = [
                f"`{labels.get(mode, mode)}`",
                f"{scores['exact_match']:.1f}",
                f"{scores['f1']:.1f}",
                _percent(scores.get("contains")),
                f"{scores['f1'] / text_f1:.2f}" if text_f1 else "",
                f"{scores['f1'] - cut_f1:+.1f}" if cut_f1 is not None else "",
                f"{self.passage_positions.get(mode, 0.0):.1f}",
                f"{self.prefilled_positions.get(mode, 0.0):.1f}",
                "" if size is None else f"{size:,.0f}",
                "" if seconds is None else f"{seconds:.3f}",
                "" if "decode_ms_per_passage" not in cost else f"{cost['decode_ms_per_passage']:.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def table(self) -> str:
        """A plain-text table of the scores."""
        width = max([10, *(len(mode) for mode in self.results)])
        lines = [
            f"{'mode':<{width}} {'EM':>6} {'F1':>6} {'contains':>8} {'n':>6} {'passage pos':>12} "
            f"{'prefilled':>10} "
            f"{'bytes/passage':>14}"
        ]
        for mode, scores in self.results.items():
            stored = self.memory.get(mode, {}).get("bytes_per_passage")
            lines.append(
                f"{mode:<{width}} {scores['exact_match']:6.1f} {scores['f1']:6.1f} "
                f"{_percent(scores.get('contains')):>8} {scores['n']:6d} "
                f"{self.passage_positions.get(mode, 0.0):12.1f} "
                f"{self.prefilled_positions.get(mode, 0.0):10.1f} "
                f"{'' if stored is None else f'{stored:,.0f}':>14}"
            )
        return "\n".join(lines)


def _percent(value: float | None) -> str:
    """A score cell: one decimal, or empty for a report written before the metric existed."""
    return "" if value is None else f"{value:.1f}"


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


Context = str | Slots | KVSlots


def _contexts(
    compressor: DecodingModel,
    records: Sequence[QARecord],
    mode: str,
    batch_size: int,
    show_progress: bool,
    reuse: Any = None,
) -> tuple[list[list[Context]], dict[str, float]]:
    """Each record's contexts in ``mode``, and the memory's cost (compressed modes)."""
    import time

    from memrag.memory.builders import (
        as_stored,
        build_memory,
        computation_key,
        make_codec,
    )
    from memrag.memory.spec import parse_memory_mode

    if mode == "none":
        return [[] for _ in records], {}
    unique = list(dict.fromkeys(r.context for r in records))
    cost: dict[str, float] = {}
    if mode == "text":
        by_text: dict[str, Context] = {c: c for c in unique}
    elif mode == "truncated":
        by_text = {c: truncated_context(compressor, c) for c in unique}
    elif mode == "slots":
        started = time.perf_counter()
        slots = compressor.compress(unique, batch_size=batch_size, show_progress=show_progress)
        cost["seconds_per_passage"] = (time.perf_counter() - started) / max(len(unique), 1)
        # As a store keeps them: float16.
        cost["bytes_per_passage"] = sum(s.float16_bytes for s in slots) / max(len(slots), 1)
        by_text = dict(zip(unique, slots))
    else:
        spec = parse_memory_mode(mode)
        started = time.perf_counter()
        made = build_memory(
            compressor, spec, unique, batch_size=batch_size, show_progress=show_progress, reuse=reuse
        )
        # What a store would pay to make it (the decoder's memory is computed once per
        # selection, whatever was reused; a K/V compressor's slots each time).
        cost["seconds_per_passage"] = (
            (time.perf_counter() - started) / max(len(unique), 1)
            if spec.memory_kind.needs_training
            else reuse.seconds.get(computation_key(spec), 0.0)
        )
        decode_seconds: list[float] = []
        stored, sizes = as_stored(made, make_codec(compressor, spec), decode_seconds)  # type: ignore[arg-type]
        cost["bytes_per_passage"] = sum(sizes) / max(len(sizes), 1)
        # Median time to decode one passage's stored bytes into memory (one process, in RAM).
        cost["decode_ms_per_passage"] = 1000 * statistics.median(decode_seconds or [0.0])
        by_text = dict(zip(unique, stored))
    return [[by_text[r.context]] for r in records], cost


def _positions(compressor: DecodingModel, context: Context) -> int:
    if isinstance(context, Memory):
        return context.num_slots
    return len(compressor.tokenizer(context, add_special_tokens=False)["input_ids"])


def evaluate_qa(
    compressor: DecodingModel,
    records: Sequence[QARecord],
    *,
    modes: Sequence[str] = MODES,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    show_progress: bool = False,
    done: QAEvaluation | None = None,
    on_mode: Any = None,
    reuse: Any = None,
) -> QAEvaluation:
    """Answers every question in every mode and scores the answers.

    Args:
        compressor: Provides the frozen decoder, the tokenizer and (for ``slots``) the encoder.
        records: The questions, each with its own passage.
        modes: Any of :data:`MODES`, or K/V memory modes (``kv-exact:int8`` ...).
        batch_size: Questions per ``generate`` call (and passages per compression batch).
        max_new_tokens: Answer length limit.
        show_progress: Show progress bars.
        done: An earlier, interrupted evaluation of the same questions: its modes are kept
            and not run again.
        on_mode: Called with the evaluation after each mode finishes (to save it as it goes).
        reuse: A :class:`~memrag.memory.builders.MemoryReuse`: K/V modes compute each
            passage's keys, values and selection scores once (default: one for this call).
    """
    from memrag.prompts import qa_prompt

    check_modes(modes)
    options = GenerationOptions(max_new_tokens=max_new_tokens, stop=ANSWER_STOP)
    tokenizer = compressor.tokenizer
    evaluation = done or QAEvaluation(results={}, passage_positions={}, prompt_positions={})
    from memrag.memory.builders import MemoryReuse

    reuse = MemoryReuse() if reuse is None else reuse
    for mode in modes:
        if mode in evaluation.results:
            logger.info("qa %s: kept from the earlier run", mode)
            continue
        contexts, cost = _contexts(compressor, records, mode, batch_size, show_progress, reuse)
        if cost:
            evaluation.memory[mode] = cost
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
            pairs.append((text, record.answers))
            evaluation.predictions.append(
                {"id": record.id, "mode": mode, "prediction": text, "answers": record.answers, **answer_scores(text, record.answers)}
            )
        evaluation.results[mode] = aggregate_squad(pairs)
        count = max(len(records), 1)
        evaluation.passage_positions[mode] = sum(passage) / count
        evaluation.prompt_positions[mode] = sum(a.prompt_positions for a in answers.values()) / count
        evaluation.prefilled_positions[mode] = (
            sum(a.prefilled_positions for a in answers.values()) / count
        )
        logger.info("qa %s: %s", mode, evaluation.results[mode])
        if on_mode is not None:
            on_mode(evaluation)
    return evaluation
