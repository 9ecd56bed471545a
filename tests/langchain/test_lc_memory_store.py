"""The models over a real MemoryStore (the document source they are designed for)."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda

from memrag.generation import GenerationOptions
from memrag.langchain import ChatMemrag, DocumentNotFoundError, DocumentSource, create_rag_chain
from memrag.memory.slots import Slots
from memrag.prompts import qa_parts, render_chat

TEXTS = {
    "paris": "Paris is the capital and most populous city of France.",
    "tower": "In 1889 the Eiffel Tower was completed for the World's Fair.",
}


@pytest.fixture
def store(tmp_path, lc_compressor):
    from memrag.store.memory_store import MemoryStore

    # Default float16 slot shards; no fidelity scoring, so every chunk keeps its slots.
    store = MemoryStore.create(tmp_path / "store", lc_compressor, "hashing:64", fidelity="none")
    store.add(list(TEXTS.values()), ids=list(TEXTS))
    yield store
    store.close()


def test_chain_over_a_memory_store_equals_direct_splice(store, lc_compressor) -> None:
    assert isinstance(store, DocumentSource)
    chat = ChatMemrag(source=store, max_tokens=8)  # the compressor comes from the store
    assert chat.compressor is lc_compressor

    def retrieve(question: str) -> list[Document]:
        return [
            Document(r.text, id=r.id, metadata=r.metadata)
            for r in store.search(question, k=1, with_slots=False)
        ]

    question = "When was the Eiffel Tower completed?"
    (hit,) = retrieve(question)
    answer = create_rag_chain(RunnableLambda(retrieve), chat).invoke(question)
    (record,) = store.get([hit.id])
    assert isinstance(record.context(), Slots)
    message = {"role": "user", "content": qa_parts([record.context()], question)}
    prompt = render_chat(lc_compressor.tokenizer, [message])
    assert answer == lc_compressor.generate([prompt], GenerationOptions(8))[0].text

    store.delete([hit.id])
    with pytest.raises(DocumentNotFoundError, match=hit.id):
        create_rag_chain(RunnableLambda(lambda q: [hit]), chat).invoke(question)
