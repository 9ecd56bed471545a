"""The memory store: documents, FAISS vectors and pre-computed memory slots on disk."""

from memrag.store.records import ChunkRecord

__all__ = ["ChunkRecord"]
