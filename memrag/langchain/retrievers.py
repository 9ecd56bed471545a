"""``MemragRetriever``: the retriever of a :class:`~memrag.langchain.MemragVectorStore`."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStoreRetriever
from pydantic import ConfigDict, Field, model_validator

from memrag.langchain.vectorstores import MemragVectorStore


class MemragRetriever(VectorStoreRetriever):
    """Returns the ``k`` stored documents closest to a query, with their ids.

    The documents' ids are their ids in the store, which is what
    :func:`~memrag.langchain.format_docs` turns into slot references for
    :class:`~memrag.langchain.ChatMemrag`. ``k`` can also be set per call
    (``retriever.invoke(question, k=2)``), as can any search argument.

    Example:
        .. code-block:: python

            retriever = MemragRetriever(vectorstore=vectorstore, k=3)
            retriever = vectorstore.as_retriever(k=3, search_type="mmr")
            retriever = vectorstore.as_retriever(search_kwargs={"filter": {"lang": "en"}})
            retriever = vectorstore.as_retriever(
                search_kwargs={"search_mode": "dense", "rerank": 5}
            )

    Fields:
        vectorstore: The vector store (an open ``MemoryStore`` is wrapped in one).
        k: Documents per query.
        search_type: ``"similarity"`` (default), ``"mmr"`` (maximal marginal relevance) or
            ``"similarity_score_threshold"`` (needs ``search_kwargs["score_threshold"]``).
        search_kwargs: Other search arguments: ``filter``, ``fetch_k``, ``lambda_mult``,
            ``score_threshold``; for ``"similarity"``, ``search_mode`` (``"hybrid"``,
            ``"dense"``, ``"lexical"``), ``search_weights`` and ``rerank`` (candidates
            reranked by the stored memory). A ``k`` given here becomes the ``k`` field.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    vectorstore: MemragVectorStore
    k: int = Field(default=4, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _k_from_search_kwargs(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        store = values.get("vectorstore")
        if store is not None and not isinstance(store, MemragVectorStore):
            from memrag.store.memory_store import MemoryStore

            if isinstance(store, MemoryStore):
                values["vectorstore"] = MemragVectorStore(store)
        search_kwargs = dict(values.get("search_kwargs") or {})
        if "k" in search_kwargs:
            k = search_kwargs.pop("k")
            if "k" in values and values["k"] != k:
                raise ValueError(f"k={values['k']} and search_kwargs k={k} disagree")
            values["k"] = k
            values["search_kwargs"] = search_kwargs
        return values

    def _search_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"k": self.k, **kwargs}

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return super()._get_relevant_documents(
            query, run_manager=run_manager, **self._search_kwargs(kwargs)
        )

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return await super()._aget_relevant_documents(
            query, run_manager=run_manager, **self._search_kwargs(kwargs)
        )
