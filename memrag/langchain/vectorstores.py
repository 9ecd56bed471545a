"""``MemragVectorStore``: a LangChain vector store over a memrag :class:`MemoryStore`.

Adding documents compresses them into memory slots as they are stored (next to their
vectors), so a :class:`~memrag.langchain.ChatMemrag` over the same store can splice the slots
of whatever the retriever returns. Searching returns plain LangChain ``Document``\\ s: the same
``id``, text and metadata that were added, never slots.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from memrag.langchain.embeddings import (
    LANGCHAIN_EMBEDDER_PREFIX,
    to_langchain_embeddings,
    to_store_embedder,
)
from memrag.store.metadata import RESERVED_KEYS
from memrag.store.retrieval import SearchSettings, check_rerank
from memrag.store.records import ChunkRecord

if TYPE_CHECKING:
    from typing import Self

    from memrag.langchain.retrievers import MemragRetriever
    from memrag.store.memory_store import MemoryStore

logger = logging.getLogger(__name__)

#: Keyword arguments of the constructors that configure the vector store, not the store.
_OWN_OPTIONS = (
    "batch_size", "show_progress", "relevance_score_fn", "chunk_metadata", "search_mode",
    "search_weights", "rerank",
)


def _close_store(store: MemoryStore, directory: Path | None) -> None:
    """Closes ``store`` and removes ``directory`` (a temporary store's) when given."""
    try:
        store.close()
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
            logger.debug("removed temporary store %s", directory)


def _split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    own = {k: kwargs.pop(k) for k in _OWN_OPTIONS if k in kwargs}
    return own, kwargs


def cosine_relevance(score: float) -> float:
    """Maps a cosine similarity in ``[-1, 1]`` to a relevance score in ``[0, 1]``."""
    return min(1.0, max(0.0, (1.0 + score) / 2.0))


class MemragVectorStore(VectorStore):
    """LangChain ``VectorStore`` over a memrag :class:`~memrag.store.MemoryStore`.

    * **Adding** (``add_texts``, ``add_documents``, ``from_texts``) embeds each text and
      compresses it into memory slots with the store's compressor, in one committed batch
      per ``batch_size`` texts. Each text is stored as **one** chunk under its own id (a long
      text becomes several compressor segments of one chunk, never several chunks), so
      ``get_by_ids`` and search results give back exactly the ``Document`` that was added.
      Split long documents with a LangChain text splitter first if you want finer retrieval.
      Re-adding an id replaces it. Metadata values must be JSON (str, int, float, bool,
      None, lists and dicts of these); a bad value or an empty text raises
      :class:`~memrag.store.InvalidDocumentsError` naming it, and nothing is written.
    * **Searching** returns ``Document``\\ s with their ``id``, text and metadata. Searches are
      hybrid by default (dense and BM25 fused by reciprocal rank; ``search_mode="dense"`` or
      ``"lexical"`` per store or per call, ``search_weights=(dense, lexical)``), optionally
      reranked by the stored memory (``rerank=5``: the decoder's likelihood of the query given
      each candidate's memory). Scores: cosine similarity (dense), BM25 (lexical), the fused
      score (hybrid) or the mean log-probability per query token (reranked). Relevance scores
      (``similarity_score_threshold``) are ``(1 + cosine) / 2`` of a dense search.
      Searches take a metadata ``filter`` (MongoDB-style, see :mod:`memrag.store.metadata`).
    * Chunks cut by ``memrag index`` carry memrag's bookkeeping keys (``source_id``,
      ``chunk_index``, ``char_start``, ``char_end``) in the store; they are left out of the
      returned metadata unless ``chunk_metadata=True``.
    * **Models**: pass the vector store (or its ``store``) as ``source`` to
      :class:`~memrag.langchain.ChatMemrag` / :class:`~memrag.langchain.MemragLLM`; they
      fetch the slots of the documents the retriever returned.

    Build one with :meth:`create` (a new store; a temporary one when no path is given),
    :meth:`open` (an existing store), :meth:`from_texts` / :meth:`from_documents`, or wrap an
    open :class:`~memrag.store.MemoryStore`. The vector store is thread-safe as its store is;
    async methods run the sync ones in an executor.

    Args:
        store: The open memory store.
        batch_size: Texts per committed batch when adding.
        show_progress: Show a progress bar when adding.
        relevance_score_fn: Maps a cosine similarity to a relevance score in ``[0, 1]``
            (default :func:`cosine_relevance`).
        chunk_metadata: Keep memrag's chunk bookkeeping keys in returned metadata.
        search_mode: ``"hybrid"`` (default), ``"dense"`` or ``"lexical"``.
        search_weights: ``(dense, lexical)`` weights of a hybrid search (default equal).
        rerank: Candidates reranked by the stored memory (0: none, the default).
    """

    def __init__(
        self,
        store: MemoryStore,
        *,
        batch_size: int = 64,
        show_progress: bool = False,
        relevance_score_fn: Callable[[float], float] | None = None,
        chunk_metadata: bool = False,
        search_mode: str | None = None,
        search_weights: Sequence[float] | None = None,
        rerank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.search = SearchSettings.parse(search_mode, search_weights)
        self.rerank = check_rerank(rerank)
        self.store = store
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.relevance_score_fn = relevance_score_fn
        self.chunk_metadata = chunk_metadata
        self._langchain_embeddings: Embeddings | None = None
        self._finalizer: weakref.finalize | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | Path | None = None,
        *,
        embedding: Embeddings | Any = None,
        compressor: Any = None,
        **kwargs: Any,
    ) -> Self:
        """A vector store over a new, empty store.

        Args:
            path: Directory of the new store (must not exist, or be empty). ``None`` creates
                it in a temporary directory that is removed when the vector store is closed
                or garbage-collected, or the interpreter exits.
            embedding: A LangChain ``Embeddings``, a memrag embedder or embedder id
                (``"hashing:256"``, a sentence-transformers name), or ``None`` for the
                embedded all-MiniLM-L6-v2.
            compressor: A :class:`~memrag.compressor.Compressor`, a compressor directory or
                shipped name, or ``None`` for the shipped default.
            kwargs: The vector store's options (``batch_size``, ``show_progress``,
                ``relevance_score_fn``, ``chunk_metadata``) and
                :meth:`MemoryStore.create <memrag.store.MemoryStore.create>`'s (``index``,
                ``slot_dtype``, ``fidelity``, ``device``, ...).
        """
        from memrag.store.memory_store import MemoryStore

        own, store_options = _split_options(dict(kwargs))
        device = store_options.get("device", "cpu")
        embedder = to_store_embedder(embedding, device=device)
        temporary = path is None
        target = Path(tempfile.mkdtemp(prefix="memrag-store-")) if temporary else Path(path)
        try:
            store = MemoryStore.create(target, compressor, embedder, **store_options)
        except BaseException:
            if temporary:
                shutil.rmtree(target, ignore_errors=True)
            raise
        vectorstore = cls(store, **own)
        if temporary:
            vectorstore._finalizer = weakref.finalize(vectorstore, _close_store, store, target)
            logger.info("created a temporary store in %s", target)
        return vectorstore

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        embedding: Embeddings | Any = None,
        compressor: Any = None,
        read_only: bool = False,
        **kwargs: Any,
    ) -> Self:
        """A vector store over an existing store.

        Args:
            path: The store directory.
            embedding: The store's embedder, as for :meth:`create`. Required when the store
                was built with a LangChain ``Embeddings`` (the store cannot load that one by
                itself); otherwise the store loads the embedder named in its manifest.
            compressor: The store's compressor (default: the one named in its manifest,
                loaded when first needed).
            read_only: Open for searching only.
            kwargs: The vector store's options and :meth:`MemoryStore.open
                <memrag.store.MemoryStore.open>`'s.

        Raises:
            ValueError: the store was built with LangChain embeddings and none were given.
        """
        from memrag.store.memory_store import MemoryStore

        own, store_options = _split_options(dict(kwargs))
        embedder = None
        if embedding is not None:
            embedder = to_store_embedder(embedding, device=store_options.get("device", "cpu"))
        store = MemoryStore.open(path, compressor, embedder, read_only, **store_options)
        recorded = store.manifest.embedder.id
        if embedder is None and recorded.startswith(LANGCHAIN_EMBEDDER_PREFIX):
            store.close()
            raise ValueError(
                f"{path} was built with the LangChain embeddings {recorded!r}; pass the same "
                "model as embedding= to open it"
            )
        return cls(store, **own)

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | Any = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        path: str | Path | None = None,
        compressor: Any = None,
        **kwargs: Any,
    ) -> Self:
        """A vector store holding ``texts`` (compressed as they are added).

        Args:
            texts: The texts.
            embedding: The embedder (see :meth:`create`).
            metadatas: One metadata dict per text.
            ids: One id per text (default: new UUIDs).
            path: Store directory: an existing store there is opened and the texts are
                added to it, otherwise a new store is created there. ``None``: a temporary
                store, removed when the vector store is closed (see :meth:`create`).
            compressor: The compressor (see :meth:`create`).
            kwargs: Options for :meth:`create` / :meth:`open`.
        """
        if path is not None and (Path(path) / "manifest.json").is_file():
            own, store_options = _split_options(dict(kwargs))
            keep = {
                k: v for k, v in store_options.items() if k in ("lock_timeout", "device", "dtype")
            }
            vectorstore = cls.open(path, embedding=embedding, compressor=compressor, **own, **keep)
        else:
            vectorstore = cls.create(path, embedding=embedding, compressor=compressor, **kwargs)
        try:
            vectorstore.add_texts(texts, metadatas, ids=ids)
        except BaseException:
            vectorstore.close()
            raise
        return vectorstore

    # ------------------------------------------------------------------ properties
    @property
    def embeddings(self) -> Embeddings:
        """The store's embedder as LangChain ``Embeddings`` (the original LangChain model
        when the store was built with one)."""
        if self._langchain_embeddings is None:
            self._langchain_embeddings = to_langchain_embeddings(self.store.embedder)
        return self._langchain_embeddings

    @property
    def compressor(self) -> Any:
        """The store's compressor."""
        return self.store.compressor

    @property
    def document_source(self) -> MemoryStore:
        """Where memrag models fetch the slots of this store's documents (the store)."""
        return self.store

    def close(self) -> None:
        """Closes the store (and removes it when it is a temporary one)."""
        if self._finalizer is not None:
            self._finalizer()
        else:
            self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.store)

    def __bool__(self) -> bool:
        # An empty vector store is still a vector store (``if vectorstore:`` must not fail).
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.store!r})"

    # ------------------------------------------------------------------ writing
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embeds, compresses and stores ``texts``, one chunk each; re-adding an id replaces it.

        Args:
            texts: The texts (non-empty).
            metadatas: One JSON metadata dict per text.
            ids: One id per text; missing (``None`` or empty) ids get a new UUID.
            kwargs: ``batch_size`` and ``show_progress`` for this call.

        Returns:
            The ids, in input order.

        Raises:
            InvalidDocumentsError: some texts are empty, ids are repeated or metadata is not
                JSON (nothing is written).
            TypeError: an unknown keyword argument.
        """
        batch_size = kwargs.pop("batch_size", self.batch_size)
        show_progress = kwargs.pop("show_progress", self.show_progress)
        _no_more(kwargs, "add_texts")
        texts = _as_list(texts)
        chosen = None if ids is None else [doc_id or None for doc_id in ids]
        return self.store.add(
            texts,
            ids=chosen,
            metadatas=metadatas,
            chunk=False,
            batch_size=batch_size,
            show_progress=show_progress,
        )

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Deletes documents by id (unknown ids are ignored).

        Raises:
            ValueError: ``ids`` is ``None``: this store does not delete everything at once
                (remove the store's directory for that).
        """
        _no_more(kwargs, "delete")
        if ids is None:
            raise ValueError(
                "MemragVectorStore.delete needs the ids to delete; it does not delete all "
                "documents at once (remove the store directory instead)"
            )
        self.store.delete(_as_list(ids))
        return True

    # ------------------------------------------------------------------ reading
    def _to_document(self, record: ChunkRecord) -> Document:
        metadata = dict(record.metadata)
        if not self.chunk_metadata and _cut_by_memrag(record.id, metadata):
            for key in RESERVED_KEYS:
                metadata.pop(key, None)
        return Document(page_content=record.text, metadata=metadata, id=record.id)

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents with these ids, in the order asked; unknown ids are left out."""
        return [self._to_document(r) for r in self.store.get(_as_list(ids), with_slots=False)]

    def similarity_search_with_score(
        self,
        query: str,
        k: int = 4,
        filter: dict[str, Any] | None = None,
        *,
        search_mode: str | None = None,
        search_weights: Sequence[float] | None = None,
        rerank: int | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The ``k`` documents that best match ``query``, with their scores.

        Args:
            query: The query text.
            k: Number of documents.
            filter: Metadata filter, e.g. ``{"lang": "en"}`` or ``{"year": {"$gte": 2000}}``.
            search_mode: ``"hybrid"``, ``"dense"`` or ``"lexical"`` (default: the store's).
            search_weights: ``(dense, lexical)`` weights of a hybrid search.
            rerank: Candidates reranked by the stored memory (default: the store's).
        """
        _no_more(kwargs, "similarity_search_with_score")
        search = self.search
        if search_mode is not None or search_weights is not None:
            weights = search_weights if search_weights is not None else search.weights
            search = SearchSettings.parse(search_mode or search.mode, weights)
        rerank = self.rerank if rerank is None else rerank
        records = self.store.search(
            query, k, filter, with_slots=bool(rerank), mode=search.mode,
            weights=search.weights, rerank=rerank,
        )
        return [(self._to_document(r), float(r.score or 0.0)) for r in records]

    def _search(
        self, vector: Any, k: int, filter: dict[str, Any] | None
    ) -> list[tuple[Document, float]]:
        records = self.store.search_by_vector(vector, k, filter, with_slots=False)
        return [(self._to_document(r), float(r.score or 0.0)) for r in records]

    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        # Relevance scores are mapped from cosine similarities: a dense search.
        filter = kwargs.pop("filter", None)
        _no_more(kwargs, "similarity_search_with_relevance_scores")
        vector = self.store.embedder.embed_query(query)
        pairs = self._search(vector, k, filter)
        relevance = self._select_relevance_score_fn()
        return [(doc, relevance(score)) for doc, score in pairs]

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` documents closest to ``query`` (see :meth:`similarity_search_with_score`)."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def similarity_search_by_vector_with_score(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The ``k`` documents closest to a query vector, with their cosine similarity."""
        _no_more(kwargs, "similarity_search_by_vector")
        return self._search(embedding, k, filter)

    def similarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """The ``k`` documents closest to a query vector of the store's dimension."""
        pairs = self.similarity_search_by_vector_with_score(embedding, k, filter, **kwargs)
        return [doc for doc, _ in pairs]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return self.relevance_score_fn or cosine_relevance

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """``k`` documents chosen by maximal marginal relevance among the ``fetch_k`` closest.

        Args:
            query: The query text.
            k: Number of documents.
            fetch_k: Candidates fetched by similarity.
            lambda_mult: 1 favours similarity to the query, 0 diversity.
            filter: Metadata filter.
        """
        _no_more(kwargs, "max_marginal_relevance_search")
        vector = self.store.embedder.embed_query(query)
        return self._mmr(vector, k, fetch_k, lambda_mult, filter)

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """:meth:`max_marginal_relevance_search` for a query vector."""
        _no_more(kwargs, "max_marginal_relevance_search_by_vector")
        return self._mmr(embedding, k, fetch_k, lambda_mult, filter)

    def _mmr(
        self,
        vector: Any,
        k: int,
        fetch_k: int,
        lambda_mult: float,
        filter: dict[str, Any] | None,
    ) -> list[Document]:
        if k <= 0:
            return []
        records = self.store.search_by_vector(vector, max(k, fetch_k), filter, with_slots=False)
        if not records:
            return []
        # The store does not hand out its vectors; the candidates are re-embedded (the same
        # embedder on the same text gives the stored vectors back).
        candidates = self.store.embedder.embed_documents([r.text for r in records])
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        chosen = maximal_marginal_relevance(query, candidates, lambda_mult=lambda_mult, k=k)
        return [self._to_document(records[i]) for i in chosen]

    # ------------------------------------------------------------------ retriever
    def as_retriever(self, **kwargs: Any) -> MemragRetriever:
        """A :class:`~memrag.langchain.MemragRetriever` over this store.

        Args:
            kwargs: Retriever fields: ``k`` (documents per query, default 4),
                ``search_type`` (``"similarity"``, ``"mmr"`` or
                ``"similarity_score_threshold"``) and ``search_kwargs`` (``filter``,
                ``fetch_k``, ``lambda_mult``, ``score_threshold``, ``search_mode``,
                ``search_weights``, ``rerank``; a ``k`` there is taken
                as the retriever's ``k``), plus ``tags`` / ``metadata``.
        """
        from memrag.langchain.retrievers import MemragRetriever

        tags = kwargs.pop("tags", None) or [*self._get_retriever_tags()]
        return MemragRetriever(vectorstore=self, tags=tags, **kwargs)


def _as_list(values: str | Iterable[str]) -> list[str]:
    """``values`` as a list (a single string is one value, not its characters)."""
    return [values] if isinstance(values, str) else list(values)


def _no_more(kwargs: dict[str, Any], method: str) -> None:
    if kwargs:
        raise TypeError(
            f"MemragVectorStore.{method} got unexpected keyword argument(s) {sorted(kwargs)}"
        )


def _cut_by_memrag(chunk_id: str, metadata: dict[str, Any]) -> bool:
    """Whether a chunk was cut from a document by memrag (``memrag index``, ``chunk=True``).

    Such chunks have every reserved key, and the id ``<source_id>#<chunk_index>``.
    """
    if not all(key in metadata for key in RESERVED_KEYS):
        return False
    return chunk_id == f"{metadata['source_id']}#{metadata['chunk_index']}"
