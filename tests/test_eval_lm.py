"""``memrag eval lm``: continuation language modelling from text, slots, truncated text or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from training_fixtures import text_corpus, write_jsonl
from typer.testing import CliRunner

from memrag.compressor import Compressor
from memrag.data.readers import BadRowError
from memrag.eval.lm import (
    MODES,
    Continuation,
    continuation_prompts,
    evaluate_lm,
    sample_continuations,
)
from memrag.memory.kv import KVSlots
from memrag.memory.slots import Slots
from memrag.models.loading import load_base_model
from memrag.splice import Task
from memrag.testing import tiny_base_model, tiny_compressor

CONTEXT, TARGET = 32, 8


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> list[Continuation]:
    """A few (32-token context, 8-token target) examples from a random-word corpus."""
    from memrag.testing import tiny_tokenizer

    path = text_corpus(tmp_path_factory.mktemp("lm") / "text.jsonl", documents=12)
    sample = sample_continuations([path], tiny_tokenizer(), limit=5, context_tokens=CONTEXT, target_tokens=TARGET)
    assert len(sample.examples) == 5
    return sample.examples


@pytest.fixture(scope="module")
def kv_compressor() -> Compressor:
    return tiny_compressor(seed=0, slot_kind="kv", kv_positions="subset")


def _plain_scores(compressor: Compressor, prefix: list[int], target: list[int]) -> tuple[float, float]:
    """Mean NLL and top-1 % of ``target`` after ``prefix``: one plain forward of the frozen decoder."""
    ids = torch.tensor([prefix + target])
    with torch.no_grad(), compressor.decoder_mode() as decoder:
        logits = decoder(input_ids=ids).logits[0].float()
    predicting = logits[len(prefix) - 1 : -1]
    wanted = torch.tensor(target)
    nll = F.cross_entropy(predicting, wanted).item()
    top1 = 100.0 * (predicting.argmax(-1) == wanted).float().mean().item()
    return nll, top1


def test_text_and_none_modes_equal_a_plain_forward_of_the_frozen_decoder(
    tiny_compressor: Compressor, examples: list[Continuation]
) -> None:
    """text is [BOS] + context + targets, none is [BOS] + targets, batched (left-padded) or not."""
    result = evaluate_lm(tiny_compressor, examples, modes=("text", "none"), batch_size=3)
    assert result.retokenized == 0  # so the decoder read exactly the context tokens
    bos = tiny_compressor.tokenizer.bos_token_id
    assert bos is not None
    by_mode: dict[str, list[dict]] = {"text": [], "none": []}
    for sample in result.samples:
        by_mode[sample["mode"]].append(sample)
    total = {"text": 0.0, "none": 0.0}
    for i, example in enumerate(examples):
        for mode, prefix in (("text", [bos, *example.context]), ("none", [bos])):
            nll, top1 = _plain_scores(tiny_compressor, prefix, example.target)
            sample = by_mode[mode][i]
            assert sample["index"] == i and sample["target_tokens"] == TARGET
            assert sample["nll"] == pytest.approx(nll, abs=1e-4)
            assert sample["top1"] == pytest.approx(top1)
            total[mode] += nll * TARGET
    for mode in ("text", "none"):
        scores = result.results[mode]
        tokens = TARGET * len(examples)
        assert scores["target_tokens"] == tokens and scores["n"] == len(examples)
        assert scores["nll"] == pytest.approx(total[mode] / tokens, abs=1e-4)
        assert scores["perplexity"] == pytest.approx(torch.tensor(scores["nll"]).exp().item(), rel=1e-6)
    assert result.results["text"]["context_positions"] == CONTEXT
    assert result.results["text"]["prompt_positions"] == CONTEXT + 1
    assert result.results["none"]["context_positions"] == 0
    # The context matters to the decoder.
    assert abs(result.results["none"]["nll"] - result.results["text"]["nll"]) > 1e-3


def test_prompt_layout_per_mode(tiny_compressor: Compressor, kv_compressor: Compressor, examples: list[Continuation]) -> None:
    contexts = [e.context for e in examples[:2]]
    tokenizer = tiny_compressor.tokenizer
    text, positions = continuation_prompts(tiny_compressor, contexts, "text")
    assert text == [[tokenizer.decode(c)] for c in contexts] and positions == [CONTEXT, CONTEXT]
    cut, positions = continuation_prompts(tiny_compressor, contexts, "truncated")
    # 32 tokens = two 16-token segments of 4 slots each -> the first 8 tokens.
    assert cut == [[tokenizer.decode(c[:8])] for c in contexts] and positions == [8, 8]
    assert continuation_prompts(tiny_compressor, contexts, "none") == ([[], []], [0, 0])
    for compressor, kind in ((tiny_compressor, Slots), (kv_compressor, KVSlots)):
        prompts, positions = continuation_prompts(compressor, contexts, "slots")
        for prompt in prompts:
            assert len(prompt) == 2 and isinstance(prompt[0], kind) and prompt[1] is Task.CONTINUE
            assert prompt[0].num_tokens == CONTEXT
        assert positions == [8, 8]
    with pytest.raises(ValueError, match="unknown mode 'pictures'"):
        continuation_prompts(tiny_compressor, contexts, "pictures")


def test_all_modes_for_a_kv_subset_compressor(kv_compressor: Compressor, examples: list[Continuation]) -> None:
    result = evaluate_lm(kv_compressor, examples[:3], batch_size=2)
    assert list(result.results) == list(MODES)
    for scores in result.results.values():
        assert scores["n"] == 3 and scores["target_tokens"] == 3 * TARGET
        assert 0.0 <= scores["top1"] <= 100.0 and scores["nll"] > 0
    assert result.results["slots"]["context_positions"] == result.results["truncated"]["context_positions"] == 8
    assert result.results["slots"]["prompt_positions"] == 8 + 2  # BOS, slots, continue marker
    assert len(result.samples) == 3 * len(MODES)
    assert "truncated" in result.table() and result.markdown().count("\n") == 2 + len(MODES)


def test_short_documents_are_skipped_and_counted(tmp_path: Path) -> None:
    from memrag.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    long_text = " ".join(["Paris is the capital and most populous city of France."] * 12)
    rows = [{"text": "tiny"}, {"text": long_text}, {"text": "Paris is old."}, {"text": long_text}, {"text": "x y"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    sample = sample_continuations([path], tokenizer, limit=50, context_tokens=CONTEXT, target_tokens=TARGET)
    assert sample.short_documents == 3 and sample.skipped_rows == 0
    # Consecutive contexts; each target is the start of the next context.
    ids = list(tokenizer(long_text, add_special_tokens=False)["input_ids"])
    need = (len(ids) - CONTEXT - TARGET) // CONTEXT + 1
    assert len(sample.examples) == 2 * need
    windows = [ids[k * CONTEXT : k * CONTEXT + CONTEXT + TARGET] for k in range(need)]
    assert sorted(e.context + e.target for e in sample.examples) == sorted(windows * 2)
    assert all(len(e.context) == CONTEXT and len(e.target) == TARGET for e in sample.examples)
    # Only the held-out tail (the last 2 of 5 lines) is read with a holdout fraction.
    held = sample_continuations([path], tokenizer, limit=50, context_tokens=CONTEXT, target_tokens=TARGET, holdout_fraction=0.4)
    assert held.short_documents == 1 and len(held.examples) == need


def test_bad_rows_name_the_file_and_line(tmp_path: Path) -> None:
    from memrag.testing import tiny_tokenizer

    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "Paris is the capital of France. " * 20}, "{not json", {"body": "x"}])
    with pytest.raises(BadRowError, match=r"bad\.jsonl:2: "):
        sample_continuations([path], tiny_tokenizer(), limit=50, context_tokens=CONTEXT, target_tokens=TARGET, on_error="raise")
    skipped = sample_continuations([path], tiny_tokenizer(), limit=50, context_tokens=CONTEXT, target_tokens=TARGET)
    assert skipped.skipped_rows == 2 and skipped.examples


def test_evaluate_lm_refuses_bad_input(tiny_compressor: Compressor, examples: list[Continuation]) -> None:
    with pytest.raises(ValueError, match="unknown mode 'kv-exact'"):
        evaluate_lm(tiny_compressor, examples, modes=("text", "kv-exact"))
    with pytest.raises(ValueError, match="no examples"):
        evaluate_lm(tiny_compressor, [])
    with pytest.raises(ValueError, match="context_tokens >= 1"):
        sample_continuations([], tiny_compressor.tokenizer, limit=1, context_tokens=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base model, an embedding and a K/V subset compressor over it (CLI-loadable), and text."""
    root = tmp_path_factory.mktemp("saved-lm")
    base = tiny_base_model(seed=0)
    base.model.save_pretrained(root / "base")
    base.tokenizer.save_pretrained(root / "base")
    tiny_compressor(seed=0, base=load_base_model(str(root / "base"))).save_pretrained(root / "embedding")
    kv = tiny_compressor(seed=0, base=load_base_model(str(root / "base")), slot_kind="kv", kv_positions="subset")
    kv.save_pretrained(root / "kv")
    return {"embedding": root / "embedding", "kv": root / "kv", "text": text_corpus(root / "text.jsonl", documents=12)}


@pytest.mark.parametrize("kind", ["embedding", "kv"])
def test_eval_lm_cli_writes_json_and_markdown(saved: dict[str, Path], tmp_path: Path, kind: str) -> None:
    from memrag.cli import app

    out, md, samples = tmp_path / "lm.json", tmp_path / "lm.md", tmp_path / "lm.jsonl"
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, [
            "eval", "lm", "--data", str(saved["text"]), "--compressor", str(saved[kind]), "--limit", "3",
            "--seed", "2", "--holdout-fraction", "0.5", "--target-tokens", "4", "--batch-size", "2",
            "--json-out", str(out), "--markdown-out", str(md), "--samples-out", str(samples), "--threads", "1",
        ])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert list(report["results"]) == list(MODES)
    for scores in report["results"].values():
        assert scores["n"] == 3 and scores["target_tokens"] == 12
        assert {"nll", "perplexity", "top1", "context_positions", "prompt_positions"} <= set(scores)
    # Default context: two segments of the compressor (segment length 16).
    assert report["context_tokens"] == 32 and report["segments_per_context"] == 2 and report["target_tokens"] == 4
    assert report["results"]["text"]["context_positions"] == 32
    assert report["results"]["slots"]["context_positions"] == report["results"]["truncated"]["context_positions"] == 8
    assert report["holdout_fraction"] == 0.5 and report["seed"] == 2 and report["short_documents"] >= 0
    assert report["threads"] == 1 and report["dtype"] == "float32" and report["fingerprint"] and report["hardware"]
    table = md.read_text().splitlines()
    assert table[0].startswith("| mode | NLL | perplexity | top-1 %") and len(table) == 2 + len(MODES)
    assert len(samples.read_text().splitlines()) == 3 * len(MODES)
    for mode in MODES:
        assert mode in result.output


def test_eval_lm_cli_errors(saved: dict[str, Path], tmp_path: Path) -> None:
    from memrag.cli import app

    runner = CliRunner()
    bad_mode = runner.invoke(app, ["eval", "lm", "--data", str(saved["text"]), "--modes", "text,pictures"])
    assert bad_mode.exit_code == 2 and "pictures" in bad_mode.output
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "Paris is the capital of France."}, {"title": "no text"}])
    result = runner.invoke(app, [
        "eval", "lm", "--data", str(bad), "--on-bad-row", "raise", "--compressor", str(saved["embedding"]),
    ])
    assert result.exit_code == 2 and "bad.jsonl:2:" in result.output and "text" in result.output
    short = runner.invoke(app, [
        "eval", "lm", "--data", str(bad), "--compressor", str(saved["embedding"]), "--modes", "text",
    ])
    assert short.exit_code == 2 and "1 too short, 1 bad rows skipped" in short.output
    helped = runner.invoke(app, ["eval", "lm", "--help"], env={"COLUMNS": "200"})
    assert helped.exit_code == 0
    for option in ("--data", "--text-field", "--holdout-fraction", "--modes", "--context-tokens", "--target-tokens",
                   "--batch-size", "--markdown-out", "--json-out", "--compressor", "--device", "--dtype", "--threads"):
        assert option in helped.output
