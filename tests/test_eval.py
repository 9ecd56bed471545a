"""``memrag eval qa`` / ``memrag eval ae`` end to end on a tiny compressor, and their helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_fixtures import qa_corpus, text_corpus, write_jsonl
from typer.testing import CliRunner

from memrag.compressor import Compressor
from memrag.eval.ae import evaluate_ae, sample_segments
from memrag.eval.qa import DEFAULT_MODES, MODES, evaluate_qa, sample_qa_records, truncated_context
from memrag.models.loading import load_base_model
from memrag.testing import tiny_base_model, tiny_compressor


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base model directory and a compressor over it, both saved (CLI-loadable)."""
    root = tmp_path_factory.mktemp("saved")
    base = tiny_base_model(seed=0)
    base.model.save_pretrained(root / "base")
    base.tokenizer.save_pretrained(root / "base")
    compressor = tiny_compressor(seed=0, base=load_base_model(str(root / "base")))
    compressor.save_pretrained(root / "compressor")
    data = root / "data"
    return {
        "base": root / "base",
        "compressor": root / "compressor",
        "qa": qa_corpus(data / "qa.jsonl", paragraphs=4, questions=2),
        "text": text_corpus(data / "text.jsonl", documents=12),
    }


def test_evaluate_qa_all_modes_shape_and_positions(tiny_compressor: Compressor, tmp_path: Path) -> None:
    records = sample_qa_records(qa_corpus(tmp_path / "qa.jsonl", paragraphs=3, questions=2))
    result = evaluate_qa(tiny_compressor, records, batch_size=4, max_new_tokens=4)
    assert list(result.results) == list(MODES)
    for scores in result.results.values():
        assert set(scores) == {"exact_match", "f1", "contains", "n"} and scores["n"] == len(records)
        assert 0.0 <= scores["f1"] <= 100.0 and 0.0 <= scores["exact_match"] <= 100.0
    positions = result.passage_positions
    assert positions["none"] == 0 and positions["slots"] < positions["text"]
    assert abs(positions["truncated"] - positions["slots"]) <= 1.0
    assert len(result.predictions) == len(records) * len(MODES)
    assert "slots" in result.table()
    json.dumps(result.to_json(extra=1))


def test_a_kv_compressors_slots_are_scored_as_stored_in_float16_and_int8(tmp_path: Path) -> None:
    from memrag.eval.qa import check_modes

    kv_compressor = tiny_compressor(seed=0, slot_kind="kv", kv_positions="subset")
    records = sample_qa_records(qa_corpus(tmp_path / "qa.jsonl", paragraphs=3, questions=1))
    check_modes(["kv", "kv:int8"])
    with pytest.raises(ValueError, match="unknown mode 'kvx'"):
        check_modes(["kvx"])
    result = evaluate_qa(kv_compressor, records, modes=("slots", "kv", "kv:int8"), batch_size=4, max_new_tokens=4)
    sizes = {mode: cost["bytes_per_passage"] for mode, cost in result.memory.items()}
    # float16 keys and values, plus the positions a store keeps with them
    assert sizes["slots"] <= sizes["kv"] < 1.1 * sizes["slots"]
    assert 0.4 < sizes["kv:int8"] / sizes["kv"] < 0.65
    assert all(result.memory[mode]["seconds_per_passage"] > 0 for mode in ("slots", "kv", "kv:int8"))
    assert result.passage_positions["kv"] == result.passage_positions["slots"]


def test_truncated_context_has_as_many_tokens_as_slots(tiny_compressor: Compressor) -> None:
    context = "The Eiffel Tower was completed in 1889 for the World's Fair in Paris, France. " * 3
    (slots,) = tiny_compressor.compress([context])
    cut = truncated_context(tiny_compressor, context)
    assert context.startswith(cut.strip()[:10])
    ids = tiny_compressor.tokenizer(cut, add_special_tokens=False)["input_ids"]
    assert abs(len(ids) - slots.num_slots) <= 1


def test_sample_qa_records_is_seeded_and_in_file_order(tmp_path: Path) -> None:
    path = qa_corpus(tmp_path / "qa.jsonl", paragraphs=10, questions=3)
    first = sample_qa_records(path, limit=7, seed=3)
    assert [r.id for r in first] == [r.id for r in sample_qa_records(path, limit=7, seed=3)]
    assert [r.id for r in first] != [r.id for r in sample_qa_records(path, limit=7, seed=4)]
    assert [r.line for r in first] == sorted(r.line for r in first) and len(first) == 7


def test_evaluate_ae_buckets(tiny_compressor: Compressor, tmp_path: Path) -> None:
    segments = sample_segments([text_corpus(tmp_path / "t.jsonl")], tiny_compressor.tokenizer, limit=6, max_length=16, min_length=4)
    assert len(segments) == 6 and all(4 <= len(s) <= 16 for s in segments)
    result = evaluate_ae(tiny_compressor, segments, buckets=(8, 16), batch_size=4)
    assert result.overall["n"] == 6 and 0.0 <= result.overall["bleu4"] <= 1.0
    assert set(result.by_length) <= {"1-8", "9-16"}
    assert sum(b["n"] for b in result.by_length.values()) == 6
    assert "all" in result.table()


def test_evaluate_ae_reconstructs_from_kv_slots_with_the_repeat_instruction(tmp_path: Path) -> None:
    from memrag.memory.kv import KVSlots
    from memrag.memory.pruning import REPEAT_PROMPT
    from memrag.prompts import reconstruct_prompt

    kv_compressor = tiny_compressor(seed=0, slot_kind="kv", kv_positions="subset")
    segments = sample_segments([text_corpus(tmp_path / "t.jsonl")], kv_compressor.tokenizer, limit=3, max_length=16, min_length=4)
    (slots,) = kv_compressor.encode_segments(segments[:1])
    assert isinstance(slots, KVSlots) and reconstruct_prompt(slots) == [slots, REPEAT_PROMPT]
    result = evaluate_ae(kv_compressor, segments, buckets=(16,), batch_size=2)
    assert result.overall["n"] == 3 and 0.0 <= result.overall["bleu4"] <= 1.0


def test_eval_qa_cli_writes_json(saved: dict[str, Path], tmp_path: Path) -> None:
    from memrag.cli import app

    out = tmp_path / "qa.json"
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, [
            "eval", "qa", "--data", str(saved["qa"]), "--compressor", str(saved["compressor"]), "--limit", "5",
            "--seed", "1", "--max-new-tokens", "3", "--json-out", str(out), "--samples-out", str(tmp_path / "p.jsonl"),
            "--threads", "1",
        ])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert list(report["results"]) == list(DEFAULT_MODES) and report["complete"] is True
    for scores in report["results"].values():
        assert set(scores) == {"exact_match", "f1", "contains", "n"} and scores["n"] == 5
    assert report["fingerprint"] and report["seed"] == 1
    assert report["threads"] == 1 and report["dtype"] == "float32" and report["hardware"]
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 5 * len(DEFAULT_MODES)
    for mode in DEFAULT_MODES:
        assert mode in result.output
    # K/V memory is read, not computed: its prompts prefill only the question and separators.
    assert report["prefilled_positions"]["kv-exact"] < report["prefilled_positions"]["slots"]
    assert report["memory"]["kv-pruned"]["bytes_per_passage"] < report["memory"]["kv-exact"]["bytes_per_passage"]


def test_eval_qa_kv_modes_and_resume(saved: dict[str, Path], tmp_path: Path) -> None:
    """An interrupted run keeps its finished modes; --resume runs only the others."""
    from memrag.cli import app

    out, samples = tmp_path / "qa.json", tmp_path / "p.jsonl"
    common = [
        "eval", "qa", "--data", str(saved["qa"]), "--compressor", str(saved["compressor"]), "--limit", "4",
        "--max-new-tokens", "2", "--json-out", str(out), "--samples-out", str(samples), "--threads", "1",
    ]
    threads = torch.get_num_threads()
    runner = CliRunner()
    try:
        first = runner.invoke(app, [*common, "--modes", "text,kv-exact:int8"])
        assert first.exit_code == 0, first.output
        before = json.loads(out.read_text())
        resumed = runner.invoke(
            app,
            [*common, "--modes", "text,kv-exact:int8,kv-pruned:0.5:prefill", "--resume",
             "--markdown-out", str(tmp_path / "qa.md")],
        )
        assert resumed.exit_code == 0, resumed.output
        table = (tmp_path / "qa.md").read_text().splitlines()
        assert table[0].startswith("| mode | EM | F1 | contains | F1 / text") and len(table) == 2 + 3
        assert table[3].startswith("| `kv-exact:int8` |")
        assert "resuming: keeping text, kv-exact:int8" in resumed.output
        after = json.loads(out.read_text())
        assert after["results"]["text"] == before["results"]["text"] and after["complete"] is True
        assert list(after["results"]) == ["text", "kv-exact:int8", "kv-pruned:0.5:prefill"]
        assert len(samples.read_text().splitlines()) == 4 * 3
        other = runner.invoke(app, [*[c if c != "4" else "3" for c in common], "--modes", "text", "--resume"])
        assert other.exit_code != 0 and "different limit" in other.output
    finally:
        torch.set_num_threads(threads)


def test_eval_qa_cli_untrained_baseline_and_bad_modes(saved: dict[str, Path]) -> None:
    from memrag.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, [
        "eval", "qa", "--data", str(saved["qa"]), "--untrained", "--base-model", str(saved["base"]),
        "--modes", "text,none", "--limit", "2", "--max-new-tokens", "2",
    ])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["eval", "qa", "--data", str(saved["qa"]), "--modes", "text,pictures"])
    assert bad.exit_code == 2 and "pictures" in bad.output


def test_eval_qa_cli_bad_rows(saved: dict[str, Path], tmp_path: Path) -> None:
    from memrag.cli import app

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"context": "c", "question": "q", "answers": "not a list"}])
    result = CliRunner().invoke(app, ["eval", "qa", "--data", str(bad), "--on-bad-row", "raise", "--compressor", str(saved["compressor"])])
    assert result.exit_code == 2
    assert "bad.jsonl:1: field 'answers' must be a list of strings, got string" in result.output


def test_eval_ae_cli_writes_json(saved: dict[str, Path], tmp_path: Path) -> None:
    from memrag.cli import app

    out = tmp_path / "ae.json"
    result = CliRunner().invoke(app, [
        "eval", "ae", "--data", str(saved["text"]), "--compressor", str(saved["compressor"]), "--limit", "4",
        "--holdout-fraction", "0.5", "--min-length", "4", "--json-out", str(out),
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["results"]["overall"]["n"] == 4
    assert set(report["results"]["overall"]) == {"bleu4", "exact_match", "n"}
    assert report["results"]["by_length"] and report["holdout_fraction"] == 0.5


@pytest.mark.parametrize("command", ["qa", "ae"])
def test_eval_cli_help(command: str) -> None:
    from memrag.cli import app

    result = CliRunner().invoke(app, ["eval", command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--data", "--compressor", "--limit", "--json-out", "--untrained"):
        assert option in result.output


def test_compress_cli_prints_both_slot_kinds(saved: dict[str, Path], tmp_path: Path) -> None:
    from memrag.cli import app

    kv = tiny_compressor(seed=0, base=load_base_model(str(saved["base"])), slot_kind="kv", kv_positions="subset")
    kv.save_pretrained(tmp_path / "kv")
    runner = CliRunner()
    for directory, kind in ((saved["compressor"], "embedding"), (tmp_path / "kv", "kv")):
        result = runner.invoke(app, ["compress", "--compressor", str(directory), "Paris is the capital of France."])
        assert result.exit_code == 0, result.output
        assert f"{kind} slots)" in result.output and "tokens ->" in result.output
    assert "keys and values each" in result.output
