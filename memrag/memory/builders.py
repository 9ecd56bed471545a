"""Making a chunk's memory of any kind: one entry point for the store, eval and the bench.

``build_memory(compressor, spec, texts)`` returns one memory object per text:
:class:`~memrag.slots.Slots` for ``embedding`` (the compressor's encoder) and
:class:`~memrag.memory.kv.KVSlots` for the K/V kinds (the compressor's *frozen decoder*, its
adapter disabled: any compressor over the same base model makes the same K/V memory).

K/V memory of a text is computed after the BOS token, as the text's tokens would sit in any
prompt right after a start-of-text, and holds only the text's own positions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from memrag.memory.capture import capture_kv
from memrag.memory.codec import KVCodec
from memrag.memory.kinds import MemoryKind
from memrag.memory.kv import KVSlots
from memrag.memory.pruning import REPEAT_PROMPT, score_and_capture, select_positions
from memrag.memory.spec import MemorySpec
from memrag.slots import Slots
from memrag.utils.progress import progress

logger = logging.getLogger(__name__)


def context_limit(decoder: Any) -> int | None:
    """Positions the decoder can attend over (``max_position_embeddings``), if it says."""
    value = getattr(decoder.config, "max_position_embeddings", None)
    return int(value) if value else None


def build_memory(
    compressor: Any,
    spec: MemorySpec,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    show_progress: bool = False,
    fingerprint: str = "",
) -> list[Slots | KVSlots]:
    """One memory per text, of ``spec``'s kind.

    Args:
        compressor: The compressor (its encoder for ``embedding``, its frozen decoder for K/V).
        spec: What to make.
        texts: Non-empty texts.
        batch_size: Texts (segments, for ``embedding``) per forward pass.
        show_progress: Show a progress bar.
        fingerprint: Recorded in K/V memory (the store's memory fingerprint).

    Raises:
        ValueError: an empty text, or one longer than the decoder's context (index named).
    """
    kind = spec.memory_kind
    if kind is MemoryKind.EMBEDDING:
        return list(compressor.compress(list(texts), batch_size=batch_size, show_progress=show_progress))
    empty = [i for i, text in enumerate(texts) if not text or not text.strip()]
    if empty:
        raise ValueError(f"cannot make memory of empty or whitespace-only text (indices {empty[:10]})")
    splicer = compressor.splicer
    tokenizer = compressor.tokenizer
    sequences = [splicer.tokenize(text) for text in texts]
    context = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    repeat = splicer.tokenize(REPEAT_PROMPT) if spec.pruning.selection == "kvzip" else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[KVSlots] = []
    with compressor.decoder_mode() as decoder:
        limit = context_limit(decoder)
        pruned = kind is MemoryKind.KV_PRUNED
        reads = 2 if pruned and spec.pruning.selection == "kvzip" else 1
        for index, ids in enumerate(sequences):
            needed = len(context) + reads * len(ids) + (len(repeat) if reads == 2 else 0)
            if limit is not None and needed > limit:
                raise ValueError(
                    f"text {index} has {len(ids)} tokens; its K/V memory needs {needed} positions, "
                    f"more than the decoder's context ({limit}); cut it into smaller chunks"
                )
        with progress(total=len(texts), desc=f"{kind.value}", unit="chunk", disable=not show_progress) as bar:
            for begin in range(0, len(sequences), batch_size):
                group = sequences[begin : begin + batch_size]
                if pruned and spec.pruning.selection != "stride":
                    scored = score_and_capture(
                        decoder, group, spec.pruning, context=context, repeat_ids=repeat,
                        batch_size=batch_size, pad_token_id=pad,
                    )
                else:
                    scored = [(kv, None) for kv in capture_kv(decoder, group, context=context, batch_size=batch_size, pad_token_id=pad)]
                for (captured, scores), ids, text in zip(scored, group, texts[begin : begin + batch_size]):
                    span = len(ids)
                    layers = captured.keys.shape[1]
                    memory = KVSlots(
                        keys=captured.keys,
                        values=captured.values,
                        offsets=torch.arange(span).unsqueeze(1).expand(span, layers).clone(),
                        span=span,
                        kind=MemoryKind.KV_EXACT.value,
                        fingerprint=fingerprint,
                        num_tokens=span,
                        text=text,
                    )
                    if pruned:
                        if scores is None:
                            scores = torch.zeros(span, layers)
                        memory = memory.select(select_positions(scores, spec.pruning))
                    results.append(memory)
                bar.update(len(group))
    return results


def codec_for(decoder: Any, spec: MemorySpec) -> KVCodec:
    """The codec K/V memory of ``spec`` is stored with, for ``decoder``'s shape."""
    from memrag.memory.anatomy import decoder_anatomy
    from memrag.memory.codec import KVCodec

    anatomy = decoder_anatomy(decoder)
    return KVCodec(anatomy.num_layers, anatomy.num_kv_heads, anatomy.head_dim, spec.kv_dtype)


def as_stored(memories: Sequence[KVSlots], codec: KVCodec) -> tuple[list[KVSlots], list[int]]:
    """The memories after a trip through storage (float16 rounding or int8 quantization), and
    the bytes each takes in a store shard."""
    stored, sizes = [], []
    for memory in memories:
        rows = codec.encode(memory)
        sizes.append(int(rows.numel()))
        stored.append(
            codec.decode(rows, span=memory.span, kind=memory.kind, fingerprint=memory.fingerprint, text=memory.text)
        )
    return stored, sizes
