"""A chat with history over memory slots: an LCEL chain that also reads the conversation.

    MEMRAG_CACHE_DIR=/tmp/exp/cache python examples/langchain_chat_history.py --passages 8

Each turn retrieves passages for the new question (together with the previous question, so a
follow-up such as "Which team did they beat?" still finds the right passages), references them
in the prompt as memory slots, and puts the conversation so far before them. The history is a
plain list of LangChain messages holding text (questions and answers), never slots.

How the history enters the prompt follows the model (:func:`memrag.langchain.default_model`):
a chat model (tokenizer with a chat template) gets it as messages through a
``MessagesPlaceholder``; the completion model of the embedded Gemma gets it as earlier
``Question: ... Answer: ...`` lines, the wording of its QA prompt. Uses the store helpers of
``langchain_rag.py``.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder, PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_rag import arguments, example_vectorstore

from memrag.langchain import (
    DEFAULT_QA_TEMPLATE,
    default_model,
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


def history_messages(inputs: dict[str, Any]) -> list[BaseMessage]:
    """The history for a chat prompt, marker-like text made inert (users typed it)."""
    return [m.model_copy(update={"content": escape_markers(m.content)}) for m in inputs["history"]]


def history_text(inputs: dict[str, Any]) -> str:
    """The history for a completion prompt, as earlier question / answer lines."""
    label = {"human": "Question", "ai": "Answer"}
    return "".join(
        f"{label[m.type]}: {escape_markers(m.content)}\n"
        for m in inputs["history"]
        if m.type in label
    )


def main() -> None:
    args = arguments("A chat with history over memory slots", questions=len(CONVERSATION))
    with example_vectorstore(args) as (_corpus, vectorstore):
        retriever = vectorstore.as_retriever(k=args.k)
        model = default_model(vectorstore, max_tokens=args.max_tokens)
        if isinstance(model, BaseChatModel):
            prompt = ChatPromptTemplate.from_messages(
                [MessagesPlaceholder("history"), ("human", DEFAULT_QA_TEMPLATE)]
            )
            history = RunnableLambda(history_messages)
        else:
            prompt = PromptTemplate.from_template("{history}" + DEFAULT_QA_TEMPLATE)
            history = RunnableLambda(history_text)
        rag = (
            RunnablePassthrough.assign(
                context=RunnableLambda(search_query) | retriever | format_docs,
                question=itemgetter("question") | RunnableLambda(prepare_question),
                history=history,
            )
            | prompt
            | model.bind(stop=list(ANSWER_STOP))
            | StrOutputParser()
        )
        conversation: list[BaseMessage] = []
        for question in CONVERSATION[: args.questions]:
            answer = rag.invoke({"question": question, "history": conversation}).strip()
            conversation += [HumanMessage(question), AIMessage(answer)]
            print(f"\nuser:      {question}\nassistant: {answer}")
        print(f"\n({len(conversation)} messages in the history)")


if __name__ == "__main__":
    main()
