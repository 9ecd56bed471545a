"""Reconstruction: how much of a segment the decoder can rebuild from its slots alone.

Each segment is compressed, spliced as the autoencoding prompt of pretraining
(:func:`~memrag.prompts.reconstruct_prompt`: embedding slots and the reconstruct
marker, or K/V slots and KVzip's repeat instruction), and decoded greedily. Scores: corpus BLEU-4 (0–1) over whitespace
words and exact match (percent), overall and per segment-length bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from memrag.data.readers import OnError
from memrag.eval.metrics import corpus_bleu, reconstruction_exact_match
from memrag.generation import GenerationOptions
from memrag.utils.progress import progress

if TYPE_CHECKING:
    from memrag.protocols import DecodingModel

logger = logging.getLogger(__name__)

#: Upper edges of the segment-length buckets of the breakdown.
DEFAULT_BUCKETS = (32, 64, 128, 256, 512)


@dataclass
class AEEvaluation:
    """Scores of a reconstruction evaluation.

    Attributes:
        overall: ``{"bleu4": 0..1, "exact_match": %, "n": int}``.
        by_length: The same per bucket of segment length in tokens, e.g. ``"65-128"``.
        samples: One dict per segment (tokens, reference, reconstruction, exact match).
    """

    overall: dict[str, float]
    by_length: dict[str, dict[str, float]]
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, **info: Any) -> dict[str, Any]:
        """The JSON report: ``{"results": {"overall": ..., "by_length": ...}, **info}``."""
        return {"results": {"overall": self.overall, "by_length": self.by_length}, **info}

    def table(self) -> str:
        """A plain-text table of the scores."""
        lines = [f"{'tokens':<10} {'BLEU-4':>7} {'EM %':>6} {'n':>5}"]
        for label, scores in [*self.by_length.items(), ("all", self.overall)]:
            lines.append(f"{label:<10} {scores['bleu4']:7.3f} {scores['exact_match']:6.1f} {scores['n']:5d}")
        return "\n".join(lines)


def sample_segments(
    paths: Sequence[str | Path],
    tokenizer: Any,
    *,
    limit: int,
    max_length: int,
    min_length: int = 16,
    seed: int = 0,
    holdout_fraction: float = 0.0,
    text_field: str = "text",
    on_error: OnError = "skip",
) -> list[list[int]]:
    """Segments of token ids, lengths uniform in ``[min_length, max_length]``, from text files.

    With ``holdout_fraction > 0`` only the held-out tail of each file is read (the lines a
    training run with the same fraction never saw).
    """
    from memrag.data.examples import take

    stream = evaluation_stream(
        paths,
        tokenizer,
        limit=limit,
        max_length=max_length,
        min_length=min(min_length, max_length),
        ae_probability=1.0,
        seed=seed,
        holdout_fraction=holdout_fraction,
        text_field=text_field,
        on_error=on_error,
    )
    return [example.segment for example in take(stream, limit)]


def evaluation_stream(
    paths: Sequence[str | Path],
    tokenizer: Any,
    *,
    limit: int,
    seed: int = 0,
    holdout_fraction: float = 0.0,
    text_field: str = "text",
    on_error: OnError = "skip",
    **stream_options: Any,
) -> Any:
    """A seeded, finite :class:`~memrag.data.examples.PretrainStream` for evaluation.

    With ``holdout_fraction > 0`` it reads only the held-out tail of each file (the lines a
    training run with the same fraction never saw), else whole files; either way once.

    Args:
        paths: JSONL(.gz) text files.
        tokenizer: Text -> token ids (no special tokens added).
        limit: Examples wanted (sets how many documents are read in parallel).
        seed: Seed of the stream (lengths, kinds, document choice).
        holdout_fraction: Size of each file's held-out tail (0: whole files).
        text_field: Name of the text field.
        on_error: ``"skip"`` or ``"raise"`` for bad rows.
        **stream_options: Other :class:`PretrainStream` arguments (lengths, ``ae_probability``,
            ``continuation``).
    """
    from memrag.data.examples import PretrainStream
    from memrag.prompts import token_ids

    return PretrainStream(
        list(paths),
        lambda text: token_ids(tokenizer, text),
        split="heldout" if holdout_fraction > 0 else "all",
        holdout_fraction=holdout_fraction,
        seed=seed,
        open_records=max(1, min(limit, 64)),
        text_field=text_field,
        on_error=on_error,
        **stream_options,
    )


def _bucket(length: int, edges: Sequence[int]) -> str:
    low = 1
    for edge in edges:
        if length <= edge:
            return f"{low}-{edge}"
        low = edge + 1
    return f">{edges[-1]}"


def _scores(pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    bleu = corpus_bleu([ref.split() for ref, _ in pairs], [hyp.split() for _, hyp in pairs])
    em = sum(reconstruction_exact_match(ref, hyp) for ref, hyp in pairs)
    return {"bleu4": bleu, "exact_match": 100.0 * em / max(len(pairs), 1), "n": len(pairs)}


def reconstruct(compressor: DecodingModel, segments: Sequence[Sequence[int]], *, batch_size: int = 8, show_progress: bool = False) -> list[str]:
    """Decodes each token segment back from its slots (greedy, up to EOS)."""
    from memrag.prompts import reconstruct_prompt

    order = sorted(range(len(segments)), key=lambda i: len(segments[i]), reverse=True)
    texts: dict[int, str] = {}
    with progress(total=len(order), desc="reconstruct", unit="seg", disable=not show_progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            with torch.inference_mode():
                tensors = compressor.encode_segments([segments[i] for i in chunk])
            prompts = [
                reconstruct_prompt(compressor.join_segments([piece], len(segments[i])))
                for i, piece in zip(chunk, tensors)
            ]
            options = GenerationOptions(max_new_tokens=max(len(segments[i]) for i in chunk) + 8)
            for index, generation in zip(chunk, compressor.generate(prompts, options)):
                texts[index] = generation.text
            bar.update(len(chunk))
    return [texts[i] for i in range(len(segments))]


def evaluate_ae(
    compressor: DecodingModel,
    segments: Sequence[Sequence[int]],
    *,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    batch_size: int = 8,
    show_progress: bool = False,
) -> AEEvaluation:
    """Reconstructs every segment and scores the reconstructions.

    Args:
        compressor: The compressor under test.
        segments: Token-id segments, each at most the compressor's ``segment_length``.
        buckets: Upper edges of the length buckets of the breakdown.
        batch_size: Segments per ``generate`` call.
        show_progress: Show a progress bar.
    """
    tokenizer = compressor.tokenizer
    hypotheses = reconstruct(compressor, segments, batch_size=batch_size, show_progress=show_progress)
    references = [tokenizer.decode(list(s), skip_special_tokens=True) for s in segments]
    edges = sorted(buckets)
    grouped: dict[str, list[tuple[str, str]]] = {}
    samples = []
    for segment, reference, hypothesis in zip(segments, references, hypotheses):
        label = _bucket(len(segment), edges)
        grouped.setdefault(label, []).append((reference, hypothesis))
        samples.append(
            {
                "tokens": len(segment),
                "reference": reference,
                "reconstruction": hypothesis,
                "exact_match": reconstruction_exact_match(reference, hypothesis),
            }
        )
    order = [_bucket(edge, edges) for edge in edges] + [f">{edges[-1]}"]
    by_length = {label: _scores(grouped[label]) for label in order if label in grouped}
    overall = _scores(list(zip(references, hypotheses)))
    logger.info("reconstruction: %s", overall)
    return AEEvaluation(overall=overall, by_length=by_length, samples=samples)
