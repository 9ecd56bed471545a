"""Continuation examples mixed into QA fine-tuning: the interleaved stream and the objective."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_fixtures import continuation_finetune_data, make_trainer, train_log, training_args

from memrag.data.examples import PretrainExample, QAExample, holdout_start_line, take
from memrag.data.mixing import InterleavedStream
from memrag.testing import tiny_compressor
from memrag.training import FinetuneDataArguments, ModelArguments, finetuning_trainer
from memrag.training.objectives import PretrainObjective, QAObjective, QAWithContinuationObjective


class _Counter:
    """A resumable stream of ``(name, n)`` that ends after ``stop`` items (None: never)."""

    def __init__(self, name: str, stop: int | None = None) -> None:
        self.name, self.stop, self.n = name, stop, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.stop is not None and self.n >= self.stop:
            raise StopIteration
        self.n += 1
        return (self.name, self.n)

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_interleaved_stream_mixes_at_the_asked_share_and_resumes_exactly() -> None:
    stream = InterleavedStream(_Counter("qa"), _Counter("lm"), secondary_probability=0.25, seed=3)
    first = take(stream, 2000)
    share = sum(name == "lm" for name, _ in first) / len(first)
    assert 0.21 < share < 0.29
    # each source keeps its own order
    assert [n for name, n in first if name == "lm"] == list(range(1, 1 + sum(name == "lm" for name, _ in first)))

    state = stream.state_dict()
    expected = take(stream, 50)
    resumed = InterleavedStream(_Counter("qa"), _Counter("lm"), secondary_probability=0.25, seed=99)
    resumed.load_state_dict(state)
    assert take(resumed, 50) == expected


def test_interleaved_stream_goes_on_with_the_other_stream_and_ends_with_both() -> None:
    stream = InterleavedStream(_Counter("qa", stop=3), _Counter("lm", stop=2), secondary_probability=0.5, seed=0)
    items = list(stream)
    assert sorted(items) == [("lm", 1), ("lm", 2), ("qa", 1), ("qa", 2), ("qa", 3)]


@pytest.mark.parametrize("probability", [-0.1, 1.5])
def test_interleaved_stream_refuses_a_share_outside_0_1(probability: float) -> None:
    with pytest.raises(ValueError, match="secondary_probability"):
        InterleavedStream(_Counter("a"), _Counter("b"), secondary_probability=probability)


def test_interleaved_stream_refuses_a_position_saved_by_a_plain_stream() -> None:
    stream = InterleavedStream(_Counter("a"), _Counter("b"), secondary_probability=0.5)
    with pytest.raises(ValueError, match="continuation stream"):
        stream.load_state_dict({"n": 4})


def test_continuation_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="--continuation-data"):
        FinetuneDataArguments(continuation_probability=0.3)
    with pytest.raises(ValueError, match="continuation_probability"):
        FinetuneDataArguments(continuation_data=["x.jsonl"], continuation_probability=2.0)


def test_mixed_objective_is_the_weighted_sum_of_its_parts() -> None:
    compressor = tiny_compressor(seed=0)
    tokenize = lambda text: compressor.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    qa = QAExample(id="q", question="What comes after alpha?", answers=["beta gamma"],
                   contexts=["delta alpha beta gamma tower", "river bridge museum"], gold_index=0)
    lm = PretrainExample(kind="lm", segment=tokenize("Paris France capital city tower"),
                         continuation=tokenize(" river bridge museum 1889"))
    qa_objective, lm_objective = QAObjective(), PretrainObjective()
    mixed = QAWithContinuationObjective(qa_objective, lm_objective, continuation_weight=0.5)
    compressor.eval()
    with torch.no_grad():
        out = mixed(compressor, [lm, qa])
        alone_qa, alone_lm = qa_objective(compressor, [qa]), lm_objective(compressor, [lm])
    assert float(out.loss_sum) == pytest.approx(float(alone_qa.loss_sum) + 0.5 * float(alone_lm.loss_sum), rel=1e-5)
    assert out.num_tokens == alone_qa.num_tokens + alone_lm.num_tokens
    assert set(out.parts) == {"qa", "lm"} and mixed.kinds == ("qa", "lm")
    with pytest.raises(ValueError, match="kind 'lm'"):
        mixed(compressor, [PretrainExample(kind="ae", segment=lm.segment)])


def test_finetuning_with_continuation_logs_both_losses_and_never_reads_held_out_lines(tmp_path: Path) -> None:
    trainer = make_trainer("finetune+continuation", tmp_path, tiny_compressor(seed=0), max_steps=3, batch_size=4)
    trainer.train()
    logged = train_log(tmp_path / "run")
    assert any("loss_lm" in row for row in logged) and any("loss_qa" in row for row in logged)
    source = trainer.train_data.secondary.sources[0]
    data = continuation_finetune_data(tmp_path)
    assert source.records.stop_line == holdout_start_line(data.continuation_data[0], 0.1)


def test_continuation_with_distillation_logs_the_kl(tmp_path: Path) -> None:
    data = continuation_finetune_data(tmp_path, continuation_probability=1.0)
    train = training_args(tmp_path, max_steps=1, save_every=1, distill_weight=1.0)
    trainer = finetuning_trainer(ModelArguments(), data, train, compressor=tiny_compressor(seed=0))
    trainer.train()
    row = train_log(tmp_path / "run")[0]
    assert "loss_lm" in row and "loss_kl" in row and "loss_qa" not in row
