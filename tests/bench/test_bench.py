"""``memrag bench``: fake-clock timing, the K/V modes, the harness end to end (tiny models)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from training_fixtures import qa_corpus
from typer.testing import CliRunner

from memrag.bench.corpus import TimedCompressor, passage_id, select_corpus
from memrag.bench.modes import parse_mode
from memrag.bench.report import markdown_report, targets, write_plots
from memrag.bench.runner import RESULT_FIELDS, BenchSettings, run_benchmark
from memrag.bench.timing import AnswerTimer, percentile
from memrag.generation import GenerationOptions, generate
from memrag.prompts import qa_parts
from memrag.testing import tiny_base_model, tiny_compressor

QUESTION = "What is the capital of France?"
BENCH_MODES = ["text", "slots", "kv-exact", "kv-exact:int8+cacheblend:0.5", "kv-pruned", "truncated", "none"]


@pytest.fixture(scope="module")
def compressor():
    """A tiny compressor shared by this module's tests (they never modify it)."""
    return tiny_compressor(seed=0)


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return qa_corpus(tmp_path_factory.mktemp("data") / "qa.jsonl", paragraphs=6, questions=2)


@pytest.fixture(scope="module")
def bench_result(compressor, qa_file: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = BenchSettings(
        data=qa_file, limit=3, k=2, corpus_size=5, embedder="hashing:64", max_new_tokens=3,
        modes=BENCH_MODES,
    )
    return run_benchmark(
        compressor, settings, tmp_path_factory.mktemp("work"), environment={"machine": "test"}
    )


class FakeClock:
    """Returns the given times in order."""

    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


# --------------------------------------------------------------------------- timing
def test_answer_timer_reads_the_fake_clock() -> None:
    timer = AnswerTimer(FakeClock(10.0, 10.5, 12.0, 15.0))
    timer.start()  # 10.0
    timer.fetched()  # 10.5
    timer.put(torch.tensor([[1, 2, 3]]))  # the prompt: no clock read
    timer.put(torch.tensor([4]))  # first token: 12.0
    timer.put(torch.tensor([5]))  # later tokens: no clock read
    timer.end()
    timing = timer.stop()  # 15.0
    assert (timing.fetch_s, timing.ttft_s, timing.latency_s) == (0.5, 2.0, 5.0)


def test_answer_timer_restarts_and_refuses_misuse() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        AnswerTimer(FakeClock(1.0)).stop()
    timer = AnswerTimer(FakeClock(0.0, 1.0, 2.0, 3.0, 7.0, 9.0))
    timer.start()
    timer.put(None)
    with pytest.raises(RuntimeError, match="no generated token"):
        timer.stop()
    timer.start()  # 2.0: a restart forgets the earlier puts
    timer.put(None)
    timer.put(None)  # 3.0
    timing = timer.stop()  # 7.0
    assert (timing.fetch_s, timing.ttft_s, timing.latency_s) == (0.0, 1.0, 5.0)


def test_answer_timer_as_the_streamer_of_generate(compressor) -> None:
    """With ``generate``, the clock is read at start, fetch, the first token and stop only."""
    timer = AnswerTimer(itertools.count().__next__)
    batch = compressor.build([qa_parts(["Paris is in France."], QUESTION)])
    timer.start()  # 0
    timer.fetched()  # 1
    with compressor.decoder_mode() as decoder:
        generate(
            decoder,
            compressor.tokenizer,
            batch,
            GenerationOptions(max_new_tokens=3),
            streamer=timer,
        )  # 2
    timing = timer.stop()  # 3
    assert (timing.fetch_s, timing.ttft_s, timing.latency_s) == (1, 2, 3)


@pytest.mark.parametrize("q", [0, 10, 50, 90, 100])
def test_percentile_matches_numpy(q: float) -> None:
    values = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert np.isnan(percentile([], q))


# --------------------------------------------------------------------------- modes
def test_mode_names_parse_and_bad_ones_are_refused() -> None:
    assert parse_mode("kv-exact:int8+cacheblend:0.1").memory == "kv-exact:int8"
    assert parse_mode("kv-exact+cacheblend").recovery == "cacheblend"
    assert not parse_mode("text").reads_memory
    for bad, message in (
        ("pictures", "unknown mode"),
        ("text+cacheblend", "unknown mode"),
        ("kv-pruned:2", "keep_ratio"),
        ("kv-exact+blend", "recovery"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_mode(bad)


# --------------------------------------------------------------------------- corpus
def test_select_corpus_adds_seeded_distractors(qa_file: Path) -> None:
    corpus = select_corpus(qa_file, limit=3, corpus_size=5, seed=0)
    assert len(corpus.questions) == 3 and len(corpus.passages) == 5
    own = {passage_id(r.context) for r in corpus.questions}
    assert own <= set(corpus.passages) and corpus.distractors == 5 - len(own)
    again = select_corpus(qa_file, limit=3, corpus_size=5, seed=0)
    assert list(again.passages) == list(corpus.passages)
    small = select_corpus(qa_file, limit=3, corpus_size=1, seed=0)
    assert small.distractors == 0 and set(small.passages) == own


def test_timed_compressor_adds_up_compress_time(compressor) -> None:
    timed = TimedCompressor(compressor, FakeClock(1.0, 3.5, 4.0, 4.5))
    timed.compress(["Paris is in France.", "Berlin."])
    timed.compress("Rome.")
    assert timed.seconds == 3.0 and timed.texts == 3
    assert timed.fingerprint == compressor.fingerprint  # everything else is delegated


# --------------------------------------------------------------------------- end to end
def test_bench_end_to_end_json_has_every_field(bench_result) -> None:
    report = json.loads(json.dumps(bench_result.to_json()))
    assert {"results", "limit", "environment"} <= set(report)
    assert list(report["results"]) == BENCH_MODES and report["unavailable"] == {}
    for mode, figures in report["results"].items():
        assert set(RESULT_FIELDS) <= set(figures), mode
        assert figures["n"] == 3 and 0 <= figures["f1"] <= 100
        assert 0 < figures["ttft_p50_s"] <= figures["ttft_p90_s"]
        assert figures["ttft_p50_s"] <= figures["latency_p50_s"] * 1.5
    results = report["results"]
    exact, blended, pruned = (results[m] for m in ("kv-exact", "kv-exact:int8+cacheblend:0.5", "kv-pruned"))
    assert results["text"]["ratios_vs_text"]["ttft_p50_s"] == 1.0
    assert results["none"]["bytes_per_chunk"] == 0 and results["text"]["offline_s_per_chunk"] == 0
    # int8 K/V is about half float16's; pruned keeps about a quarter of the positions.
    assert 0.45 < blended["bytes_per_chunk"] / exact["bytes_per_chunk"] < 0.7
    assert 0.15 < pruned["bytes_per_chunk"] / exact["bytes_per_chunk"] < 0.4
    assert results["slots"]["offline_s_per_chunk"] > 0 and exact["offline_s_per_chunk"] > 0
    # K/V memory is read, not prefilled: fewer positions computed than with slots or text;
    # recovery recomputes some.
    assert exact["context_positions"] < blended["context_positions"] < results["text"]["context_positions"]
    assert exact["context_positions"] < results["slots"]["context_positions"]
    # Compact pruned memory spans only its kept entries (a quarter of the positions).
    assert 0 < pruned["cached_positions"] < exact["cached_positions"] / 2
    assert (
        abs(results["truncated"]["context_positions"] - results["slots"]["context_positions"])
        <= 2 * 2
    )
    assert report["limit"]["ttft_p50_s"] == results["none"]["ttft_p50_s"]
    assert report["environment"] == {"machine": "test"} and report["settings"]["k"] == 2
    assert 0 <= report["retrieval"]["gold_passage_recall_at_k"] <= 1
    assert report["timing"]["s_per_question_all_modes"] > 0
    assert len(bench_result.predictions) == 3 * len(BENCH_MODES)
    # The read-path integrity check is measured per chunk for every store, and as a share of
    # the time to first token for the modes that read one.
    checks = report["offline"]["integrity_check_s_per_chunk"]
    assert {"slots", "kv-exact", "kv-pruned"} <= set(checks) and all(v >= 0 for v in checks.values())
    assert "integrity_share_of_ttft" in results["kv-exact"] and "integrity_share_of_ttft" in results["slots"]


def test_bench_same_prompt_for_text_and_kv_exact(bench_result) -> None:
    """kv-exact reads the text mode's tokens: cached + computed positions = text positions."""
    text, exact = bench_result.results["text"], bench_result.results["kv-exact"]
    assert exact["cached_positions"] + exact["context_positions"] == pytest.approx(
        text["context_positions"]
    )


def test_bench_markdown_and_plots(bench_result, tmp_path: Path) -> None:
    report = markdown_report(bench_result)
    for row in (*(f"| {mode} |" for mode in BENCH_MODES), "*limit*"):
        assert row in report
    checks = targets(bench_result)
    assert "Targets:" in report and len(checks) == 5
    assert "kv-exact:int8+cacheblend:0.5 F1 at least 95% of text's" in checks[2]["target"]
    paths = write_plots(bench_result, tmp_path / "plots")
    assert [p.name for p in paths] == ["f1_vs_ttft.png", "f1_vs_bytes.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_bench_limit_without_the_none_mode(compressor, qa_file: Path, tmp_path: Path) -> None:
    settings = BenchSettings(
        data=qa_file,
        limit=2,
        k=1,
        corpus_size=3,
        modes=["text"],
        embedder="hashing:32",
        max_new_tokens=2,
        warmup=0,
    )
    result = run_benchmark(compressor, settings, tmp_path)
    assert list(result.results) == ["text"] and result.unavailable == {}
    assert result.limit["ttft_p50_s"] > 0 and "question-only" in result.limit["source"]
    assert result.limit["context_positions"] < result.results["text"]["context_positions"]
    # Without the slots mode the retrieval store keeps the frozen decoder's memory, not the
    # compressor's slots (which nothing would read): no compression time.
    from memrag.store import MemoryStore

    with MemoryStore.open(tmp_path / "store", read_only=True) as store:
        assert store.manifest.memory.kind.value == "kv-exact"
    assert result.offline["compress_s"] == 0.0


def test_bench_settings_reject_bad_values(qa_file: Path) -> None:
    with pytest.raises(ValueError, match="pictures"):
        BenchSettings(data=qa_file, limit=1, modes=["text", "pictures"])
    assert BenchSettings(data=qa_file, limit=1, modes=["none", "text", "none"]).modes == ["none", "text"]


@pytest.fixture(scope="module")
def saved_compressor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny compressor saved with its base model, loadable by the CLI."""
    from memrag.models.loading import load_base_model

    root = tmp_path_factory.mktemp("saved")
    base = tiny_base_model(seed=0)
    base.model.save_pretrained(root / "base")
    base.tokenizer.save_pretrained(root / "base")
    tiny_compressor(seed=0, base=load_base_model(str(root / "base"))).save_pretrained(
        root / "compressor"
    )
    return root / "compressor"


def test_bench_cli_writes_every_output(
    saved_compressor: Path, qa_file: Path, tmp_path: Path
) -> None:
    from memrag.cli import app

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--data",
            str(qa_file),
            "--limit",
            "2",
            "--k",
            "2",
            "--corpus-size",
            "4",
            "--compressor",
            str(saved_compressor),
            "--embedder",
            "hashing:32",
            "--max-new-tokens",
            "2",
            "--threads",
            "1",
            "--json-out",
            str(out),
            "--plots-dir",
            str(tmp_path / "plots"),
            "--markdown-out",
            str(tmp_path / "bench.md"),
            "--work-dir",
            str(tmp_path / "work"),
            "--modes",
            "text,slots,kv-exact,kv-exact+cacheblend,truncated,none",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        "machine:" in result.output and "versions:" in result.output and "threads" in result.output
    )
    report = json.loads(out.read_text())
    assert (
        report["environment"]["compressor_trained"] is True
        and report["environment"]["threads"] == 1
    )
    assert set(report["results"]) == {"text", "slots", "kv-exact", "kv-exact+cacheblend", "truncated", "none"}
    assert (tmp_path / "plots" / "f1_vs_ttft.png").is_file() and "| slots |" in (
        tmp_path / "bench.md"
    ).read_text()
    assert (tmp_path / "work" / "store" / "manifest.json").is_file()


def test_bench_cli_refuses_bad_modes_and_labels_untrained(
    saved_compressor: Path, qa_file: Path, tmp_path: Path
) -> None:
    from memrag.cli import app

    runner = CliRunner()
    bad = runner.invoke(
        app, ["bench", "--data", str(qa_file), "--limit", "1", "--modes", "text,pictures"]
    )
    assert bad.exit_code == 2 and "pictures" in bad.output
    base = saved_compressor.parent / "base"
    ok = runner.invoke(
        app,
        [
            "bench",
            "--data",
            str(qa_file),
            "--limit",
            "1",
            "--k",
            "1",
            "--corpus-size",
            "2",
            "--untrained",
            "--base-model",
            str(base),
            "--modes",
            "slots,none",
            "--embedder",
            "hashing:16",
            "--max-new-tokens",
            "1",
            "--warmup",
            "0",
            "--json-out",
            str(tmp_path / "b.json"),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "UNTRAINED" in ok.output
    assert (
        json.loads((tmp_path / "b.json").read_text())["environment"]["compressor_trained"] is False
    )


def test_output_projection_gets_densely_strided_input() -> None:
    """``logits_to_keep`` slices hidden states; the head must get them dense (CPU bf16 speed)."""
    base = tiny_base_model(seed=0)
    seen: list[tuple[int, ...]] = []
    head = base.model.get_output_embeddings()
    head.register_forward_hook(lambda module, args, output: seen.append(args[0].stride()))
    with torch.inference_mode():
        sliced = base.model(input_ids=torch.tensor([[2, 5, 6, 7, 8]]), logits_to_keep=1).logits
        full = base.model(input_ids=torch.tensor([[2, 5, 6, 7, 8]])).logits
    assert seen[0] == (32, 32, 1) and seen[1] == (160, 32, 1)
    torch.testing.assert_close(sliced[0, -1], full[0, -1])


def test_the_bench_modes_are_the_registrys() -> None:
    from memrag.bench.modes import MODES, parse_mode
    from memrag.contexts import PLAIN_MODES

    assert [m for m in MODES if not parse_mode(m).reads_memory] == list(PLAIN_MODES)
    assert [parse_mode(m).memory for m in MODES if parse_mode(m).reads_memory] == ["kv-exact", "kv-pruned"]
    assert parse_mode("kv:int4+cacheblend:0.1").recovery == "cacheblend:0.1"
