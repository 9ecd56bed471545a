"""Small JSONL corpora and saved tiny models for the training and evaluation tests."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from memrag.training import (
    FinetuneDataArguments,
    ModelArguments,
    PretrainDataArguments,
    TrainingArguments,
    finetuning_trainer,
    pretraining_trainer,
)

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa Paris France capital city "
    "tower river bridge museum 1889 completed built famous old new"
).split()


def write_jsonl(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    """Writes rows (dicts as JSON, strings verbatim) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def text_corpus(path: Path, *, documents: int = 30, seed: int = 0) -> Path:
    """Documents of 20..160 random words, ``{"id", "text"}``."""
    rng = random.Random(seed)
    rows = [
        {"id": str(i), "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 160)))}
        for i in range(documents)
    ]
    return write_jsonl(path, rows)


def qa_corpus(path: Path, *, paragraphs: int = 8, questions: int = 3, seed: int = 0) -> Path:
    """SQuAD-style rows: several questions per paragraph, answers taken from the paragraph."""
    rng = random.Random(seed)
    rows = []
    for p in range(paragraphs):
        words = [rng.choice(WORDS) for _ in range(rng.randint(15, 40))]
        context = " ".join(words)
        for q in range(questions):
            start = rng.randrange(len(words) - 2)
            rows.append(
                {
                    "id": f"p{p}_q{q}",
                    "title": f"T{p // 3}",
                    "context": context,
                    "question": f"What comes after {words[start]}?",
                    "answers": [" ".join(words[start + 1 : start + 3])],
                }
            )
    return write_jsonl(path, rows)


def training_args(tmp_path: Path, **overrides: Any) -> TrainingArguments:
    """Two quick CPU steps writing to ``tmp_path/run`` (``overrides`` change any field)."""
    values: dict[str, Any] = dict(
        output_dir=str(tmp_path / "run"), max_steps=2, batch_size=3, save_every=2, eval_every=0,
        warmup_steps=1, log_every=1, device="cpu", progress=False, learning_rate=1e-2,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def pretrain_data(tmp_path: Path, **overrides: Any) -> PretrainDataArguments:
    """Pretraining data over a random text corpus written to ``tmp_path/text.jsonl`` once."""
    corpus = tmp_path / "text.jsonl"
    if not corpus.exists():
        text_corpus(corpus)
    values: dict[str, Any] = dict(
        data=[str(corpus)], holdout_fraction=0.1, min_segment_length=4, continuation_length=6,
        open_records=3, eval_examples=0, eval_ae_segments=0,
    )
    values.update(overrides)
    return PretrainDataArguments(**values)


def finetune_data(tmp_path: Path, **overrides: Any) -> FinetuneDataArguments:
    """Fine-tuning data over a SQuAD-style corpus written to ``tmp_path/qa.jsonl`` once."""
    corpus = tmp_path / "qa.jsonl"
    if not corpus.exists():
        qa_corpus(corpus)
    values: dict[str, Any] = dict(data=str(corpus), eval_data=None, max_distractors=2, shuffle_buffer=6)
    values.update(overrides)
    return FinetuneDataArguments(**values)


def continuation_finetune_data(tmp_path: Path, **overrides: Any) -> FinetuneDataArguments:
    """Fine-tuning data with continuation examples from ``tmp_path/text.jsonl`` mixed in."""
    corpus = tmp_path / "text.jsonl"
    if not corpus.exists():
        text_corpus(corpus)
    values: dict[str, Any] = dict(
        continuation_data=[str(corpus)], continuation_probability=0.5, continuation_length=6,
        continuation_holdout_fraction=0.1,
    )
    values.update(overrides)
    return finetune_data(tmp_path, **values)


def make_trainer(kind: str, tmp_path: Path, compressor: Any, **overrides: Any) -> Any:
    """A ``pretrain``, ``finetune`` or ``finetune+continuation`` trainer of ``compressor``
    (``overrides``: training args)."""
    train = training_args(tmp_path, **overrides)
    if kind == "pretrain":
        return pretraining_trainer(ModelArguments(), pretrain_data(tmp_path), train, compressor=compressor)
    if kind == "finetune+continuation":
        data = continuation_finetune_data(tmp_path)
        return finetuning_trainer(ModelArguments(), data, train, compressor=compressor)
    return finetuning_trainer(ModelArguments(), finetune_data(tmp_path), train, compressor=compressor)


def train_log(run: Path, event: str = "train") -> list[dict]:
    """The ``event`` lines of a run's ``log.jsonl``."""
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]
