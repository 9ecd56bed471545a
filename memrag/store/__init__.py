"""The memory store: documents, FAISS vectors and pre-computed memory slots on disk.

Layout of a store directory::

    manifest.json        what made the store (format version, memory kind and settings,
                         compressor and memory fingerprints, embedder id and dimension,
                         index type, slot dtype, counts)
    store.sqlite         chunk text, metadata, fidelity, vectors, slot locations (WAL mode)
    index/index-<seq>.faiss + .json
                         FAISS index checkpoint after journal entry <seq>, with its SHA-256
    shards/shard-<uuid>.safetensors
                         memory of many chunks (memory-mapped on read): embedding slots, or
                         K/V memory packed by memrag.memory.codec
    .write.lock          the writer lock

Consistency: a write (one batch of chunks) writes its slot shard atomically, then commits
one SQLite transaction that inserts the chunks and journals their vector ids. The FAISS
index on disk is a checkpoint plus that journal, so it can always be brought up to date;
killing a writer at any point (even ``kill -9``) loses at most the uncommitted batch, and
the files it leaves behind (temporary files, an unreferenced shard) are removed by the next
writer. One writer at a time holds the file lock; any number of readers in other threads or
processes search concurrently and catch up with the journal before each search.

Modules: :mod:`~memrag.store.memory_store` (the store), :mod:`~memrag.store.chunk_reader`
(reads, integrity checks), :mod:`~memrag.store.commit` (writes), :mod:`~memrag.store.live_index`
(the index and its checkpoints), :mod:`~memrag.store.compatibility` (compressor and embedder
checks), :mod:`~memrag.store.creation`, :mod:`~memrag.store.describe` (``info``),
:mod:`~memrag.store.maintenance` (compaction), :mod:`~memrag.store.verify` (verify, repair).
"""

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
from memrag.store.repair import repair_store
from memrag.store.verify import VerifyReport, verify_store

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
