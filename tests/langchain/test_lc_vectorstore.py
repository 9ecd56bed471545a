"""MemragVectorStore and MemragRetriever beyond the standard suites."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding

from memrag.generation import GenerationOptions
from memrag.langchain import (
    TEXT_DOCUMENT_TEMPLATE,
    ChatMemrag,
    LangChainEmbedder,
    MemragEmbeddings,
    MemragRetriever,
    MemragVectorStore,
    create_rag_chain,
)
from memrag.memory.slots import Slots
from memrag.prompts import qa_parts, render_chat
from memrag.store import InvalidDocumentsError, MemoryStore

TEXTS = {
    "paris": "Paris is the capital and most populous city of France.",
    "tower": "In 1889 the Eiffel Tower was completed for the World's Fair.",
    "fox": "The quick brown fox jumps over the lazy dog.",
}


@pytest.fixture
def vectorstore(tmp_path, lc_compressor):
    store = MemragVectorStore.create(
        tmp_path / "store", embedding="hashing:64", compressor=lc_compressor, fidelity="none"
    )
    store.add_texts(
        list(TEXTS.values()),
        [{"name": name, "tags": ["a", name], "nested": {"n": 1}} for name in TEXTS],
        ids=list(TEXTS),
    )
    yield store
    store.close()


def test_documents_come_back_as_added(vectorstore) -> None:
    docs = vectorstore.get_by_ids(["tower", "missing", "paris"])
    assert docs == [
        Document(
            TEXTS[name], id=name, metadata={"name": name, "tags": ["a", name], "nested": {"n": 1}}
        )
        for name in ("tower", "paris")
    ]
    (hit,) = vectorstore.similarity_search("When was the Eiffel Tower completed?", k=1)
    assert hit == docs[0]
    # The slots live in the store, never in metadata.
    (record,) = vectorstore.store.get(["tower"])
    assert isinstance(record.slots, Slots) and "slots" not in hit.metadata


def test_a_long_text_is_one_chunk_of_several_segments(vectorstore, lc_compressor) -> None:
    long_text = " ".join(TEXTS.values()) * 3
    assert len(lc_compressor.segment(long_text)) > 1  # tiny segments of 16 tokens
    (doc_id,) = vectorstore.add_texts([long_text], ids=["long"])
    assert doc_id == "long" and len(vectorstore) == len(TEXTS) + 1
    assert vectorstore.get_by_ids(["long"]) == [Document(long_text, id="long")]
    (record,) = vectorstore.store.get(["long"])
    assert len(record.slots.segment_slot_counts) == len(lc_compressor.segment(long_text))


def test_scores_filters_and_thresholds(vectorstore) -> None:
    pairs = vectorstore.similarity_search_with_score("capital of France", k=3, search_mode="dense")
    assert pairs[0][0].id == "paris"
    for mode in ("hybrid", "lexical"):
        found = vectorstore.similarity_search("capital of France", k=3, search_mode=mode)
        assert found[0].id == "paris"
    scores = [score for _, score in pairs]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1.0001 for s in scores)
    relevance = vectorstore.similarity_search_with_relevance_scores("capital of France", k=3)
    assert [r for _, r in relevance] == pytest.approx([(1 + s) / 2 for s in scores])
    only_fox = vectorstore.similarity_search("capital of France", k=3, filter={"name": "fox"})
    assert [doc.id for doc in only_fox] == ["fox"]
    vector = vectorstore.embeddings.embed_query("capital of France")
    assert vectorstore.similarity_search_by_vector(vector, k=3) == [doc for doc, _ in pairs]
    threshold = vectorstore.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.99}
    )
    assert threshold.invoke("capital of France") == []


def test_max_marginal_relevance_prefers_diverse_documents(vectorstore) -> None:
    vectorstore.add_texts([TEXTS["paris"]], [{"name": "copy"}], ids=["paris-copy"])
    query = "Paris is the capital and most populous city of France."
    plain = vectorstore.similarity_search(query, k=2)
    assert {doc.id for doc in plain} == {"paris", "paris-copy"}
    diverse = vectorstore.max_marginal_relevance_search(query, k=2, fetch_k=4, lambda_mult=0.1)
    assert diverse[0].id in {"paris", "paris-copy"} and diverse[1].id not in {"paris", "paris-copy"}
    vector = vectorstore.embeddings.embed_query(query)
    by_vector = vectorstore.max_marginal_relevance_search_by_vector(
        vector, k=2, fetch_k=4, lambda_mult=0.1
    )
    assert by_vector == diverse
    retriever = vectorstore.as_retriever(
        search_type="mmr", k=2, search_kwargs={"fetch_k": 4, "lambda_mult": 0.1}
    )
    assert retriever.invoke(query) == diverse
    filtered = vectorstore.max_marginal_relevance_search(query, k=2, filter={"name": "fox"})
    assert [doc.id for doc in filtered] == ["fox"]


@pytest.mark.asyncio
async def test_async_forms(vectorstore) -> None:
    query = "Paris is the capital and most populous city of France."
    assert await vectorstore.amax_marginal_relevance_search(query, k=2) == (
        vectorstore.max_marginal_relevance_search(query, k=2)
    )
    assert await vectorstore.asimilarity_search_with_score(query, k=2) == (
        vectorstore.similarity_search_with_score(query, k=2)
    )
    assert await vectorstore.as_retriever(k=1).ainvoke(query) == [
        vectorstore.get_by_ids(["paris"])[0]
    ]
    assert await vectorstore.aadd_texts(["Added asynchronously."], ids=["async"]) == ["async"]
    assert await vectorstore.adelete(["async"])
    assert await vectorstore.aget_by_ids(["async"]) == []


def test_delete_and_bad_input(vectorstore) -> None:
    with pytest.raises(ValueError, match="needs the ids"):
        vectorstore.delete()
    with pytest.raises(InvalidDocumentsError, match="empty"):
        vectorstore.add_texts(["fine", "  "], ids=["ok", "blank"])
    assert vectorstore.get_by_ids(["ok"]) == []  # nothing was written
    with pytest.raises(InvalidDocumentsError, match="JSON"):
        vectorstore.add_texts(["text"], [{"when": object()}])
    with pytest.raises(TypeError, match="unexpected keyword"):
        vectorstore.similarity_search("q", k=1, where={"a": 1})
    assert vectorstore.delete(["fox", "never-added"]) is True
    assert {doc.id for doc in vectorstore.similarity_search("fox", k=5)} == {"paris", "tower"}


def test_chunk_bookkeeping_stays_out_of_metadata(tmp_path, lc_compressor) -> None:
    store = MemoryStore.create(
        tmp_path / "s", lc_compressor, "hashing:64", fidelity="none", chunk_tokens=24
    )
    long_text = " ".join(TEXTS.values()) * 2
    chunk_ids = store.add([long_text], ids=["doc"], metadatas=[{"lang": "en"}], chunk=True)
    assert len(chunk_ids) > 1 and "source_id" in store.get(chunk_ids[:1])[0].metadata
    user = {"source_id": "mine", "chunk_index": 3, "char_start": 0, "char_end": 1}
    store.add(["user keys"], ids=["user"], metadatas=[user])

    vectorstore = MemragVectorStore(store)
    docs = vectorstore.get_by_ids([*chunk_ids, "user"])
    assert [doc.metadata for doc in docs] == [{"lang": "en"}] * len(chunk_ids) + [user]
    with_keys = MemragVectorStore(store, chunk_metadata=True).get_by_ids(chunk_ids[:1])
    assert with_keys[0].metadata["source_id"] == "doc"
    store.close()


def test_langchain_embeddings_store_reopens_only_with_them(tmp_path, lc_compressor) -> None:
    embeddings = DeterministicFakeEmbedding(size=8)
    path = tmp_path / "store"
    first = MemragVectorStore.from_texts(
        ["alpha", "beta"],
        embeddings,
        [{"i": 0}, {"i": 1}],
        ids=["a", "b"],
        path=path,
        compressor=lc_compressor,
        fidelity="none",
    )
    assert first.embeddings is embeddings
    assert first.store.manifest.embedder.id == "langchain:DeterministicFakeEmbedding"
    first.close()
    with pytest.raises(ValueError, match="embedding="):
        MemragVectorStore.open(path, compressor=lc_compressor)
    # from_texts on an existing store adds to it.
    again = MemragVectorStore.from_texts(
        ["gamma"], embeddings, ids=["c"], path=path, compressor=lc_compressor
    )
    assert again.similarity_search("beta", k=3)[0].id == "b"
    assert len(again) == 3
    again.close()


def test_embedding_adapters() -> None:
    fake = DeterministicFakeEmbedding(size=5)
    embedder = LangChainEmbedder(fake)
    assert embedder.dimension == 5 and embedder.model_id == "langchain:DeterministicFakeEmbedding"
    vectors = embedder.embed_documents(["x", "y"])
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1)
    assert np.allclose(embedder.embed_query("x"), vectors[0])

    from memrag.store import HashingEmbedder

    lc = MemragEmbeddings(HashingEmbedder(16))
    assert lc.model_id == "hashing:16" and len(lc.embed_query("q")) == 16
    assert (
        lc.embed_documents(["a b", "c"])
        == HashingEmbedder(16).embed_documents(["a b", "c"]).tolist()
    )


def test_temporary_store_is_removed_on_close(lc_compressor) -> None:
    vectorstore = MemragVectorStore.from_texts(
        ["some text"], "hashing:16", compressor=lc_compressor, fidelity="none"
    )
    path = vectorstore.store.path
    assert path.is_dir() and len(vectorstore.similarity_search("text", k=1)) == 1
    vectorstore.delete(vectorstore.similarity_search("text", k=1)[0].id)
    assert len(vectorstore) == 0 and vectorstore  # empty, still truthy
    vectorstore.close()
    assert not path.exists()


def test_retriever_fields(vectorstore) -> None:
    retriever = vectorstore.as_retriever(search_kwargs={"k": 2, "filter": {"name": {"$ne": "fox"}}})
    assert isinstance(retriever, MemragRetriever) and retriever.k == 2
    assert retriever.search_kwargs == {"filter": {"name": {"$ne": "fox"}}}
    assert {doc.id for doc in retriever.invoke("the lazy fox")} == {"paris", "tower"}
    assert len(retriever.invoke("the lazy fox", k=1)) == 1
    with pytest.raises(ValueError, match="disagree"):
        MemragRetriever(vectorstore=vectorstore, k=3, search_kwargs={"k": 2})
    wrapped = MemragRetriever(vectorstore=vectorstore.store, k=1)
    assert isinstance(wrapped.vectorstore, MemragVectorStore)
    assert wrapped.invoke("capital of France")[0].id == "paris"
    assert "MemragVectorStore" in retriever.tags


@pytest.mark.parametrize("as_text", [False, True])
def test_chain_over_the_vector_store_equals_direct_splice(
    vectorstore, lc_compressor, as_text
) -> None:
    chat = ChatMemrag(source=vectorstore, max_tokens=8)  # the vector store's MemoryStore
    assert chat.compressor is lc_compressor and chat.source is vectorstore.store
    template = {"document_template": TEXT_DOCUMENT_TEMPLATE} if as_text else {}
    question = "When was the Eiffel Tower completed?"
    chain = create_rag_chain(vectorstore.as_retriever(k=2), chat, return_sources=True, **template)
    result = chain.invoke(question)
    ids = [doc.id for doc in result["documents"]]
    assert ids[0] == "tower" and len(ids) == 2
    records = vectorstore.store.get(ids)
    contexts = [r.text if as_text else r.context() for r in records]
    assert all(isinstance(c, str) == as_text for c in contexts)
    prompt = render_chat(
        lc_compressor.tokenizer, [{"role": "user", "content": qa_parts(contexts, question)}]
    )
    assert result["answer"] == lc_compressor.generate([prompt], GenerationOptions(8))[0].text


def test_the_retriever_takes_search_modes_and_reranking(vectorstore) -> None:
    question = "capital of France"
    for mode in ("dense", "lexical", "hybrid"):
        retriever = vectorstore.as_retriever(k=2, search_kwargs={"search_mode": mode})
        assert retriever.invoke(question)[0].id == "paris"
    first_stage = vectorstore.similarity_search(question, k=3)
    reranked = vectorstore.as_retriever(k=2, search_kwargs={"rerank": 3}).invoke(question)
    expected = vectorstore.store.search(question, k=2, rerank=3)  # scored from memory
    assert [d.id for d in reranked] == [r.id for r in expected]
    assert {d.id for d in reranked} <= {d.id for d in first_stage}
    weighted = vectorstore.similarity_search_with_score(
        question, k=3, search_mode="hybrid", search_weights=(0.0, 1.0)
    )
    assert [d.id for d, _ in weighted] == [
        d.id for d in vectorstore.similarity_search(question, k=3, search_mode="lexical")
    ]
    with pytest.raises(ValueError, match="unknown search mode"):
        vectorstore.similarity_search(question, search_mode="fuzzy")
    with pytest.raises(ValueError, match="unknown search mode"):
        MemragVectorStore(vectorstore.store, search_mode="fuzzy")
    dense_store = MemragVectorStore(vectorstore.store, search_mode="dense")
    assert [d.id for d in dense_store.similarity_search(question, k=3)] == [
        d.id for d in vectorstore.similarity_search(question, k=3, search_mode="dense")
    ]
