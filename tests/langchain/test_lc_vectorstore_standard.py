"""LangChain's standard suites for MemragVectorStore and MemragRetriever (tiny compressor).

Nothing is opted out: the vector store runs the whole ``VectorStoreIntegrationTests`` suite,
sync and async, with ``get_by_ids``; the retriever runs ``RetrieversIntegrationTests``. Both
run over a store of embedding slots and over a store of K/V memory.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_tests.integration_tests import (
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)

from memrag.langchain import MemragRetriever, MemragVectorStore
from memrag.testing import tiny_compressor

#: The suites' async tests are plain coroutines written for asyncio "auto" mode; marking the
#: classes runs them under pytest-asyncio without changing the project's mode (the mark is
#: harmless on the sync tests, hence the filter).
ASYNC_MARKS = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function.*is not an async function"),
]


@functools.cache
def _compressor() -> Any:
    return tiny_compressor(seed=0)


class TestMemragVectorStoreStandard(VectorStoreIntegrationTests):
    """The suite's own fake embeddings (``get_embeddings()``) go straight into the store."""

    pytestmark = ASYNC_MARKS

    #: What the store keeps per document.
    memory = "embedding"

    @pytest.fixture
    def vectorstore(self, tmp_path) -> Iterator[MemragVectorStore]:  # type: ignore[override]
        # No fidelity scoring: it only decides text fallback at query time, which the
        # vector store's results do not depend on.
        store = MemragVectorStore.create(
            tmp_path / "store",
            embedding=self.get_embeddings(),
            compressor=_compressor(),
            memory=self.memory,
            fidelity="none",
        )
        try:
            yield store
        finally:
            store.close()


class TestMemragVectorStoreStandardOverKV(TestMemragVectorStoreStandard):
    """The same suite over a store of pruned K/V memory (int8)."""

    memory = "kv-pruned:0.5:int8"


@functools.cache
def _retriever_store(memory: str = "embedding") -> MemragVectorStore:
    """A temporary store with a few documents (removed when the process exits)."""
    texts = [
        "Paris is the capital and most populous city of France.",
        "In 1889 the Eiffel Tower was completed for the World's Fair.",
        "The quick brown fox jumps over the lazy dog.",
        "Memory slots compress a document into a few vectors for a frozen decoder.",
        "Context: numbers 0 1 2 3 4 5 6 7 8 9",
    ]
    return MemragVectorStore.from_texts(
        texts,
        "hashing:64",
        ids=[f"doc-{i}" for i in range(len(texts))],
        compressor=_compressor(),
        memory=memory,
        fidelity="none",
    )


class TestMemragRetrieverStandard(RetrieversIntegrationTests):
    pytestmark = ASYNC_MARKS

    @property
    def retriever_constructor(self) -> type[MemragRetriever]:
        return MemragRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"vectorstore": _retriever_store()}

    @property
    def retriever_query_example(self) -> str:
        return "What is the capital of France?"


class TestMemragRetrieverStandardOverKV(TestMemragRetrieverStandard):
    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"vectorstore": _retriever_store("kv-exact")}


def test_the_kv_retriever_store_holds_kv_memory() -> None:
    from memrag.memory.kv import KVSlots

    store = _retriever_store("kv-exact").store
    assert store.memory.kind == "kv-exact"
    assert isinstance(store.get(["doc-0"])[0].context(), KVSlots)


def test_the_suites_ran_on_a_temporary_store() -> None:
    # from_texts without a path keeps its store under the system's temporary directory.
    assert str(_retriever_store().store.path).startswith(tempfile.gettempdir())
