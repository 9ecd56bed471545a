"""The memory store: documents, FAISS vectors and pre-computed memory slots on disk.

Importing this package is cheap; the store's classes are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from memrag.store.records import ChunkRecord

_EXPORTS = {
    "MemoryStore": "memrag.store.memory_store",
    "InvalidDocumentsError": "memrag.store.memory_store",
    "CompactReport": "memrag.store.memory_store",
    "IndexSpec": "memrag.store.index",
    "Chunker": "memrag.store.chunking",
    "Embedder": "memrag.store.embedder",
    "HashingEmbedder": "memrag.store.embedder",
    "SentenceTransformerEmbedder": "memrag.store.embedder",
    "load_embedder": "memrag.store.embedder",
    "DEFAULT_EMBEDDER": "memrag.store.embedder",
    "FidelityScorer": "memrag.store.fidelity",
    "ChunkInput": "memrag.store.processing",
    "ChunkProcessor": "memrag.store.processing",
    "ProcessedBatch": "memrag.store.processing",
    "verify_store": "memrag.store.verify",
    "repair_store": "memrag.store.verify",
    "VerifyReport": "memrag.store.verify",
    "StoreError": "memrag.store.errors",
    "StoreCorruptError": "memrag.store.errors",
    "StoreExistsError": "memrag.store.errors",
    "StoreLockedError": "memrag.store.errors",
    "StoreNotFoundError": "memrag.store.errors",
    "StoreReadOnlyError": "memrag.store.errors",
    "StoreVersionError": "memrag.store.errors",
    "EmbedderMismatchError": "memrag.store.errors",
}

__all__ = ["ChunkRecord", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'memrag.store' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
