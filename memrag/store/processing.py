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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from memrag.memory.kinds import MemoryKind, check_compressor_kind
from memrag.memory.slots import Slots
from memrag.store.embedder import Embedder
from memrag.store.fidelity import AgreementScorer, FidelityScorer
from memrag.store.metadata import dumps
from memrag.utils.torch_utils import resolve_dtype

if TYPE_CHECKING:
    from memrag.protocols import MemoryMaker
    from memrag.store.manifest import Manifest

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
        slots: All chunks' stored rows concatenated along dim 0, on CPU: slots in the store's
            dtype, or packed K/V rows (uint8).
        slot_counts: Stored rows of each chunk.
        segment_slot_counts: Slots per segment of each chunk (embedding slots only).
        num_tokens: Decoder positions each chunk's memory spans (its text tokens, or the
            positions kept by compact K/V memory).
        text_tokens: Compressor tokens of each chunk's text.
        fidelity: Fidelity score of each chunk (``None`` when not measured).
        fingerprint: The memory's fingerprint (the compressor's, for embedding slots).
        slot_kind: The memory kind (``"embedding"``, ``"kv-exact"``, ``"kv-pruned"``).
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
    text_tokens: list[int]
    fidelity: list[float | None]
    fingerprint: str
    slot_kind: str
    embedder_id: str
    seconds: float = 0.0
    clamped: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        """Text tokens in the batch."""
        return int(sum(self.text_tokens))


class ChunkProcessor:
    """Embeds, compresses and scores batches of chunks.

    Args:
        compressor: The compressor (its encoder makes embedding slots, its frozen decoder K/V
            memory).
        embedder: The retrieval embedder.
        memory: The store's :class:`~memrag.memory.spec.MemorySpec` (or its JSON form);
            ``None``: embedding slots.
        slot_dtype: Dtype embedding slots are stored in.
        compress_batch_size: Segments (or chunks, for K/V memory) per forward pass.
        fidelity: ``"reconstruct"``, ``"agreement"`` or ``"none"`` (see
            :mod:`memrag.store.fidelity`). Every kind but ``kv-exact`` is scored (exact memory
            loses nothing).
        fidelity_max_tokens: Tokens reconstructed per chunk at most.
        fidelity_sample_tokens: Tokens scored per chunk (``None``: all).
        reuse: A :class:`~memrag.memory.builders.MemoryReuse` shared with other processors of
            the same texts (K/V memory and selection scores computed once).
        kv_calibration: A store's K/V calibration (its manifest's ``memory.kv_calibration``);
            empty: measured here where the storage dtype needs one (``int4c``, ``tc<bits>``).
    """

    def __init__(
        self,
        compressor: MemoryMaker,
        embedder: Embedder,
        *,
        memory: Any = None,
        slot_dtype: str = "float16",
        compress_batch_size: int = 16,
        fidelity: str = "reconstruct",
        fidelity_max_tokens: int = 512,
        fidelity_sample_tokens: int | None = 32,
        reuse: Any = None,
        kv_calibration: str = "",
    ) -> None:
        from memrag.memory.spec import MemorySpec

        self.reuse = reuse
        self.compressor = compressor
        self.embedder = embedder
        self.memory = (
            memory
            if isinstance(memory, MemorySpec)
            else MemorySpec.from_dict(memory or {"kind": "embedding"})
        )
        self.slot_dtype = resolve_dtype(slot_dtype)
        self.compress_batch_size = compress_batch_size
        check_compressor_kind(self.memory.memory_kind, compressor.config.slot_kind)
        # Exact K/V memory is the text's own: nothing to score. Every other kind is lossy.
        self.scorer: FidelityScorer | AgreementScorer | None = None
        if self.memory.memory_kind is not MemoryKind.KV_EXACT:
            if fidelity == "reconstruct":
                self.scorer = FidelityScorer(
                    compressor, max_tokens=fidelity_max_tokens, sample_tokens=fidelity_sample_tokens
                )
            elif fidelity == "agreement":
                self.scorer = AgreementScorer(compressor)
        self._codec = None
        if self.memory.packed_kv:
            from memrag.memory.builders import make_codec

            self._codec = make_codec(compressor, self.memory, kv_calibration)

    def _text_tokens(self, text: str) -> int:
        return len(self.compressor.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def fingerprint(self) -> str:
        """What the memory this processor makes is recorded as (see the store's manifest)."""
        return self.memory.fingerprint_for(self.compressor)

    def process(self, chunks: Sequence[ChunkInput]) -> ProcessedBatch:
        """Vectors, memory and fidelity of ``chunks`` (texts must be non-empty)."""
        started = time.perf_counter()
        chunks = list(chunks)
        texts = [c.text for c in chunks]
        vectors = np.asarray(self.embedder.embed_documents(texts), dtype=np.float32)
        if vectors.shape != (len(chunks), self.embedder.dimension):
            raise ValueError(
                f"embedder {self.embedder.model_id} returned shape {vectors.shape}, "
                f"expected ({len(chunks)}, {self.embedder.dimension})"
            )
        if self.memory.packed_kv:
            return self._process_kv(chunks, texts, vectors, started)
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
            text_tokens=[s.num_tokens for s in stored],
            fidelity=fidelity,
            fingerprint=self.compressor.fingerprint,
            slot_kind=self.memory.kind,
            embedder_id=self.embedder.model_id,
            seconds=time.perf_counter() - started,
            clamped=clamped,
        )

    def _process_kv(
        self, chunks: list[ChunkInput], texts: list[str], vectors: np.ndarray, started: float
    ) -> ProcessedBatch:
        from memrag.memory.builders import build_memory

        assert self._codec is not None
        fingerprint = self.fingerprint
        made = (
            build_memory(
                self.compressor,
                self.memory,
                texts,
                batch_size=self.compress_batch_size,
                fingerprint=fingerprint,
                reuse=self.reuse,
                names=[f"chunk {chunk.id!r}" for chunk in chunks],
            )
            if chunks
            else []
        )
        rows = [self._codec.encode(memory) for memory in made]  # type: ignore[arg-type]
        fidelity: list[float | None] = [None] * len(chunks)
        if self.scorer is not None and chunks:
            stored = [
                self._codec.decode(r, span=m.span, kind=m.kind, fingerprint=fingerprint, text=m.text)
                for r, m in zip(rows, made)
            ]
            fidelity = list(self.scorer.score(texts, stored))
        return ProcessedBatch(
            chunks=chunks,
            vectors=vectors,
            slots=torch.cat(rows)
            if rows
            else torch.zeros((0, self._codec.row_bytes), dtype=torch.uint8),
            slot_counts=[int(r.shape[0]) for r in rows],
            segment_slot_counts=[[] for _ in rows],
            num_tokens=[int(m.span) for m in made],  # type: ignore[union-attr]
            text_tokens=[self._text_tokens(text) for text in texts],
            fidelity=fidelity,
            fingerprint=fingerprint,
            slot_kind=self.memory.kind,
            embedder_id=self.embedder.model_id,
            seconds=time.perf_counter() - started,
        )


def processor_settings(manifest: Manifest) -> dict[str, Any]:
    """The :class:`ChunkProcessor` settings a store's manifest fixes (memory, its calibration,
    dtype, fidelity)."""
    memory = manifest.memory_info
    return {
        "memory": dict(memory.settings),
        "kv_calibration": memory.kv_calibration,
        **manifest.options.processor_kwargs(),
    }


def processor_for(
    manifest: Manifest,
    compressor: MemoryMaker,
    embedder: Embedder,
    *,
    compress_batch_size: int = 16,
    reuse: Any = None,
) -> ChunkProcessor:
    """A :class:`ChunkProcessor` making the memory a store's ``manifest`` records.

    ``reuse`` (a :class:`~memrag.memory.builders.MemoryReuse`) shares computed K/V memory
    and selection scores with other processors of the same texts (several stores of one
    corpus in different K/V settings).
    """
    return ChunkProcessor(
        compressor,
        embedder,
        compress_batch_size=compress_batch_size,
        reuse=reuse,
        **processor_settings(manifest),
    )
