"""Making a chunk's memory of any kind: one entry point for the store, eval and the bench.

``build_memory(compressor, spec, texts)`` returns one memory object per text:
:class:`~memrag.memory.slots.Slots` for ``embedding`` (the compressor's encoder) and
:class:`~memrag.memory.kv.KVSlots` for the K/V kinds (the compressor's *frozen decoder*, its
adapter disabled: any compressor over the same base model makes the same K/V memory).

K/V memory of a text is computed after the BOS token, as the text's tokens would sit in any
prompt right after a start-of-text, and holds only the text's own positions.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from memrag.memory.capture import capture_kv
from memrag.memory.codec import KVCodec
from memrag.memory.kinds import MemoryKind, check_compressor_kind
from memrag.memory.kv import KVSlots
from memrag.memory.pruning import REPEAT_PROMPT, score_and_capture, select_positions
from memrag.memory.slots import Slots
from memrag.memory.spec import MemorySpec
from memrag.utils.progress import progress

if TYPE_CHECKING:
    from memrag.protocols import MemoryMaker

logger = logging.getLogger(__name__)


def context_limit(decoder: Any) -> int | None:
    """Positions the decoder can attend over (``max_position_embeddings``), if it says."""
    value = getattr(decoder.config, "max_position_embeddings", None)
    return int(value) if value else None


@dataclass
class _Made:
    """What was computed for one text: its exact memory and any selection scores."""

    exact: KVSlots
    scores: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class MemoryReuse:
    """Keys, values and selection scores of texts, kept between :func:`build_memory` calls.

    One evaluation of several K/V settings over the same texts computes each text's memory once
    (and each selection's scores once). It holds every text's keys and values in memory.

    Attributes:
        made: Per text, its exact memory and selection scores.
        seconds: Seconds per text it took to compute, per ``"exact"`` or selection name (the
            offline cost a store would pay, whatever was reused later), averaged over every
            text computed so far.
    """

    made: dict[str, _Made] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    _spent: dict[str, tuple[float, int]] = field(default_factory=dict, repr=False)

    def record(self, key: str, seconds: float, texts: int) -> None:
        """Adds ``seconds`` spent computing ``texts`` texts' ``key`` memory to the average."""
        total, count = self._spent.get(key, (0.0, 0))
        self._spent[key] = (total + seconds, count + texts)
        self.seconds[key] = (total + seconds) / (count + texts)


def scored_selection(spec: MemorySpec) -> str | None:
    """The selection whose scores ``spec``'s memory needs (``None``: exact memory, or stride)."""
    if spec.memory_kind is not MemoryKind.KV_PRUNED or spec.pruning.selection == "stride":
        return None
    return spec.pruning.selection


def computation_key(spec: MemorySpec) -> str:
    """The name :class:`MemoryReuse` records ``spec``'s computation under: its scored
    selection, or ``"exact"``."""
    return scored_selection(spec) or "exact"


def build_memory(
    compressor: MemoryMaker,
    spec: MemorySpec,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    show_progress: bool = False,
    fingerprint: str = "",
    reuse: MemoryReuse | None = None,
    names: Sequence[str] | None = None,
) -> list[Slots | KVSlots]:
    """One memory per text, of ``spec``'s kind.

    Args:
        compressor: The compressor (its encoder for ``embedding``, its frozen decoder for K/V).
        spec: What to make.
        texts: Non-empty texts.
        batch_size: Texts (segments, for ``embedding``) per forward pass.
        show_progress: Show a progress bar.
        fingerprint: Recorded in K/V memory (the store's memory fingerprint).
        reuse: Kept between calls (e.g. one evaluation of several K/V settings over the same
            texts): each text's exact memory and selection scores are computed once.
        names: How errors name each text (e.g. ``"chunk 'id'"``); default ``"text <index>"``.

    Raises:
        ValueError: an empty text, or one longer than the decoder's context (named).
    """
    kind = spec.memory_kind
    if kind.needs_training:
        check_compressor_kind(kind, compressor.config.slot_kind)
        return list(compressor.compress(list(texts), batch_size=batch_size, show_progress=show_progress))
    empty = [i for i, text in enumerate(texts) if not text or not text.strip()]
    if empty:
        raise ValueError(f"cannot make memory of empty or whitespace-only text (indices {empty[:10]})")
    pruned = kind is MemoryKind.KV_PRUNED
    selection = scored_selection(spec)
    reuse = reuse if reuse is not None else MemoryReuse()
    made = reuse.made
    name_of: dict[str, str] = {}
    for index, text in enumerate(texts):
        name_of.setdefault(text, names[index] if names is not None else f"text {index}")
    missing = [
        text
        for text in name_of
        if text not in made or (selection is not None and selection not in made[text].scores)
    ]
    if missing:
        started = time.perf_counter()
        _compute(
            compressor, missing, [name_of[text] for text in missing], selection, made,
            batch_size=batch_size, show_progress=show_progress, label=kind.value,
        )
        reuse.record(computation_key(spec), time.perf_counter() - started, len(missing))
    results: list[KVSlots] = []
    for text in texts:
        entry = made[text]
        memory = dataclasses.replace(entry.exact, fingerprint=fingerprint)
        if pruned:
            scores = entry.scores.get(selection) if selection else None
            if scores is None:
                scores = torch.zeros(memory.span, memory.num_layers)
            memory = memory.select(select_positions(scores, spec.pruning), merge=spec.pruning.merge)
            if spec.pruning.compact:
                memory = memory.compacted()
        results.append(memory)
    return results


def _compute(
    compressor: MemoryMaker,
    texts: Sequence[str],
    names: Sequence[str],
    selection: str | None,
    made: dict[str, Any],
    *,
    batch_size: int,
    show_progress: bool,
    label: str,
) -> None:
    """Exact memory (and ``selection``'s scores) of ``texts``, into ``made``."""
    from memrag.memory.pruning import PruningConfig

    splicer = compressor.splicer
    tokenizer = compressor.tokenizer
    sequences = [splicer.tokenize(text) for text in texts]
    context = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    repeat = splicer.tokenize(REPEAT_PROMPT) if selection == "kvzip" else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with compressor.decoder_mode() as decoder:
        limit = context_limit(decoder)
        reads = 2 if selection == "kvzip" else 1
        for name, ids in zip(names, sequences):
            needed = len(context) + reads * len(ids) + (len(repeat) if reads == 2 else 0)
            if limit is not None and needed > limit:
                raise ValueError(
                    f"{name} has {len(ids)} tokens; its K/V memory needs {needed} positions, "
                    f"more than the decoder's context ({limit}); cut it into smaller chunks"
                )
        with progress(total=len(texts), desc=label, unit="chunk", disable=not show_progress) as bar:
            for begin in range(0, len(sequences), batch_size):
                group = sequences[begin : begin + batch_size]
                if selection is not None:
                    scored = score_and_capture(
                        decoder, group, PruningConfig(selection=selection), context=context,
                        repeat_ids=repeat, batch_size=batch_size, pad_token_id=pad,
                    )
                else:
                    captured = capture_kv(decoder, group, context=context, batch_size=batch_size, pad_token_id=pad)
                    scored = [(kv, None) for kv in captured]
                for (captured_kv, scores), ids, text in zip(scored, group, texts[begin : begin + batch_size]):
                    entry = made.get(text)
                    if entry is None:
                        entry = made[text] = _Made(
                            KVSlots.consecutive(
                                captured_kv.keys,
                                captured_kv.values,
                                kind=MemoryKind.KV_EXACT.value,
                                num_tokens=len(ids),
                                text=text,
                            )
                        )
                    if selection is not None and scores is not None:
                        entry.scores[selection] = scores
                bar.update(len(group))


def codec_for(decoder: Any, spec: MemorySpec, calibration: str = "") -> KVCodec:
    """The codec K/V memory of ``spec`` is stored with, for ``decoder``'s shape (with a store's
    recorded calibration text for codecs that need one)."""
    from memrag.memory.anatomy import decoder_anatomy
    from memrag.memory.codec import kv_codec

    anatomy = decoder_anatomy(decoder)
    return kv_codec(
        anatomy.num_layers, anatomy.num_kv_heads, anatomy.head_dim, spec.kv_dtype, calibration
    )


def make_codec(compressor: MemoryMaker, spec: MemorySpec, calibration: str = "") -> KVCodec:
    """The codec of a store of ``spec`` made by ``compressor``: :func:`codec_for` its decoder,
    with the store's recorded ``calibration`` text, or — where the codec needs one and none is
    given (a new store) — one fitted now (:meth:`~memrag.memory.codec.KVCodec.calibrate`)."""
    with compressor.decoder_mode() as decoder:
        codec = codec_for(decoder, spec, calibration)
    if not codec.needs_calibration or calibration:
        return codec
    return codec.calibrate(compressor, spec)


def as_stored(
    memories: Sequence[KVSlots], codec: KVCodec, decode_seconds: list[float] | None = None
) -> tuple[list[KVSlots], list[int]]:
    """The memories after a trip through storage (float16 rounding, quantization or transform
    coding), and the bytes each takes in a store shard.

    Args:
        memories: Float memory.
        codec: The store's codec.
        decode_seconds: Receives the seconds each chunk's decoding took (when given).
    """
    stored, sizes = [], []
    for memory in memories:
        rows = codec.encode(memory)
        sizes.append(int(rows.numel()))
        started = time.perf_counter()
        stored.append(
            codec.decode(rows, span=memory.span, kind=memory.kind, fingerprint=memory.fingerprint, text=memory.text)
        )
        if decode_seconds is not None:
            decode_seconds.append(time.perf_counter() - started)
    return stored, sizes
