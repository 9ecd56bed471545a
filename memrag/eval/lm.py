"""Continuation language modelling: how well the frozen decoder predicts the text that follows a
context it reads in one of several ways.

Held-out text is cut, as pretraining cuts its continuation examples
(:func:`memrag.eval.ae.evaluation_stream`), into a context of ``context_tokens`` tokens and the
``target_tokens`` tokens that follow it. The context is split into segments of the compressor's
``segment_length`` (:meth:`Compressor.segment_ids`), and the decoder scores the targets after:

* ``text``: the context as text, ``[BOS] context`` (the layout the continuation objective's
  distillation teacher reads);
* ``slots``: the context's slots and the continue marker, ``[BOS] slots <continue>``
  (:func:`~memrag.prompts.continue_prompt`, what continuation pretraining trains;
  embedding slots as ``inputs_embeds`` rows, K/V slots as a cache prefix);
* ``truncated``: the context's first tokens, as many as it has slots
  (:func:`memrag.contexts.truncated_ids`, the baseline compressed memory must beat);
* ``none``: ``[BOS]`` alone.

Every mode is scored by :func:`~memrag.scoring.target_logits` and
:func:`~memrag.scoring.token_losses`, the teacher-forced path of the training
objectives (one splice path, the adapter disabled), so only the context part of the prompt
differs between modes. Scores: mean negative log-likelihood per target token (nats),
perplexity (``exp`` of it) and top-1 next-token accuracy (percent), over all target tokens.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from memrag.contexts import PLAIN_MODES, check_context_modes, truncated_ids
from memrag.data.readers import OnError
from memrag.splice import IGNORE_INDEX, PromptPart
from memrag.utils.progress import progress

if TYPE_CHECKING:
    from memrag.protocols import DecodingModel

logger = logging.getLogger(__name__)

#: Ways the context is given to the decoder (the plain context modes, all run by default).
MODES = tuple(PLAIN_MODES)
#: Target tokens scored after each context by default.
DEFAULT_TARGET_TOKENS = 32
#: Default context length, in compressor segments.
DEFAULT_CONTEXT_SEGMENTS = 2


def check_modes(modes: Sequence[str]) -> None:
    """Raises ``ValueError`` naming the first mode that is not a plain context mode (K/V
    memory is not scored on continuations), or when none is given."""
    check_context_modes(modes, memory=False)


@dataclass
class Continuation:
    """One held-out example: a context and the tokens that follow it in the document.

    Attributes:
        context: Token ids the decoder reads (in the mode under test).
        target: Token ids that follow; their likelihood is scored.
    """

    context: list[int]
    target: list[int]


@dataclass
class ContinuationSample:
    """The examples read for an evaluation, and what was skipped on the way.

    Attributes:
        examples: The examples, in the order the seeded stream gave them.
        short_documents: Documents read that were shorter than context plus target (skipped).
        skipped_rows: Bad JSONL rows skipped (``on_error="skip"``).
    """

    examples: list[Continuation]
    short_documents: int = 0
    skipped_rows: int = 0


def sample_continuations(
    paths: Sequence[str | Path],
    tokenizer: Any,
    *,
    limit: int,
    context_tokens: int,
    target_tokens: int = DEFAULT_TARGET_TOKENS,
    seed: int = 0,
    holdout_fraction: float = 0.0,
    text_field: str = "text",
    on_error: OnError = "skip",
) -> ContinuationSample:
    """Up to ``limit`` (context, target) examples from text files, as ``memrag eval ae`` samples.

    The seeded stream of :func:`memrag.eval.ae.evaluation_stream` (with ``holdout_fraction > 0``
    only the held-out tail of each file, never trained on) cuts each document into consecutive
    contexts of ``context_tokens`` tokens, each followed by its ``target_tokens`` (the first
    tokens of the next context), as pretraining's continuation examples are cut. Documents
    shorter than ``context_tokens + target_tokens`` are skipped and counted.

    Args:
        paths: JSONL(.gz) text files.
        tokenizer: The compressor's tokenizer.
        limit: Examples wanted.
        context_tokens: Context length (tokens).
        target_tokens: Scored tokens after the context.
        seed: Seed of the sample.
        holdout_fraction: Read only this last fraction of each file's lines (0: whole files).
        text_field: Name of the text field.
        on_error: ``"skip"`` bad rows (counted) or ``"raise"`` a
            :class:`~memrag.data.readers.BadRowError` naming the file and line.

    Raises:
        ValueError: ``context_tokens`` or ``target_tokens`` below 1, or a bad holdout fraction.
    """
    from memrag.data.examples import take
    from memrag.eval.ae import evaluation_stream

    if context_tokens < 1 or target_tokens < 1:
        raise ValueError(
            "need context_tokens >= 1 and target_tokens >= 1, "
            f"got {context_tokens} and {target_tokens}"
        )
    stream = evaluation_stream(
        paths,
        tokenizer,
        limit=limit,
        seed=seed,
        holdout_fraction=holdout_fraction,
        text_field=text_field,
        on_error=on_error,
        max_length=context_tokens,
        min_length=context_tokens,
        continuation=target_tokens,
        ae_probability=0.0,
    )
    examples = [Continuation(list(e.segment), list(e.continuation)) for e in take(stream, limit)]
    sample = ContinuationSample(
        examples,
        short_documents=stream.short_documents,
        skipped_rows=sum(report.rows_skipped for report in stream.reports),
    )
    logger.info(
        "lm: %d examples, %d short documents skipped, %d bad rows skipped",
        len(examples), sample.short_documents, sample.skipped_rows,
    )
    return sample


@dataclass
class LMEvaluation:
    """Scores of a continuation evaluation.

    Attributes:
        results: ``{mode: {"nll", "perplexity", "top1", "n", "target_tokens",
            "context_positions", "prompt_positions"}}``: mean NLL per target token (nats),
            ``exp(nll)``, top-1 accuracy (%), examples, target tokens scored, mean decoder
            positions the context took (text tokens or slots) and mean positions before the
            first target (BOS, context, continue marker).
        retokenized: Contexts whose text (``text`` mode) tokenizes back to other ids than the
            original ones (the decoder then reads those).
        samples: One dict per example and mode (index, mode, nll, top1, target_tokens).
    """

    results: dict[str, dict[str, float]] = field(default_factory=dict)
    retokenized: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, **info: Any) -> dict[str, Any]:
        """The JSON report: ``{"results": ..., "retokenized_contexts": ..., **info}``."""
        return {"results": self.results, "retokenized_contexts": self.retokenized, **info}

    def _rows(self) -> list[list[str]]:
        return [
            [
                mode,
                f"{r['nll']:.4f}",
                f"{r['perplexity']:.2f}",
                f"{r['top1']:.1f}",
                f"{r['n']:d}",
                f"{r['target_tokens']:d}",
                f"{r['context_positions']:.1f}",
            ]
            for mode, r in self.results.items()
        ]

    def table(self) -> str:
        """A plain-text table of the scores."""
        header = ["mode", "NLL", "perplexity", "top-1 %", "n", "target tokens", "context pos"]
        rows = [header, *self._rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        return "\n".join(
            " ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths))
            )
            for row in rows
        )

    def markdown(self) -> str:
        """A markdown table of the scores."""
        lines = [
            "| mode | NLL | perplexity | top-1 % | n | target tokens | context positions |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in self._rows():
            lines.append("| " + " | ".join([f"`{row[0]}`", *row[1:]]) + " |")
        return "\n".join(lines) + "\n"


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    # As the continuation objective's distillation teacher reads a segment as text.
    return tokenizer.decode(list(ids))


def continuation_prompts(
    compressor: DecodingModel, contexts: Sequence[Sequence[int]], mode: str
) -> tuple[list[list[PromptPart]], list[int]]:
    """The prompts that precede the targets in ``mode``, and the positions each context takes.

    The splice path adds the BOS token in front of every prompt: ``text`` and ``truncated``
    are ``[BOS] text``, ``slots`` is ``[BOS] slots <continue>``, ``none`` is ``[BOS]``.

    Args:
        compressor: Makes the slots (``slots`` mode) and decides truncation.
        contexts: The contexts' token ids.
        mode: One of :data:`MODES`.
    """
    from memrag.prompts import continue_prompt, token_ids
    from memrag.scoring import encode_contexts

    check_modes([mode])
    tokenizer = compressor.tokenizer
    if mode == "none":
        return [[] for _ in contexts], [0] * len(contexts)
    if mode == "slots":
        memories = encode_contexts(compressor, [compressor.segment_ids(list(c)) for c in contexts])
        return [continue_prompt(m) for m in memories], [m.num_slots for m in memories]
    if mode == "text":
        texts = [_decode(tokenizer, c) for c in contexts]
    else:  # truncated
        cut = [truncated_ids(compressor, compressor.segment_ids(list(c))) for c in contexts]
        texts = [_decode(tokenizer, ids) for ids in cut]
    return [[text] for text in texts], [len(token_ids(tokenizer, text)) for text in texts]


def evaluate_lm(
    compressor: DecodingModel,
    examples: Sequence[Continuation],
    *,
    modes: Sequence[str] = MODES,
    batch_size: int = 8,
    show_progress: bool = False,
) -> LMEvaluation:
    """Scores every example's target tokens after its context, in every mode.

    Args:
        compressor: Provides the frozen decoder, the tokenizer and (``slots``) the encoder.
        examples: Contexts and targets (:func:`sample_continuations`).
        modes: Any of :data:`MODES`.
        batch_size: Examples per decoder forward pass (and per encoder batch).
        show_progress: Show a progress bar per mode.

    Raises:
        ValueError: an unknown mode; no examples; an empty target; ``none`` with a tokenizer
            without a BOS token (nothing would precede the first target).
    """
    from memrag.prompts import token_ids
    from memrag.scoring import target_logits, token_losses

    check_modes(modes)
    if not examples:
        raise ValueError("no examples to evaluate")
    if any(not e.target or not e.context for e in examples):
        raise ValueError("every example needs a non-empty context and target")
    tokenizer = compressor.tokenizer
    bos = 1 if tokenizer.bos_token_id is not None else 0
    if "none" in modes and not bos:
        raise ValueError(
            "mode 'none' needs a tokenizer with a BOS token: nothing would precede the first target"
        )
    evaluation = LMEvaluation()
    if "text" in modes:
        evaluation.retokenized = sum(
            token_ids(tokenizer, _decode(tokenizer, e.context)) != list(e.context) for e in examples
        )
        if evaluation.retokenized:
            logger.info(
                "lm: %d of %d contexts re-tokenize differently as text",
                evaluation.retokenized,
                len(examples),
            )
    for mode in modes:
        nll_sum, hits, tokens, context_positions, prompt_positions = 0.0, 0, 0, 0, 0
        bar = progress(total=len(examples), desc=f"lm {mode}", unit="ex", disable=not show_progress)
        with bar:
            for start in range(0, len(examples), batch_size):
                chunk = examples[start : start + batch_size]
                with torch.no_grad():
                    contexts = [e.context for e in chunk]
                    prompts, positions = continuation_prompts(compressor, contexts, mode)
                    scored = target_logits(compressor, prompts, [e.target for e in chunk])
                    sums, counts = token_losses(scored)
                    mask = scored.labels != IGNORE_INDEX
                    hit = (scored.logits.argmax(dim=-1) == scored.labels) & mask
                    correct = hit.sum(dim=1).tolist()
                for offset, (loss, count, right) in enumerate(zip(sums.tolist(), counts, correct)):
                    evaluation.samples.append(
                        {
                            "index": start + offset,
                            "mode": mode,
                            "nll": loss / count,
                            "top1": 100.0 * right / count,
                            "target_tokens": count,
                        }
                    )
                    nll_sum += loss
                    hits += right
                    tokens += count
                context_positions += sum(positions)
                prompt_positions += sum(bos + p + (mode == "slots") for p in positions)
                bar.update(len(chunk))
        nll = nll_sum / tokens
        evaluation.results[mode] = {
            "nll": nll,
            "perplexity": math.exp(nll) if nll < 700 else math.inf,
            "top1": 100.0 * hits / tokens,
            "n": len(examples),
            "target_tokens": tokens,
            "context_positions": context_positions / len(examples),
            "prompt_positions": prompt_positions / len(examples),
        }
        logger.info("lm %s: %s", mode, evaluation.results[mode])
    return evaluation
