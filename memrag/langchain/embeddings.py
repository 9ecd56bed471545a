"""Embedders both ways: LangChain ``Embeddings`` for a memrag store, and the reverse.

A :class:`~memrag.store.MemoryStore` embeds with a memrag
:class:`~memrag.store.embedder.Embedder` (``model_id``, ``dimension``, NumPy vectors);
LangChain code hands around :class:`~langchain_core.embeddings.Embeddings`. The adapters here
turn one into the other, so a :class:`~memrag.langchain.MemragVectorStore` can be built over
any LangChain embeddings model and exposes its store's embedder as LangChain ``Embeddings``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

logger = logging.getLogger(__name__)

#: Prefix of the embedder id a store records for a LangChain embeddings model.
LANGCHAIN_EMBEDDER_PREFIX = "langchain:"
#: Text embedded once to learn the width of a LangChain embeddings model.
_PROBE_TEXT = "memrag dimension probe"
_MODEL_ATTRIBUTES = ("model", "model_name", "model_id")


def _normalized(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)


def langchain_model_id(embeddings: Embeddings) -> str:
    """The id a store records for ``embeddings``: ``langchain:<class>[:<model>]``.

    The model part is the first string attribute among ``model``, ``model_name`` and
    ``model_id`` (what LangChain's embedding integrations call their model).
    """
    model_id = f"{LANGCHAIN_EMBEDDER_PREFIX}{type(embeddings).__name__}"
    for name in _MODEL_ATTRIBUTES:
        value = getattr(embeddings, name, None)
        if isinstance(value, str) and value:
            return f"{model_id}:{value}"
    return model_id


class LangChainEmbedder:
    """A LangChain ``Embeddings`` model as a memrag store embedder.

    Vectors are returned as float32 and L2-normalised, as a store expects (its scores are
    cosine similarities).

    Args:
        embeddings: The LangChain embeddings model.
        model_id: The id recorded in the store's manifest (default:
            :func:`langchain_model_id`); a store reopened later must be given an embedder
            with the same id and width.
        dimension: Vector width; when omitted it is learned by embedding one probe text the
            first time it is needed (one call to the model).
    """

    def __init__(
        self, embeddings: Embeddings, *, model_id: str | None = None, dimension: int | None = None
    ) -> None:
        if not isinstance(embeddings, Embeddings):
            raise TypeError(
                f"expected a LangChain Embeddings object, got {type(embeddings).__name__}"
            )
        self.embeddings = embeddings
        self._model_id = model_id or langchain_model_id(embeddings)
        self._dimension = dimension
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """The id recorded in a store's manifest."""
        return self._model_id

    @property
    def dimension(self) -> int:
        """Vector width (probed once when not given)."""
        if self._dimension is None:
            with self._lock:
                if self._dimension is None:
                    self._dimension = len(self.embeddings.embed_query(_PROBE_TEXT))
                    logger.debug("%s has dimension %d", self._model_id, self._dimension)
        return self._dimension

    def _check(self, vectors: np.ndarray, count: int) -> np.ndarray:
        if vectors.ndim != 2 or vectors.shape != (count, self.dimension):
            raise ValueError(
                f"{self._model_id} returned vectors of shape {vectors.shape}, "
                f"expected ({count}, {self.dimension})"
            )
        return _normalized(vectors)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dimension)`` float32, L2-normalised."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = np.asarray(self.embeddings.embed_documents(list(texts)), dtype=np.float32)
        return self._check(vectors, len(texts))

    def embed_query(self, text: str) -> np.ndarray:
        """``(dimension,)`` float32, L2-normalised."""
        vector = np.asarray(self.embeddings.embed_query(text), dtype=np.float32).reshape(1, -1)
        return self._check(vector, 1)[0]

    def __repr__(self) -> str:
        return f"LangChainEmbedder({self._model_id!r})"


class MemragEmbeddings(Embeddings):
    """A memrag store embedder as LangChain ``Embeddings`` (lists of floats).

    Args:
        embedder: Any :class:`~memrag.store.embedder.Embedder` (all-MiniLM-L6-v2, hashing, ...).
    """

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder

    @property
    def model_id(self) -> str:
        """The wrapped embedder's id."""
        return str(self.embedder.model_id)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text."""
        return np.asarray(self.embedder.embed_documents(list(texts)), dtype=np.float32).tolist()

    def embed_query(self, text: str) -> list[float]:
        """The vector of a query."""
        return np.asarray(self.embedder.embed_query(text), dtype=np.float32).tolist()

    def __repr__(self) -> str:
        return f"MemragEmbeddings({self.model_id!r})"


def to_store_embedder(embedding: Any, *, device: str | None = "cpu") -> Any:
    """A memrag store embedder from what a user passes as ``embedding``.

    Args:
        embedding: A LangChain ``Embeddings`` (wrapped in :class:`LangChainEmbedder`), a
            :class:`MemragEmbeddings` (unwrapped), a memrag embedder, an embedder id
            (``"hashing:256"``, a sentence-transformers name or path), or ``None`` for the
            default all-MiniLM-L6-v2.
        device: Device of a sentence-transformers model loaded here.
    """
    from memrag.store.embedder import load_embedder

    if isinstance(embedding, MemragEmbeddings):
        return embedding.embedder
    if isinstance(embedding, Embeddings):
        return LangChainEmbedder(embedding)
    return load_embedder(embedding, device=device)


def to_langchain_embeddings(embedder: Any) -> Embeddings:
    """LangChain ``Embeddings`` for a store embedder (the original one for a LangChain model)."""
    if isinstance(embedder, LangChainEmbedder):
        return embedder.embeddings
    return MemragEmbeddings(embedder)
