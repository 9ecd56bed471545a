"""Fixtures for the LangChain integration tests: a tiny compressor and a document source."""

from __future__ import annotations

import pytest

#: Documents of the shared source: id -> (text, use_text).
DOCUMENTS = {
    "paris": ("Paris is the capital and most populous city of France.", False),
    "tower": ("In 1889 the Eiffel Tower was completed for the World's Fair.", False),
    "table": ("Context: numbers 0 1 2 3 4 5 6 7 8 9", True),
}


@pytest.fixture(scope="session")
def lc_compressor():
    """A tiny random compressor shared by the LangChain tests (they do not change it)."""
    from memrag.testing import tiny_compressor

    return tiny_compressor(seed=0)


@pytest.fixture(scope="session")
def lc_source(lc_compressor):
    """An in-memory source with :data:`DOCUMENTS` (``table`` is flagged use_text)."""
    from memrag.langchain import InMemoryDocumentSource

    source = InMemoryDocumentSource(lc_compressor)
    source.add_texts(
        [text for text, _ in DOCUMENTS.values()],
        ids=list(DOCUMENTS),
        use_text=[flag for _, flag in DOCUMENTS.values()],
    )
    return source


@pytest.fixture(autouse=True)
def _embedding_stores_by_default(monkeypatch):
    """These tests were written for stores of embedding slots: a store made without naming its
    memory keeps slots here (K/V stores have their own tests, which name their kind)."""
    monkeypatch.setattr("memrag.memory.spec.DEFAULT_MEMORY", "embedding")
