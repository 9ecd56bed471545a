"""A chat with history over memory slots: LCEL by hand plus ``RunnableWithMessageHistory``.

    MEMRAG_CACHE_DIR=/tmp/exp/cache python examples/langchain_chat_history.py --passages 8

Each turn retrieves passages for the new question (together with the previous one, so a
follow-up such as "Who was their MVP?" still finds the right passages), references them in
the prompt as memory slots, and puts the conversation so far before it. The history holds
plain text (questions and answers), never slots; the documents of earlier turns are not
re-read. Uses the store helpers of ``langchain_rag.py``.
"""

from __future__ import annotations

import logging
from operator import itemgetter
from typing import Any

from langchain_core.chat_history import InMemoryChatMessageHistory
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_rag import arguments, build_vectorstore, load_compressor

from memrag.demo_corpus import load_demo_corpus
from memrag.langchain import (
    DEFAULT_QA_TEMPLATE,
    ChatMemrag,
    escape_markers,
    format_docs,
    prepare_question,
)
from memrag.prompts import ANSWER_STOP

CONVERSATION = [
    "Which NFL team represented the AFC at Super Bowl 50?",
    "Which team did they beat?",
    "Who was the Super Bowl 50 MVP?",
    "How many fumbles did he force?",
]


def search_query(inputs: dict[str, Any]) -> str:
    """The retrieval query: the previous question (if any) and the new one."""
    asked = [m.content for m in inputs["history"] if m.type == "human"]
    return " ".join([*asked[-1:], inputs["question"]])


def safe_history(inputs: dict[str, Any]) -> list[Any]:
    """The history with marker-like text made inert (users typed it)."""
    return [m.model_copy(update={"content": escape_markers(m.content)}) for m in inputs["history"]]


def main() -> None:
    args = arguments("A chat with history over memory slots", questions=len(CONVERSATION))
    logging.basicConfig(level=logging.WARNING)
    corpus = load_demo_corpus()[: args.passages]
    compressor = load_compressor(args.compressor)
    print(f"compressing {len(corpus)} passages into memory slots ...")
    with build_vectorstore(corpus, compressor) as vectorstore:
        retriever = vectorstore.as_retriever(k=args.k)
        chat = ChatMemrag(source=vectorstore, max_tokens=args.max_tokens, stop=list(ANSWER_STOP))
        prompt = ChatPromptTemplate.from_messages(
            [MessagesPlaceholder("history"), ("human", DEFAULT_QA_TEMPLATE)]
        )
        rag = (
            RunnablePassthrough.assign(
                context=RunnableLambda(search_query) | retriever | format_docs,
                question=itemgetter("question") | RunnableLambda(prepare_question),
                history=RunnableLambda(safe_history),
            )
            | prompt
            | chat
            | StrOutputParser()
        )
        sessions: dict[str, InMemoryChatMessageHistory] = {}
        conversation = RunnableWithMessageHistory(
            rag,
            lambda session_id: sessions.setdefault(session_id, InMemoryChatMessageHistory()),
            input_messages_key="question",
            history_messages_key="history",
        )
        config = {"configurable": {"session_id": "demo"}}
        for question in CONVERSATION[: args.questions]:
            answer = conversation.invoke({"question": question}, config=config)
            print(f"\nuser:      {question}\nassistant: {answer.strip()}")
        print(f"\n({len(sessions['demo'].messages)} messages in the history)")


if __name__ == "__main__":
    main()
