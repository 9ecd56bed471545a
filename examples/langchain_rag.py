"""A LangChain RAG chain over memory slots, on the embedded defaults (no network).

Builds a memrag vector store over the bundled demo corpus (SQuAD paragraphs): every passage
is embedded with all-MiniLM-L6-v2 and compressed into memory slots as it is added. The chain
``retriever | format_docs | prompt | model | parser`` then answers questions with the frozen
decoder reading the retrieved passages' slots instead of their text.

    MEMRAG_CACHE_DIR=/tmp/exp/cache python examples/langchain_rag.py --passages 12 --questions 2

Compressing takes a few seconds per passage on a 2-core CPU; ``--passages`` keeps it short.
Without a trained compressor shipped in this installation, an untrained one is used and the
answers read from slots are nonsense (a warning says so).

The other LangChain examples (``langchain_streaming.py``, ``langchain_chat_history.py``)
reuse :func:`arguments` and :func:`example_vectorstore` from this file.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnableLambda

from memrag.demo import load_demo_compressor
from memrag.demo_corpus import DemoPassage, load_demo_corpus
from memrag.langchain import (
    MemragVectorStore,
    create_rag_chain,
    default_model,
    default_rag_prompt,
    format_docs,
    prepare_question,
)
from memrag.prompts import ANSWER_STOP


def arguments(description: str, *, questions: int = 2) -> argparse.Namespace:
    """The examples' command-line options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--passages", type=int, default=12, help="demo passages to index")
    parser.add_argument("--questions", type=int, default=questions, help="questions to ask")
    parser.add_argument("--k", type=int, default=2, help="passages retrieved per question")
    parser.add_argument("--max-tokens", type=int, default=24, help="answer length limit")
    parser.add_argument(
        "--compressor", default=None, help="compressor directory (default: shipped)"
    )
    return parser.parse_args()


def load_compressor(name: str | None = None) -> Any:
    """The shipped compressor, or an untrained one over Gemma 3 270M with a warning.

    Equivalent to ``Compressor.from_pretrained(name)``, falling back to
    ``Compressor.from_base("gemma-3-270m")`` when no trained compressor is shipped.
    """
    compressor, _trained = load_demo_compressor(name, warn=lambda m: print(f"WARNING: {m}\n"))
    return compressor


def build_vectorstore(passages: list[DemoPassage], compressor: Any) -> MemragVectorStore:
    """A temporary vector store holding ``passages`` (removed when closed)."""
    documents = [Document(p.text, id=p.id, metadata={"title": p.title}) for p in passages]
    return MemragVectorStore.from_documents(
        documents,
        embedding=None,  # the embedded all-MiniLM-L6-v2; any LangChain Embeddings works too
        compressor=compressor,
        fidelity="none",  # "reconstruct" flags passages that compress badly (slower)
        show_progress=True,
    )


@contextlib.contextmanager
def example_vectorstore(
    args: argparse.Namespace,
) -> Iterator[tuple[list[DemoPassage], MemragVectorStore]]:
    """The first ``args.passages`` demo passages and a temporary vector store holding them."""
    logging.basicConfig(level=logging.WARNING)
    corpus = load_demo_corpus()[: args.passages]
    compressor = load_compressor(args.compressor)
    print(f"compressing {len(corpus)} passages into memory slots ...")
    with build_vectorstore(corpus, compressor) as vectorstore:
        yield corpus, vectorstore


def main() -> None:
    args = arguments("LangChain RAG over memory slots")
    with example_vectorstore(args) as (corpus, vectorstore):
        retriever = vectorstore.as_retriever(k=args.k)
        # ChatMemrag for a tokenizer with a chat template, else the completion model
        # MemragLLM (the embedded Gemma has none): the prompt the compressor was tuned on.
        model = default_model(vectorstore, max_tokens=args.max_tokens)

        # The one-call chain, returning the retrieved documents with the answer ...
        chain = create_rag_chain(retriever, model, stop=ANSWER_STOP, return_sources=True)
        # ... and the same chain written by hand in LCEL (answer only).
        by_hand = (
            {"context": retriever | format_docs, "question": RunnableLambda(prepare_question)}
            | default_rag_prompt(model)
            | model.bind(stop=list(ANSWER_STOP))
            | StrOutputParser()
        )

        for passage in corpus[: args.questions]:
            question = passage.questions[0]
            result = chain.invoke(question.question)
            print(f"\nQ: {question.question}  (reference: {question.answers[0]})")
            print(f"A: {result['answer'].strip()}")
            print(
                "sources:",
                ", ".join(f"{d.id} ({d.metadata['title']})" for d in result["documents"]),
            )
            assert by_hand.invoke(question.question) == result["answer"]


if __name__ == "__main__":
    main()
