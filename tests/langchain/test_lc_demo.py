"""The demo (``memrag demo``) end to end on a tiny compressor and the hashing embedder."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from memrag import demo as demo_module
from memrag.demo import (
    UNTRAINED_WARNING,
    DemoSettings,
    format_answer,
    format_summary,
    load_demo_compressor,
    run_demo,
)
from memrag.demo_corpus import load_demo_corpus
from memrag.generation import GenerationOptions
from memrag.prompts import ANSWER_STOP

EMBEDDER = "hashing:128"


def _settings(**overrides) -> DemoSettings:
    values = {
        "questions": 2,
        "passages": 6,
        "k": 2,
        "max_new_tokens": 4,
        "show_progress": False,
        "memory": "embedding",
    }
    return DemoSettings(**{**values, **overrides})


def test_demo_answers_from_slots_and_from_text(lc_compressor) -> None:
    lines: list[str] = []
    seen: list[tuple[int, int]] = []
    report = run_demo(
        _settings(),
        compressor=lc_compressor,
        embedding=EMBEDDER,
        say=lines.append,
        on_answer=lambda answer, position, total: seen.append((position, total)),
    )
    assert seen == [(1, 2), (2, 2)] and len(report.answers) == 2
    assert report.passages == 6 and report.compressed == 6 and report.slots > 0
    assert not report.trained  # a compressor not loaded from a directory
    assert any("building a memory store over 6 demo passages" in line for line in lines)
    corpus = {p.id: p for p in load_demo_corpus()}
    for answer in report.answers:
        assert answer.question.passage_id in corpus
        assert len(answer.documents) == 2
        assert all(
            doc.id in corpus and doc.metadata == {"title": corpus[doc.id].title}
            for doc in answer.documents
        )
        slots, text = answer.results["slots"], answer.results["text"]
        # A passage costs a quarter of its tokens as slots (rate 4).
        assert 0 < slots.positions < text.positions
        assert 0 < slots.ttft <= slots.seconds and 0 < text.ttft <= text.seconds
        # The text path is classic RAG through the same model: the passages' text in the
        # QA prompt (the tiny tokenizer has no chat template, so the completion model).
        prompt = "".join(f"Passage: {doc.page_content}\n" for doc in answer.documents)
        prompt += f"Question: {answer.question.question.strip()}\nAnswer:"
        options = GenerationOptions(max_new_tokens=4, stop=ANSWER_STOP)
        (expected,) = lc_compressor.generate([[prompt]], options)
        assert text.answer == expected.text.strip()
    shown = format_answer(report.answers[0], 1, 2)
    assert shown.startswith("[1/2] Q: ") and "slots  TTFT" in shown and "text   TTFT" in shown
    summary = format_summary(report)
    assert "mean time to first token" in summary and "untrained compressor" in summary


def test_demo_answers_from_kv_memory_and_from_text(lc_compressor) -> None:
    lines: list[str] = []
    # The tiny model's context (1,024 positions) holds one whole demo passage's cache (its
    # byte-level tokenizer cuts a long paragraph into more tokens), not two.
    report = run_demo(
        _settings(memory="kv-exact", questions=1, passages=3, k=1),
        compressor=lc_compressor,
        embedding=EMBEDDER,
        say=lines.append,
    )
    assert report.memory == "kv-exact" and report.modes == ("kv-exact", "text")
    assert any("kv-exact memory" in line and "kB per passage" in line for line in lines)
    for answer in report.answers:
        memory, text = answer.results["kv-exact"], answer.results["text"]
        # The passages are read from memory: only the question and the text around them is
        # computed at query time.
        assert 0 < memory.positions < text.positions
        assert 0 < memory.ttft <= memory.seconds
    shown = format_answer(report.answers[0], 1, 1)
    assert "kv-exact  TTFT" in shown and "text      TTFT" in shown
    assert "mean F1: kv-exact" in format_summary(report)


def test_low_fidelity_passages_are_said_to_be_read_as_text(lc_compressor) -> None:
    lines: list[str] = []
    report = run_demo(
        _settings(questions=1, passages=3, fidelity="reconstruct"),
        compressor=lc_compressor,
        embedding=EMBEDDER,
        say=lines.append,
    )
    # A random compressor reconstructs nothing: every passage falls below the threshold.
    assert report.use_text == 3
    assert any("3 read as text (low fidelity)" in line for line in lines)
    assert any("memrag index set-threshold" in line for line in lines)
    answer = report.answers[0]
    assert answer.results["slots"].positions == answer.results["text"].positions


def test_a_kept_store_is_reused(tmp_path, lc_compressor) -> None:
    settings = _settings(questions=1, passages=3, store_path=tmp_path / "store")
    first = run_demo(settings, compressor=lc_compressor, trained=True, embedding=EMBEDDER)
    assert first.compressed == 3 and first.trained
    second = run_demo(settings, compressor=lc_compressor, embedding=EMBEDDER)
    assert second.compressed == 0 and second.passages == 3
    bigger = run_demo(
        _settings(questions=1, passages=5, store_path=tmp_path / "store"),
        compressor=lc_compressor,
        embedding=EMBEDDER,
    )
    assert bigger.compressed == 2 and bigger.passages == 5


def test_untrained_fallback_warns(monkeypatch, lc_compressor) -> None:
    from memrag.compressor import Compressor

    def missing(*args, **kwargs):
        raise FileNotFoundError("no shipped compressor")

    monkeypatch.setattr(Compressor, "from_pretrained", missing)
    monkeypatch.setattr(Compressor, "from_base", lambda *args, **kwargs: lc_compressor)
    warnings: list[str] = []
    compressor, trained = load_demo_compressor(warn=warnings.append)
    assert compressor is lc_compressor and not trained and warnings == [UNTRAINED_WARNING]
    with pytest.raises(FileNotFoundError):
        load_demo_compressor("some/other/dir")


def test_cli_runs_the_demo(monkeypatch, lc_compressor) -> None:
    from memrag.cli.app import app

    loads: list[tuple[tuple, dict]] = []

    def load(*args, **kwargs):
        loads.append((args, kwargs))
        return lc_compressor, False

    monkeypatch.setattr(demo_module, "load_demo_compressor", load)
    args = ["demo", "-n", "1", "--passages", "3", "--embedder", EMBEDDER, "--max-new-tokens", "3"]
    result = CliRunner().invoke(app, [*args, "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    # the compressor is loaded once, by run_demo, with the CLI's device and dtype
    assert len(loads) == 1
    assert loads[0][1]["device"] == "cpu" and loads[0][1]["dtype"] == "bfloat16"
    assert "[1/1] Q: " in result.output and "mean time to first token" in result.output
