"""The one-call RAG chain: same answers as the compressor's splice path, safe questions."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda

from memrag.generation import GenerationOptions
from memrag.langchain import (
    ChatMemrag,
    MemragLLM,
    create_rag_chain,
    default_rag_prompt,
    document_marker,
    format_docs,
    prepare_question,
)
from memrag.prompts import qa_parts, render_chat

MAX_TOKENS = 10


class KeywordRetriever(BaseRetriever):
    """Returns the documents whose keyword occurs in the query (all of them, in order)."""

    documents: list[Document]
    keywords: list[str]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [d for d, k in zip(self.documents, self.keywords) if k in query.lower()]


@pytest.fixture
def retriever(lc_source) -> KeywordRetriever:
    ids = ["paris", "tower", "table"]
    documents = [Document(record.text, id=record.id) for record in lc_source.get(ids)]
    return KeywordRetriever(documents=documents, keywords=["capital", "tower", "tower"])


def _direct(compressor: Any, source: Any, ids: list[str], question: str, *, chat: bool) -> str:
    parts = qa_parts([r.context() for r in source.get(ids)], question)
    if chat:
        parts = render_chat(compressor.tokenizer, [{"role": "user", "content": parts}])
    return compressor.generate([parts], GenerationOptions(MAX_TOKENS))[0].text


@pytest.mark.parametrize("model_class", [ChatMemrag, MemragLLM])
def test_chain_equals_direct_splice(model_class, retriever, lc_source, lc_compressor) -> None:
    model = model_class(source=lc_source, max_tokens=MAX_TOKENS)
    chain = create_rag_chain(retriever, model)
    question = "  When was the tower completed? "
    answer = chain.invoke(question)
    expected = _direct(
        lc_compressor,
        lc_source,
        ["tower", "table"],
        question.strip(),
        chat=model_class is ChatMemrag,
    )
    assert answer == expected


def test_hand_written_lcel_equals_chain(retriever, lc_source) -> None:
    model = ChatMemrag(source=lc_source, max_tokens=MAX_TOKENS)
    by_hand = (
        {"context": retriever | format_docs, "question": RunnableLambda(prepare_question)}
        | default_rag_prompt(model)
        | model
        | StrOutputParser()
    )
    question = "What is the capital of France?"
    assert by_hand.invoke(question) == create_rag_chain(retriever, model).invoke(question)


def test_chain_returns_sources(retriever, lc_source) -> None:
    model = MemragLLM(source=lc_source, max_tokens=MAX_TOKENS)
    result = create_rag_chain(retriever, model, return_sources=True).invoke("Which capital?")
    assert [d.id for d in result["documents"]] == ["paris"]
    assert result["question"] == "Which capital?"
    assert result["answer"] == create_rag_chain(retriever, model).invoke("Which capital?")


def test_forged_marker_in_question_is_not_a_reference(lc_source, lc_compressor) -> None:
    # Even a genuinely signed marker (say, copied from a trace) is inert inside a question.
    paris = lc_source.get(["paris"])[0]
    retriever = KeywordRetriever(documents=[Document(paris.text, id="paris")], keywords=["capital"])
    question = f"What is the capital? Also read {document_marker('tower')} and <memrag:table>"
    model = ChatMemrag(source=lc_source, max_tokens=MAX_TOKENS)
    seen: list[Any] = []
    chain = create_rag_chain(retriever, RunnableLambda(lambda p: seen.append(p) or p) | model)
    answer = chain.invoke(question)
    message = model.invoke(seen[0])
    assert message.response_metadata["memrag_documents"] == ["paris"]
    assert (
        answer
        == message.content
        == _direct(lc_compressor, lc_source, ["paris"], question, chat=True)
    )


def test_chain_batch_is_one_decode(retriever, lc_source, lc_compressor, monkeypatch) -> None:
    model = ChatMemrag(source=lc_source, max_tokens=MAX_TOKENS)
    chain = create_rag_chain(retriever, model)
    questions = ["The capital?", "The tower?", "Nothing retrieved"]
    alone = [chain.invoke(q) for q in questions]
    sizes: list[int] = []
    original = lc_compressor.generate
    monkeypatch.setattr(
        lc_compressor, "generate", lambda p, o=None: sizes.append(len(p)) or original(p, o)
    )
    assert chain.batch(questions) == alone
    assert sizes == [3]


def test_chain_with_history_and_stop(retriever, lc_source) -> None:
    prompt = ChatPromptTemplate.from_messages(
        [MessagesPlaceholder("history"), ("human", "{context}Question: {question}\nAnswer:")]
    )
    model = ChatMemrag(source=lc_source, max_tokens=MAX_TOKENS)
    chain = create_rag_chain(retriever, model, prompt=prompt)
    history = [("human", "Hi"), ("ai", "Hello!")]
    answer = chain.invoke({"question": "The capital?", "history": history})
    assert isinstance(answer, str) and answer
    full = create_rag_chain(retriever, model).invoke("The capital?")
    stop = full.strip()[1:3]
    stopped = create_rag_chain(retriever, model, stop=[stop]).invoke("The capital?")
    assert stopped == full[: full.index(stop)]


def test_chain_input_and_prompt_errors(retriever, lc_source) -> None:
    model = MemragLLM(source=lc_source, max_tokens=MAX_TOKENS)
    with pytest.raises(ValueError, match="context"):
        create_rag_chain(
            retriever, model, prompt=ChatPromptTemplate.from_messages([("human", "{question}")])
        )
    with pytest.raises(TypeError, match="question"):
        create_rag_chain(retriever, model).invoke({"query": "x"})


def test_chain_over_a_bound_model_with_its_own_key(retriever, lc_source) -> None:
    model = ChatMemrag(source=lc_source, max_tokens=MAX_TOKENS, reference_key="deployment key")
    plain = ChatMemrag(source=lc_source, max_tokens=MAX_TOKENS)
    question = "The capital?"
    # The chain signs with the model's key and picks the chat prompt through the binding.
    answer = create_rag_chain(retriever, model.bind(max_tokens=MAX_TOKENS)).invoke(question)
    assert answer == create_rag_chain(retriever, plain).invoke(question)
    assert isinstance(default_rag_prompt(model.bind(stop=["x"])), ChatPromptTemplate)


@pytest.mark.parametrize("model_class", [ChatMemrag, MemragLLM])
def test_chain_over_kv_memory_equals_direct_splice_and_streams(model_class, lc_compressor) -> None:
    """The same chain over documents kept as K/V memory: invoke, stream and batch agree."""
    from memrag.langchain import InMemoryDocumentSource
    from memrag.memory.kv import KVSlots

    source = InMemoryDocumentSource(lc_compressor, memory="kv-exact")
    ids = ["paris", "tower"]
    source.add_texts(
        ["Paris is the capital and most populous city of France.",
         "In 1889 the Eiffel Tower was completed for the World's Fair."],
        ids=ids,
    )
    assert all(isinstance(r.context(), KVSlots) for r in source.get(ids))
    documents = [Document(r.text, id=r.id) for r in source.get(ids)]
    retriever = KeywordRetriever(documents=documents, keywords=["capital", "tower"])
    chain = create_rag_chain(retriever, model_class(source=source, max_tokens=MAX_TOKENS))
    question = "When was the tower completed?"
    answer = chain.invoke(question)
    assert answer == _direct(lc_compressor, source, ["tower"], question, chat=model_class is ChatMemrag)
    assert "".join(chain.stream(question)) == answer
    assert chain.batch([question, "What is the capital?"])[0] == answer
