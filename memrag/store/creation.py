"""Making a new store: its manifest from what the user asked, and its empty directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memrag.compressor.resolve import resolve_compressor
from memrag.memory.spec import resolve_memory_spec
from memrag.store.chunking import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_TOKENS
from memrag.store.compatibility import memory_info
from memrag.store.database import Database
from memrag.store.embedder import Embedder, load_embedder
from memrag.store.errors import StoreExistsError
from memrag.store.index import IndexSpec, VectorIndex, write_checkpoint
from memrag.store.manifest import (
    DATABASE_NAME,
    DEFAULT_FIDELITY_THRESHOLDS,
    INDEX_DIR,
    SHARDS_DIR,
    CompressorInfo,
    EmbedderInfo,
    Manifest,
    Options,
    resolve_fidelity,
)
from memrag.utils.atomic import atomic_directory

if TYPE_CHECKING:
    from memrag.protocols import MemoryMaker

logger = logging.getLogger(__name__)


def new_manifest(
    compressor: MemoryMaker,
    embedder: Embedder,
    memory: Any,
    *,
    index: IndexSpec,
    fidelity: str = "auto",
    fidelity_threshold: float | None = None,
    **options: Any,
) -> Manifest:
    """The manifest of a new store of ``memory`` made by ``compressor``, indexed by ``embedder``.

    ``fidelity`` (``"auto"`` resolved for the memory kind) and ``fidelity_threshold`` (``None``:
    the method's default) are resolved here; ``options`` are the other :class:`Options` fields
    (``chunk_tokens`` ``None``: :data:`~memrag.store.chunking.DEFAULT_CHUNK_TOKENS`, with
    :data:`~memrag.store.chunking.DEFAULT_CHUNK_OVERLAP` unless an overlap is given).

    Raises:
        ValueError: the compressor cannot make that memory, or an option is out of range.
    """
    memory_description = memory_info(compressor, memory)
    fidelity = resolve_fidelity(fidelity, memory_description.kind)
    threshold = fidelity_threshold
    if threshold is None:
        threshold = DEFAULT_FIDELITY_THRESHOLDS.get(fidelity, 0.5)
    config = compressor.config
    if options.get("chunk_tokens") is None:
        options["chunk_tokens"] = DEFAULT_CHUNK_TOKENS
        if options.get("chunk_overlap") is None:
            options["chunk_overlap"] = DEFAULT_CHUNK_OVERLAP
    return Manifest(
        memory=memory_description,
        compressor=CompressorInfo(
            fingerprint=compressor.fingerprint,
            base_model=config.base_model,
            source=getattr(compressor, "source", None),
            slot_kind=config.slot_kind,
            segment_length=config.segment_length,
            compression_rate=config.compression_rate,
            hidden_size=compressor.hidden_size,
        ),
        embedder=EmbedderInfo(id=embedder.model_id, dimension=int(embedder.dimension)),
        index=index,
        options=Options(fidelity=fidelity, fidelity_threshold=threshold, **options),
    )


def initialize_store_directory(target: Path, manifest: Manifest) -> None:
    """Writes an empty store (shards folder, database, index checkpoint 0, manifest) at
    ``target``, which must not exist or be an empty directory; atomically: a crash leaves
    nothing behind."""
    if target.is_dir():
        target.rmdir()  # empty: replaced atomically below
    with atomic_directory(target) as tmp:
        (tmp / SHARDS_DIR).mkdir()
        Database(tmp / DATABASE_NAME, create=True).close()
        write_checkpoint(
            tmp / INDEX_DIR, 0, VectorIndex(manifest.index, manifest.embedder.dimension)
        )
        manifest.counts = {"chunks": 0, "slots": 0, "use_text": 0, "tokens": 0, "shards": 0}
        manifest.save(tmp)


def create_store_directory(
    target: Path,
    compressor: MemoryMaker,
    embedder: Any,
    memory: Any,
    index: IndexSpec,
    *,
    device: Any = "cpu",
    dtype: Any = None,
    **settings: Any,
) -> tuple[Any, Embedder]:
    """Writes a new, empty store at ``target`` for ``memory`` made by ``compressor`` (resolved:
    ``None`` is the shipped default for that memory) and indexed by ``embedder``; ``settings``
    go to :func:`new_manifest` (``fidelity``, ``fidelity_threshold`` and :class:`Options` fields).

    Returns:
        The compressor and embedder, loaded.

    Raises:
        StoreExistsError: ``target`` exists and is not an empty directory.
    """
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise StoreExistsError(
            f"cannot create a store at {target}: it exists and is not an empty directory"
        )
    compressor = resolve_compressor(
        compressor, memory_kind=resolve_memory_spec(memory).kind, device=device, dtype=dtype
    )
    embedder = load_embedder(embedder, device=device)
    manifest = new_manifest(compressor, embedder, memory, index=index, **settings)
    initialize_store_directory(target, manifest)
    logger.info(
        "created store %s (%s memory %s, compressor %s, embedder %s)",
        target,
        manifest.memory_info.kind,
        manifest.memory_info.fingerprint,
        compressor.fingerprint,
        embedder.model_id,
    )
    return compressor, embedder
