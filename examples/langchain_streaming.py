"""Streaming answers from memory slots through a LangChain RAG chain, sync and async.

    MEMRAG_CACHE_DIR=/tmp/exp/cache python examples/langchain_streaming.py --passages 8 --questions 2

``chain.stream`` / ``chain.astream`` yield the answer as the frozen decoder produces it; the
time to the first piece is what a chat user waits before text appears. Leaving a stream early
(``break``) stops the decoder. Uses the store helpers of ``langchain_rag.py``.
"""

from __future__ import annotations

import asyncio
import time

from langchain_core.runnables import Runnable
from langchain_rag import arguments, example_vectorstore

from memrag.langchain import create_rag_chain, default_model
from memrag.prompts import ANSWER_STOP


def stream_answer(chain: Runnable, question: str) -> None:
    """Prints the answer piece by piece, then the time to its first piece."""
    start = time.perf_counter()
    first = None
    print(f"\nQ: {question}\nA:", end="", flush=True)
    for piece in chain.stream(question):
        if piece and first is None:
            first = time.perf_counter() - start
        print(piece, end="", flush=True)
    print(
        f"\n   (first token after {first or 0:.2f}s, done after {time.perf_counter() - start:.2f}s)"
    )


async def astream_answers(chain: Runnable, questions: list[str]) -> None:
    """Streams several answers concurrently from async code (each decode runs in a thread)."""

    async def one(question: str) -> str:
        pieces = [piece async for piece in chain.astream(question)]
        return "".join(pieces).strip()

    answers = await asyncio.gather(*(one(q) for q in questions))
    for question, answer in zip(questions, answers):
        print(f"\n[async] Q: {question}\n        A: {answer}")


def main() -> None:
    args = arguments("Streaming RAG answers from memory slots")
    with example_vectorstore(args) as (corpus, vectorstore):
        model = default_model(vectorstore, max_tokens=args.max_tokens)
        chain = create_rag_chain(vectorstore.as_retriever(k=args.k), model, stop=ANSWER_STOP)
        questions = [p.questions[0].question for p in corpus[: args.questions]]
        for question in questions:
            stream_answer(chain, question)
        asyncio.run(astream_answers(chain, questions))


if __name__ == "__main__":
    main()
