"""Turning chunks into what a store writes: vectors, slots and fidelity scores.

:class:`ChunkProcessor` is the unit of work shared by :meth:`MemoryStore.add`, the local
indexing job and the Ray workers: embed a batch of chunks, compress them (length-sorted
batches inside :meth:`Compressor.compress`), cast the slots to the store's dtype, and score
their fidelity from the slots *as stored*. Its output, :class:`ProcessedBatch`, holds only
CPU tensors and NumPy arrays, so it can travel between processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from memrag.slots import Slots
from memrag.store.embedder import Embedder
from memrag.store.fidelity import FidelityScorer
from memrag.store.metadata import dumps
from memrag.utils.torch_utils import resolve_dtype

logger = logging.getLogger(__name__)


def content_hash(text: str, metadata: dict[str, Any]) -> str:
    """Hash of a chunk's text and metadata; a resumed build skips chunks whose hash is stored."""
    payload = json.dumps([text, dumps(metadata)], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


@dataclass
class ChunkInput:
    """A chunk to store.

    Attributes:
        id: Chunk id, unique in the store.
        text: Non-empty text.
        metadata: Validated JSON metadata.
        source_id: Id of the document it was cut from (``None`` for a chunk added whole).
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    source_id: str | None = None

    @property
    def content_hash(self) -> str:
        """See :func:`content_hash`."""
        return content_hash(self.text, self.metadata)


@dataclass
class ProcessedBatch:
    """Everything needed to write a batch of chunks into a store.

    Attributes:
        chunks: The inputs, in order.
        vectors: ``(n, dim)`` float32 embeddings.
        slots: All chunks' slots concatenated along dim 0, on CPU, in the store's dtype.
        slot_counts: Slots of each chunk.
        segment_slot_counts: Slots per segment of each chunk.
        num_tokens: Compressor tokens of each chunk.
        fidelity: Fidelity score of each chunk (``None`` when not measured).
        fingerprint: The compressor's fingerprint.
        slot_kind: ``"embedding"`` or ``"kv"``.
        embedder_id: The embedder's model id.
        seconds: Compute time of the batch.
        clamped: Ids of chunks whose slots overflowed the slot dtype (clamped, fidelity 0).
    """

    chunks: list[ChunkInput]
    vectors: np.ndarray
    slots: torch.Tensor
    slot_counts: list[int]
    segment_slot_counts: list[list[int]]
    num_tokens: list[int]
    fidelity: list[float | None]
    fingerprint: str
    slot_kind: str
    embedder_id: str
    seconds: float = 0.0
    clamped: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        """Compressor tokens in the batch."""
        return int(sum(self.num_tokens))


class ChunkProcessor:
    """Embeds, compresses and scores batches of chunks.

    Args:
        compressor: The compressor.
        embedder: The retrieval embedder.
        slot_dtype: Dtype the slots are stored in.
        compress_batch_size: Segments per encoder forward pass.
        fidelity: ``"reconstruct"`` or ``"none"``.
        fidelity_max_tokens: Tokens reconstructed per chunk at most.
        fidelity_sample_tokens: Tokens scored per chunk (``None``: all).
    """

    def __init__(
        self,
        compressor: Any,
        embedder: Embedder,
        *,
        slot_dtype: str = "float16",
        compress_batch_size: int = 16,
        fidelity: str = "reconstruct",
        fidelity_max_tokens: int = 512,
        fidelity_sample_tokens: int | None = 32,
    ) -> None:
        self.compressor = compressor
        self.embedder = embedder
        self.slot_dtype = resolve_dtype(slot_dtype)
        self.compress_batch_size = compress_batch_size
        self.scorer = (
            FidelityScorer(
                compressor, max_tokens=fidelity_max_tokens, sample_tokens=fidelity_sample_tokens
            )
            if fidelity == "reconstruct"
            else None
        )

    def process(self, chunks: Sequence[ChunkInput]) -> ProcessedBatch:
        """Vectors, slots and fidelity of ``chunks`` (texts must be non-empty)."""
        started = time.perf_counter()
        chunks = list(chunks)
        texts = [c.text for c in chunks]
        vectors = np.asarray(self.embedder.embed_documents(texts), dtype=np.float32)
        if vectors.shape != (len(chunks), self.embedder.dimension):
            raise ValueError(
                f"embedder {self.embedder.model_id} returned shape {vectors.shape}, "
                f"expected ({len(chunks)}, {self.embedder.dimension})"
            )
        compressed = (
            self.compressor.compress(texts, batch_size=self.compress_batch_size) if chunks else []
        )
        stored: list[Slots] = []
        clamped: list[str] = []
        for chunk, memory in zip(chunks, compressed):
            tensor = memory.tensor.detach().to(device="cpu", dtype=self.slot_dtype)
            if not torch.isfinite(tensor).all():
                info = torch.finfo(self.slot_dtype)
                tensor = torch.nan_to_num(tensor, nan=0.0, posinf=info.max, neginf=info.min)
                clamped.append(chunk.id)
                logger.warning(
                    "slots of chunk %r overflow %s; clamped and flagged use_text (store slots "
                    "as float32 or bfloat16 "
                    "to avoid this)",
                    chunk.id,
                    self.slot_dtype,
                )
            stored.append(
                Slots(
                    tensor,
                    memory.kind,
                    memory.fingerprint,
                    memory.num_tokens,
                    list(memory.segment_slot_counts),
                )
            )
        fidelity: list[float | None] = [None] * len(chunks)
        if self.scorer is not None and chunks:
            fidelity = list(self.scorer.score(texts, stored))
        for i, chunk in enumerate(chunks):
            if chunk.id in clamped:
                fidelity[i] = 0.0
        hidden = self.compressor.hidden_size
        return ProcessedBatch(
            chunks=chunks,
            vectors=vectors,
            slots=torch.cat([s.tensor for s in stored])
            if stored
            else torch.zeros((0, hidden), dtype=self.slot_dtype),
            slot_counts=[s.num_slots for s in stored],
            segment_slot_counts=[s.segment_slot_counts for s in stored],
            num_tokens=[s.num_tokens for s in stored],
            fidelity=fidelity,
            fingerprint=self.compressor.fingerprint,
            slot_kind=self.compressor.config.slot_kind,
            embedder_id=self.embedder.model_id,
            seconds=time.perf_counter() - started,
            clamped=clamped,
        )
