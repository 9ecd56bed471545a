"""Training on tiny random models: objectives, streams, trainer, checkpoints, resume, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from training_fixtures import (
    finetune_data,
    make_trainer,
    qa_corpus,
    text_corpus,
    train_log,
    training_args,
    write_jsonl,
)
from typer.testing import CliRunner

from memrag.compressor import Compressor
from memrag.compressor.config import SAVED_FILES
from memrag.data.examples import take
from memrag.data.readers import BadRowError
from memrag.prompts import qa_prompt, qa_target_ids, reconstruct_prompt
from memrag.testing import randomize_lora, tiny_base_model, tiny_compressor
from memrag.training import (
    ModelArguments,
    PretrainStream,
    QAStream,
    TrainingArguments,
    finetuning_trainer,
    holdout_start_line,
)
from memrag.training.checkpoint import CHECKPOINT_FILES, optimizer_from_files, optimizer_to_files
from memrag.training.objectives import PretrainObjective, QAObjective, target_losses
from memrag.training.trainer import OutputExistsError, lr_factor


def _tokenize(compressor: Compressor):
    return lambda text: compressor.tokenizer(text, add_special_tokens=False)["input_ids"]


def _learned(compressor: Compressor) -> dict[str, torch.Tensor]:
    weights = {n: p.detach().clone() for n, p in compressor.peft_model.named_parameters() if "lora_" in n}
    weights["memory"] = compressor.memory_embeddings.detach().clone()
    weights["task"] = compressor.task_embeddings.detach().clone()
    return weights


# --------------------------------------------------------------------------- smoke
@pytest.mark.parametrize("kind", ["pretrain", "finetune", "finetune+continuation"])
def test_two_steps_train_learned_weights_only_and_checkpoint(kind: str, tmp_path: Path) -> None:
    compressor = tiny_compressor(seed=0)
    frozen = {n: p.detach().clone() for n, p in compressor.peft_model.named_parameters() if "lora_" not in n}
    before = _learned(compressor)
    trainer = make_trainer(kind, tmp_path, compressor)
    state = trainer.train()

    assert state.step == 2 and state.target_tokens > 0
    losses = [r["loss"] for r in train_log(tmp_path / "run")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    after = _learned(compressor)
    lora_changed = [n for n in before if n not in ("memory", "task") and not torch.equal(before[n], after[n])]
    assert lora_changed, "no LoRA weight changed"
    assert not torch.equal(before["memory"], after["memory"])
    for name, parameter in compressor.peft_model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(parameter, frozen[name]), f"frozen weight {name} changed"

    run = tmp_path / "run"
    checkpoint = run / "checkpoint-0000002"
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(CHECKPOINT_FILES)
    assert sorted(p.name for p in (checkpoint / "compressor").iterdir()) == sorted(SAVED_FILES)
    assert sorted(p.name for p in (run / "final").iterdir()) == sorted(SAVED_FILES)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 2 and summary["objective"] == kind.split("+")[0]
    loaded = Compressor.from_pretrained(run / "final", base=tiny_base_model(seed=0))
    assert loaded.fingerprint == compressor.fingerprint == summary["fingerprint"]


def test_only_lora_and_embeddings_are_optimised(tmp_path: Path) -> None:
    trainer = make_trainer("pretrain", tmp_path, tiny_compressor(seed=0))
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    names = [n for n, p in trainer.compressor.named_parameters() if id(p) in optimised]
    assert names and all("lora_" in n or n in ("memory_embeddings", "task_embeddings") for n in names)
    assert {"memory_embeddings", "task_embeddings"} <= set(names)


def test_bfloat16_base_trains_float32_learned_weights(tmp_path: Path) -> None:
    base = tiny_base_model(seed=0)
    base.model.to(torch.bfloat16)
    compressor = tiny_compressor(seed=0, base=base)
    trainer = make_trainer("pretrain", tmp_path, compressor, max_steps=1, save_every=1)
    trainer.train()
    assert math.isfinite(train_log(tmp_path / "run")[0]["loss"])
    assert {p.dtype for group in trainer.optimizer.param_groups for p in group["params"]} == {torch.float32}


# --------------------------------------------------------------------------- resume
class _Interrupted(RuntimeError):
    pass


@pytest.mark.parametrize("kind", ["pretrain", "finetune", "finetune+continuation"])
def test_resume_continues_exactly(kind: str, tmp_path: Path) -> None:
    straight = make_trainer(kind, tmp_path / "a", tiny_compressor(seed=0), max_steps=4, save_every=2)
    straight.train()
    expected = [r["loss"] for r in train_log(tmp_path / "a" / "run")]

    interrupted = make_trainer(kind, tmp_path / "b", tiny_compressor(seed=0), max_steps=4, save_every=2)
    original_step = interrupted.train_step
    calls = []

    def flaky_step():
        calls.append(1)
        if len(calls) == 3:
            raise _Interrupted("power cut")
        return original_step()

    interrupted.train_step = flaky_step  # type: ignore[method-assign]
    with pytest.raises(_Interrupted):
        interrupted.train()
    with pytest.raises(OutputExistsError):
        make_trainer(kind, tmp_path / "b", tiny_compressor(seed=0), max_steps=4, save_every=2).train()

    fresh = tiny_compressor(seed=0)
    randomize_lora(fresh, seed=7)  # the checkpoint's weights must replace these
    resumed = make_trainer(kind, tmp_path / "b", fresh, max_steps=4, save_every=2)
    resumed.train(resume=True)
    got = [r["loss"] for r in train_log(tmp_path / "b" / "run")]
    assert [r["step"] for r in train_log(tmp_path / "b" / "run")] == [1, 2, 3, 4]
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert resumed.compressor.fingerprint == straight.compressor.fingerprint
    assert [r["step"] for r in train_log(tmp_path / "b" / "run", "start")] == [0, 2]


def test_max_minutes_stops_with_a_checkpoint_and_resume_finishes_the_same_run(tmp_path: Path) -> None:
    straight = make_trainer("pretrain", tmp_path / "a", tiny_compressor(seed=0), max_steps=3, save_every=3)
    straight.train()
    expected = [r["loss"] for r in train_log(tmp_path / "a" / "run")]

    run = tmp_path / "b" / "run"
    boxed = make_trainer(
        "pretrain", tmp_path / "b", tiny_compressor(seed=0), max_steps=3, save_every=3, max_minutes=1e-9
    )
    assert boxed.train().step == 1  # the budget is spent by the first step
    assert (run / "checkpoint-0000001").is_dir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 1 and summary["complete"] is False
    assert Compressor.from_pretrained(run / "final", base=tiny_base_model(seed=0)).fingerprint == summary["fingerprint"]
    assert [(r["step"], r["reason"]) for r in train_log(run, "stop")] == [(1, "max_minutes")]

    resumed = make_trainer("pretrain", tmp_path / "b", tiny_compressor(seed=0), max_steps=3, save_every=3)
    assert resumed.train(resume=True).step == 3
    assert [r["loss"] for r in train_log(run)] == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert resumed.compressor.fingerprint == straight.compressor.fingerprint
    assert json.loads((run / "summary.json").read_text())["complete"] is True
    with pytest.raises(ValueError, match="max_minutes"):
        training_args(tmp_path, max_minutes=0.0)


def test_optimizer_state_round_trips_through_safetensors_and_json() -> None:
    parameter = torch.nn.Parameter(torch.randn(3, 2))
    optimizer = torch.optim.AdamW([parameter], lr=0.1)
    parameter.grad = torch.randn(3, 2)
    optimizer.step()
    tensors, meta = optimizer_to_files(optimizer)
    json.dumps(meta)  # JSON-serialisable
    restored = torch.optim.AdamW([torch.nn.Parameter(parameter.detach().clone())], lr=0.1)
    restored.load_state_dict(optimizer_from_files(tensors, meta))
    for key, value in optimizer.state_dict()["state"][0].items():
        torch.testing.assert_close(restored.state_dict()["state"][0][key], value)


def test_learning_rate_schedule() -> None:
    args = TrainingArguments(max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(step, args) for step in range(100)]
    assert factors[0] == pytest.approx(1 / 11) and factors[10] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(factors[:10], factors[1:11]))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
    linear = TrainingArguments(max_steps=100, warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert lr_factor(50, linear) == pytest.approx(0.5)


# --------------------------------------------------------------------------- data streams
def test_pretrain_stream_resumes_exactly_and_varies_lengths(tmp_path: Path) -> None:
    corpus = text_corpus(tmp_path / "t.jsonl")
    tokenize = _tokenize(tiny_compressor(seed=0))

    def stream() -> PretrainStream:
        return PretrainStream([corpus, corpus], tokenize, max_length=16, min_length=4, continuation=5, seed=3, open_records=3)

    first = stream()
    take(first, 17)
    state = json.loads(json.dumps(first.state_dict()))
    expected = take(first, 25)
    second = stream()
    second.load_state_dict(state)
    assert take(second, 25) == expected
    lengths = {len(e.segment) for e in expected}
    assert min(lengths) < 10 and max(lengths) == 16
    assert {e.kind for e in expected} == {"ae", "lm"}
    assert all(len(e.continuation) == 5 for e in expected if e.kind == "lm")


def test_holdout_lines_are_never_trained_on(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "t.jsonl", [{"text": f"document number {i} " * 10} for i in range(20)])
    cut = holdout_start_line(corpus, 0.1)
    assert cut == 19
    tokenize = _tokenize(tiny_compressor(seed=0))
    train = PretrainStream([corpus], tokenize, max_length=8, min_length=8, holdout_fraction=0.1, open_records=1, ae_probability=1.0)
    take(train, 200)  # more than one epoch
    assert train.sources[0].records.epoch >= 1
    heldout = PretrainStream([corpus], tokenize, max_length=8, min_length=8, holdout_fraction=0.1, split="heldout", ae_probability=1.0)
    held = take(heldout, 1000)
    texts = {tiny_compressor(seed=0).tokenizer.decode(e.segment) for e in held}
    assert held and all("18" in t or "19" in t for t in texts)


def test_qa_stream_gold_among_distractors_and_resume(tmp_path: Path) -> None:
    corpus = qa_corpus(tmp_path / "qa.jsonl", paragraphs=10)
    stream = QAStream(corpus, max_distractors=4, shuffle_buffer=8, seed=1)
    examples = take(stream, 20)
    assert {len(e.contexts) for e in examples} - {1} and all(len(e.contexts) <= 5 for e in examples)
    assert {e.gold_index for e in examples} - {0}
    for example in examples:
        assert len(set(example.contexts)) == len(example.contexts)
    state = json.loads(json.dumps(stream.state_dict()))
    expected = take(stream, 30)
    again = QAStream(corpus, max_distractors=4, shuffle_buffer=8, seed=1)
    again.load_state_dict(state)
    assert take(again, 30) == expected


def test_qa_stream_start_line_skips_earlier_questions_in_every_epoch(tmp_path: Path) -> None:
    corpus = qa_corpus(tmp_path / "qa.jsonl", paragraphs=10)  # line n holds paragraph (n - 1) // 3
    stream = QAStream(corpus, max_distractors=2, shuffle_buffer=4, seed=0, start_line=16)
    examples = take(stream, 40)  # 15 usable questions: more than two epochs
    assert stream.records.epoch >= 2
    paragraphs = {int(e.id[1 : e.id.index("_")]) for e in examples}
    assert paragraphs == set(range(5, 10))
    early = {json.loads(line)["context"] for line in corpus.read_text().splitlines()[:15]}
    assert not early & {context for e in examples for context in e.contexts}


# --------------------------------------------------------------------------- objectives
def test_objectives_put_loss_on_target_tokens_only(tiny_compressor: Compressor) -> None:
    from memrag.data.examples import PretrainExample, QAExample

    tokenize = _tokenize(tiny_compressor)
    segment = tokenize("Paris is the capital and most populous city of France.")[:12]
    output = PretrainObjective()(tiny_compressor, [PretrainExample("ae", segment), PretrainExample("lm", segment[:6], segment[6:])])
    assert output.num_tokens == len(segment) + 1 + len(segment[6:])  # EOS after a reconstruction
    assert output.parts["ae"][1] == len(segment) + 1 and output.parts["lm"][1] == 6
    assert output.loss_sum.requires_grad and torch.isfinite(output.loss_sum)

    # The per-row sums equal the decoder's own mean loss over the same batch.
    slots = tiny_compressor.compress(["Paris is the capital.", "The quick brown fox jumps."])
    prompts = [reconstruct_prompt(s) for s in slots]
    targets = [tokenize("Paris is the capital."), tokenize("The quick brown fox jumps over")]
    losses, counts, _, _ = target_losses(tiny_compressor, prompts, targets)
    reference = tiny_compressor.decoder_forward(tiny_compressor.build(prompts, targets, append_eos=False)).loss
    torch.testing.assert_close(losses.sum() / sum(counts), reference, rtol=1e-5, atol=1e-6)

    example = QAExample(id="q", question="What is the capital?", answers=["Paris"], contexts=["Paris is in France.", "The tower."])
    qa = QAObjective()(tiny_compressor, [example])
    assert qa.num_tokens == len(qa_target_ids(tiny_compressor.tokenizer, "Paris"))
    prompt = qa_prompt(tiny_compressor.tokenizer, ["Paris is in France."], "What is the capital?")
    assert prompt[-1].endswith("Question: What is the capital?\nAnswer:")


# --------------------------------------------------------------------------- bad data
def test_bad_rows_raise_with_file_and_line_or_are_skipped(tmp_path: Path) -> None:
    good = {"context": "Paris is in France.", "question": "Where is Paris?", "answers": ["France"]}
    bad = write_jsonl(tmp_path / "bad.jsonl", [good, good, "{not json", {"context": "x", "question": "y"}])
    with pytest.raises(BadRowError, match=r"bad\.jsonl:3: invalid JSON"):
        take(QAStream(bad, on_error="raise", shuffle_buffer=10), 3)
    stream = QAStream(bad, on_error="skip", shuffle_buffer=10, cycle=False)
    assert len(take(stream, 10)) == 2
    assert [(r.line, r.reason) for r in stream.reports[0].bad_rows] == [(3, "invalid JSON (Expecting property name enclosed in double quotes)"), (4, "missing field 'answers'")]

    data = finetune_data(tmp_path, data=str(bad), on_bad_row="raise")
    trainer = finetuning_trainer(ModelArguments(), data, training_args(tmp_path, batch_size=4), compressor=tiny_compressor(seed=0))
    with pytest.raises(BadRowError, match=r"bad\.jsonl:3"):
        trainer.train()


def test_empty_training_file_is_a_clear_error(tmp_path: Path) -> None:
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"text": "   "}])
    stream = PretrainStream([empty], _tokenize(tiny_compressor(seed=0)), max_length=8, min_length=4)
    with pytest.raises(ValueError, match="no usable records"):
        next(stream)


# --------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("command", [["train", "pretrain"], ["train", "finetune"], ["train"]])
def test_train_cli_help(command: list[str]) -> None:
    from memrag.cli import app

    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    if len(command) == 2:
        for option in ("--output", "--resume", "--max-steps", "--batch-size", "--grad-accum-steps", "--learning-rate", "--init-from", "--data"):
            assert option in result.output


@pytest.fixture(scope="module")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny base model saved as a Hugging Face directory, loadable by --base-model."""
    base = tiny_base_model(seed=0)
    path = tmp_path_factory.mktemp("tiny-base")
    base.model.save_pretrained(path)
    base.tokenizer.save_pretrained(path)
    return path


def test_train_cli_pretrain_then_finetune_then_resume(tmp_path: Path, tiny_base_dir: Path) -> None:
    from memrag.cli import app

    runner = CliRunner()
    text = text_corpus(tmp_path / "text.jsonl")
    qa = qa_corpus(tmp_path / "qa.jsonl")
    common = ["--device", "cpu", "--batch-size", "2", "--no-progress", "--warmup-steps", "0"]
    pre = runner.invoke(app, [
        "train", "pretrain", "--base-model", str(tiny_base_dir), "--data", str(text), "--output", str(tmp_path / "pre"),
        "--segment-length", "16", "--lora-rank", "4", "--max-steps", "2", "--eval-every", "2",
        "--eval-examples", "2", "--eval-ae-segments", "2", "--min-segment-length", "4", "--continuation-length", "4", *common,
    ])
    assert pre.exit_code == 0, pre.output
    assert "done: 2 steps" in pre.output and "ae_bleu4" in pre.output
    fine_args = [
        "train", "finetune", "--init-from", str(tmp_path / "pre"), "--data", str(qa), "--eval-data", str(qa),
        "--output", str(tmp_path / "fine"), "--eval-examples", "2", "--eval-questions", "2", "--max-distractors", "1",
        "--save-every", "1", *common,
    ]
    fine = runner.invoke(app, [*fine_args, "--max-steps", "1"])
    assert fine.exit_code == 0, fine.output
    assert "squad_f1" in fine.output
    refused = runner.invoke(app, [*fine_args, "--max-steps", "2"])
    assert refused.exit_code == 2 and "--resume" in refused.output
    boxed = runner.invoke(app, [*fine_args, "--max-steps", "3", "--max-minutes", "1e-9", "--resume"])
    assert boxed.exit_code == 0, boxed.output
    assert "stopped at step 2 of 3" in boxed.output and "step 2: " not in boxed.output  # no eval at a time stop
    more = runner.invoke(app, [*fine_args, "--max-steps", "3", "--resume"])
    assert more.exit_code == 0, more.output
    assert "stopped at" not in more.output and "step 3: " in more.output
    summary = json.loads((tmp_path / "fine" / "summary.json").read_text())
    assert summary["step"] == 3 and summary["complete"] and summary["hardware"]
    starts = train_log(tmp_path / "fine", "start")
    assert [(r["step"], r["max_steps"]) for r in starts] == [(0, 1), (1, 3), (2, 3)]


def test_init_from_with_kv_selection_changes_how_subset_slots_are_chosen(tmp_path: Path, tiny_base_dir: Path) -> None:
    from memrag.compressor import CompressorConfig
    from memrag.models.loading import load_base_model
    from memrag.training.recipes import build_compressor

    base = load_base_model(str(tiny_base_dir))
    config = CompressorConfig(base_model=str(tiny_base_dir), segment_length=16, slot_kind="kv", kv_positions="subset", lora_rank=4)
    saved = Compressor(base, config, seed=0)
    randomize_lora(saved, seed=0)
    saved.save_pretrained(tmp_path / "stride")
    kept = build_compressor(ModelArguments(init_from=str(tmp_path / "stride")), "cpu")
    assert kept.config.kv_selection == "stride" and kept.fingerprint == saved.fingerprint
    scored = build_compressor(ModelArguments(init_from=str(tmp_path / "stride"), kv_selection="kvzip"), "cpu")
    assert scored.config.kv_selection == "kvzip" and scored.fingerprint != saved.fingerprint
    assert not torch.equal(scored.compress(["alpha beta gamma delta " * 3])[0].keys, kept.compress(["alpha beta gamma delta " * 3])[0].keys)
    embedding = Compressor(load_base_model(str(tiny_base_dir)), CompressorConfig(base_model=str(tiny_base_dir), segment_length=16, lora_rank=4), seed=0)
    embedding.save_pretrained(tmp_path / "embedding")
    with pytest.raises(ValueError, match="kv_selection"):
        build_compressor(ModelArguments(init_from=str(tmp_path / "embedding"), kv_selection="prefill"), "cpu")


def test_train_cli_reports_bad_rows_as_errors(tmp_path: Path, tiny_base_dir: Path) -> None:
    from memrag.cli import app

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine text here " * 5}, "[1, 2]"])
    result = CliRunner().invoke(app, [
        "train", "pretrain", "--base-model", str(tiny_base_dir), "--data", str(bad), "--output", str(tmp_path / "o"),
        "--segment-length", "16", "--max-steps", "1", "--holdout-fraction", "0", "--on-bad-row", "raise",
        "--device", "cpu", "--no-progress", "--batch-size", "8",
    ])
    assert result.exit_code == 2
    assert "bad.jsonl:2: expected a JSON object, got array" in result.output


@pytest.mark.slow  # two processes importing torch: ~20 s on an idle 2-core machine
def test_two_processes_under_torchrun_stay_in_sync(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    text_corpus(tmp_path / "text.jsonl")
    worker = Path(__file__).parent / "dist_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29731", str(worker), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    fingerprints = {(tmp_path / f"fingerprint.{rank}").read_text() for rank in (0, 1)}
    assert len(fingerprints) == 1  # gradients were summed: both processes hold the same weights
    state = json.loads((tmp_path / "run" / "checkpoint-0000002" / "trainer_state.json").read_text())
    assert len(state["data"]) == 2 and state["data"][0] != state["data"][1]
    assert state["examples"] == 2 * 2 * 2  # steps x batch x processes
