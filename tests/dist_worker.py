"""Run by ``torchrun`` in test_training.py: two CPU processes (gloo) train a tiny compressor."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from memrag.testing import tiny_compressor  # noqa: E402
from memrag.training import (  # noqa: E402
    ModelArguments,
    PretrainDataArguments,
    TrainingArguments,
    pretraining_trainer,
)


def main() -> None:
    root = Path(sys.argv[1])
    torch.set_num_threads(1)
    args = TrainingArguments(
        output_dir=str(root / "run"), max_steps=2, batch_size=2, save_every=2, eval_every=0, warmup_steps=0,
        device="cpu", progress=False, learning_rate=1e-2,
    )
    data = PretrainDataArguments(
        data=[str(root / "text.jsonl")], holdout_fraction=0.0, min_segment_length=4, continuation_length=4,
        open_records=2, eval_examples=0, eval_ae_segments=0,
    )
    trainer = pretraining_trainer(ModelArguments(), data, args, compressor=tiny_compressor(seed=0))
    trainer.train()
    rank = os.environ["RANK"]
    (root / f"fingerprint.{rank}").write_text(trainer.compressor.fingerprint)


if __name__ == "__main__":
    main()
