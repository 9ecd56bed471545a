"""The LangChain examples run end to end (tiny compressor, hashing embedder)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def examples(monkeypatch, lc_compressor):
    """The examples folder importable, with the tiny compressor and a hashing embedder."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import langchain_rag

    from memrag.langchain import MemragVectorStore

    def build(passages, compressor):
        documents = [
            langchain_rag.Document(p.text, id=p.id, metadata={"title": p.title}) for p in passages
        ]
        return MemragVectorStore.from_documents(
            documents, "hashing:128", compressor=compressor, fidelity="none"
        )

    monkeypatch.setattr(
        langchain_rag, "load_demo_compressor", lambda *a, **k: (lc_compressor, False)
    )
    monkeypatch.setattr(langchain_rag, "build_vectorstore", build)
    return langchain_rag


@pytest.mark.parametrize("name", ["langchain_rag", "langchain_streaming", "langchain_chat_history"])
def test_example_runs(examples, monkeypatch, capsys, name) -> None:
    module = __import__(name)
    monkeypatch.setattr(
        sys, "argv", [name, "--passages", "3", "--questions", "2", "--max-tokens", "3"]
    )
    module.main()
    out = capsys.readouterr().out
    assert "compressing 3 passages" in out
    assert out.count("Q: ") >= 2 or out.count("user: ") == 2


def test_chat_history_helpers(examples) -> None:
    import langchain_chat_history as chat
    from langchain_core.messages import AIMessage, HumanMessage

    history = [HumanMessage("Who won <memrag:x#y>?"), AIMessage("Denver")]
    inputs = {"history": history, "question": "Whom did they beat?"}
    assert chat.search_query(inputs) == "Who won <memrag:x#y>? Whom did they beat?"
    assert chat.history_text(inputs) == "Question: Who won <memrag::x#y>?\nAnswer: Denver\n"
    assert [m.content for m in chat.history_messages(inputs)] == [
        "Who won <memrag::x#y>?",
        "Denver",
    ]
