"""A store's search: first-stage retrieval (dense, lexical or hybrid) and optional reranking
by the stored memory. :meth:`MemoryStore.search` is the one entry point; the CLI, the
LangChain retriever and the server all call it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from memrag.store.records import ChunkRecord
from memrag.store.rerank import MemoryReranker
from memrag.store.retrieval import SearchSettings, check_rerank, reciprocal_rank_fusion

if TYPE_CHECKING:
    from memrag.store.memory_store import MemoryStore

logger = logging.getLogger(__name__)


def search_store(
    store: MemoryStore,
    query: str,
    k: int,
    filter: dict[str, Any] | None,
    with_slots: bool,
    settings: SearchSettings,
    rerank: int = 0,
    *,
    vector: np.ndarray | None = None,
) -> list[ChunkRecord]:
    """The ``k`` chunks of ``store`` that best match ``query`` (see :meth:`MemoryStore.search`);
    ``vector``: the query's embedding when the caller has it.

    Raises:
        ValueError: ``rerank`` is negative.
    """
    check_rerank(rerank)
    if k <= 0:
        return []
    settings = _usable(store, settings)
    wanted = max(rerank, k) if rerank else k
    if vector is None and settings.mode != "lexical":
        vector = np.asarray(store.embedder.embed_query(query), dtype=np.float32).reshape(-1)
    store.refresh()
    # The dense list needs the filter's vids; the lexical one applies the filter in its query.
    allowed = store.db.filter_vids(filter) if filter and settings.mode != "lexical" else None
    if allowed is not None and len(allowed) == 0:
        return []
    with store.live_index.lock.read():
        if settings.mode == "dense":
            hits = store.live_index.search(vector, wanted, allowed)
        elif settings.mode == "lexical":
            hits = store.db.lexical_search(query, wanted, filter)
        else:
            pool = settings.candidates(wanted)
            dense = store.live_index.search(vector, pool, allowed)
            lexical = store.db.lexical_search(query, pool, filter)
            weights = (settings.dense_weight, settings.lexical_weight)
            hits = reciprocal_rank_fusion([dense, lexical], weights, wanted)
        records = store.reader.scored_records(hits, with_slots)
    if rerank and len(records) > 1:
        records = MemoryReranker(store.compressor).rerank(query, records, k)
    return records[:k]


def _usable(store: MemoryStore, settings: SearchSettings) -> SearchSettings:
    """``settings``, or dense ones (with a warning, once) for a hybrid search of a store
    without a lexical index; a lexical search of one raises, naming the repair."""
    if settings.mode == "dense" or store.db.has_lexical_index:
        return settings
    if settings.mode == "lexical":
        store.db.lexical_search("", 1)  # raises StoreCorruptError naming the repair
    if not store.warned_no_lexical:
        logger.warning(
            "%s has no lexical index (made before memrag kept one, opened read-only): hybrid "
            "searches are dense only until it is opened for writing once or "
            "`memrag index verify STORE --repair` builds it",
            store.path,
        )
        store.warned_no_lexical = True
    return SearchSettings("dense")


def vector_search(
    store: MemoryStore,
    vector: Any,
    k: int,
    filter: dict[str, Any] | None,
    with_slots: bool,
) -> list[ChunkRecord]:
    """The ``k`` chunks of ``store`` whose vectors are closest to ``vector`` (cosine)."""
    query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    if query.shape[1] != store.dimension:
        raise ValueError(
            f"query vector has dimension {query.shape[1]}, the store's vectors {store.dimension}"
        )
    return search_store(store, "", k, filter, with_slots, SearchSettings("dense"), vector=query[0])
