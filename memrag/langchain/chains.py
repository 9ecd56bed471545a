"""The standard RAG chain in one call: ``retriever | format | prompt | model | parser``."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel, BaseLanguageModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import BasePromptTemplate, ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough

from memrag.rag.formatting import (
    DEFAULT_DOCUMENT_TEMPLATE,
    DEFAULT_QA_TEMPLATE,
    format_docs,
    prepare_question,
)


def _unwrap(model: Runnable) -> Runnable:
    """The model inside ``model.bind(...)`` / ``with_config(...)`` wrappers."""
    while isinstance(getattr(model, "bound", None), Runnable):
        model = model.bound  # type: ignore[attr-defined]
    return model


def default_rag_prompt(model: BaseLanguageModel | Runnable) -> BasePromptTemplate:
    """The QA prompt memrag compressors are fine-tuned with, for a chat model or an LLM.

    Its variables are ``context`` (the formatted documents) and ``question``.
    """
    if isinstance(_unwrap(model), BaseChatModel):
        return ChatPromptTemplate.from_messages([("human", DEFAULT_QA_TEMPLATE)])
    return PromptTemplate.from_template(DEFAULT_QA_TEMPLATE)


def default_model(source: Any = None, **kwargs: Any) -> BaseLanguageModel:
    """The memrag model a compressor's QA prompt is meant for.

    Compressors are fine-tuned on the QA prompt rendered by the tokenizer's chat template when
    it has one, and on the plain prompt otherwise (the embedded Gemma 3 270M has none): this
    returns a :class:`~memrag.langchain.ChatMemrag` in the first case and a
    :class:`~memrag.langchain.MemragLLM` in the second.

    Args:
        source: The document source (a ``MemoryStore``, a ``MemragVectorStore``, ...).
        kwargs: Model fields (``compressor``, ``max_tokens``, ``temperature``, ...).
    """
    from memrag.langchain.chat_models import ChatMemrag
    from memrag.langchain.llms import MemragLLM
    from memrag.prompts import has_chat_template

    chat = ChatMemrag(source=source, **kwargs)
    if has_chat_template(chat.compressor.tokenizer):
        return chat
    return MemragLLM(source=source, **kwargs)


def _as_inputs(value: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(value, str):
        return {"question": value}
    if isinstance(value, Mapping) and isinstance(value.get("question"), str):
        return dict(value)
    raise TypeError(
        f"the RAG chain takes a question string or a dict with 'question', got {value!r}"
    )


def create_rag_chain(
    retriever: Runnable[str, list[Document]],
    model: BaseLanguageModel | Runnable,
    *,
    prompt: BasePromptTemplate | None = None,
    document_template: str = DEFAULT_DOCUMENT_TEMPLATE,
    stop: Sequence[str] | None = None,
    return_sources: bool = False,
) -> Runnable[Any, Any]:
    """Builds ``retriever | format_docs | prompt | model | StrOutputParser()``.

    The chain takes a question string (or a dict with ``question`` and any other variables
    the prompt uses, such as a chat history). The question retrieves documents as typed;
    in the prompt it is stripped and escaped (:func:`~memrag.langchain.prepare_question`), so
    it cannot smuggle in document references. Written by hand, the default chain is::

        chain = (
            {"context": retriever | format_docs, "question": RunnableLambda(prepare_question)}
            | default_rag_prompt(model)
            | model
            | StrOutputParser()
        )

    Args:
        retriever: Returns the documents for a question; their ``id`` must be their id in
            ``model``'s document source (a memrag vector store's retriever does this).
        model: A :class:`~memrag.langchain.ChatMemrag` or :class:`~memrag.langchain.MemragLLM`
            (any LangChain model works, but only memrag models read the references).
        prompt: Prompt with ``context`` and ``question`` variables (default:
            :func:`default_rag_prompt`).
        document_template: How each document is rendered (see :func:`format_docs`).
        stop: Stop strings bound to the model (e.g. :data:`memrag.prompts.ANSWER_STOP`).
        return_sources: Return ``{"question", "documents", "answer", ...}`` instead of the
            answer string.

    Raises:
        ValueError: ``prompt`` lacks the ``context`` or ``question`` variable.
    """
    prompt = prompt or default_rag_prompt(model)
    missing = {"context", "question"} - set(prompt.input_variables)
    if missing:
        raise ValueError(f"the RAG prompt must use the variables {sorted(missing)}")
    formatter = RunnableLambda(
        functools.partial(
            format_docs,
            template=document_template,
            key=getattr(_unwrap(model), "reference_key", None),
        ),
        name="format_docs",
    )
    bound: Runnable = model.bind(stop=list(stop)) if stop else model
    answer = (
        RunnablePassthrough.assign(
            context=itemgetter("documents") | formatter,
            question=itemgetter("question")
            | RunnableLambda(prepare_question, name="prepare_question"),
        )
        | prompt
        | bound
        | StrOutputParser()
    )
    retrieve = RunnableLambda(_as_inputs, name="inputs") | RunnablePassthrough.assign(
        documents=itemgetter("question") | retriever
    )
    if return_sources:
        return (retrieve | RunnablePassthrough.assign(answer=answer)).with_config(
            run_name="memrag_rag"
        )
    return (retrieve | answer).with_config(run_name="memrag_rag")
