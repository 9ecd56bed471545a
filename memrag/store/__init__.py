"""The memory store: documents, FAISS vectors and pre-computed memory slots on disk."""

from memrag.store.chunking import Chunker
from memrag.store.documents import InvalidDocumentsError
from memrag.store.embedder import (
    DEFAULT_EMBEDDER,
    Embedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    load_embedder,
)
from memrag.store.errors import (
    EmbedderMismatchError,
    StoreCorruptError,
    StoreError,
    StoreExistsError,
    StoreLockedError,
    StoreNotFoundError,
    StoreReadOnlyError,
    StoreVersionError,
)
from memrag.store.fidelity import FidelityScorer
from memrag.store.index import IndexSpec
from memrag.store.maintenance import CompactReport
from memrag.store.memory_store import MemoryStore
from memrag.store.processing import ChunkInput, ChunkProcessor, ProcessedBatch
from memrag.store.records import ChunkRecord
from memrag.store.verify import VerifyReport, repair_store, verify_store

__all__ = [
    "DEFAULT_EMBEDDER",
    "ChunkInput",
    "ChunkProcessor",
    "ChunkRecord",
    "Chunker",
    "CompactReport",
    "Embedder",
    "EmbedderMismatchError",
    "FidelityScorer",
    "HashingEmbedder",
    "IndexSpec",
    "InvalidDocumentsError",
    "MemoryStore",
    "ProcessedBatch",
    "SentenceTransformerEmbedder",
    "StoreCorruptError",
    "StoreError",
    "StoreExistsError",
    "StoreLockedError",
    "StoreNotFoundError",
    "StoreReadOnlyError",
    "StoreVersionError",
    "VerifyReport",
    "load_embedder",
    "repair_store",
    "verify_store",
]
