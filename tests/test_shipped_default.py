"""The trained default compressor shipped inside the package (gemma-3-270m, embedding slots).

The file checks are fast; loading it onto the real base model is marked ``slow``.
"""

from __future__ import annotations

import json

import pytest
import torch

from memrag.compressor.config import CONFIG_NAME, SAVED_FILES
from memrag.compressor.shipped import DEFAULT_COMPRESSOR, resolve_compressor_path, shipped_compressors, source_name

MAX_SHIPPED_BYTES = 20 * 1024 * 1024


def test_the_default_is_shipped_small_and_documented() -> None:
    assert DEFAULT_COMPRESSOR in shipped_compressors()
    directory = resolve_compressor_path(None)
    files = {p.name for p in directory.iterdir() if p.is_file()}
    assert set(SAVED_FILES) <= files and "README.md" in files, "weights and model card"
    weights = sum((directory / name).stat().st_size for name in SAVED_FILES)
    assert weights <= MAX_SHIPPED_BYTES
    config = json.loads((directory / CONFIG_NAME).read_text())
    assert config["base_model"] == "gemma-3-270m" and config["slot_kind"] == "embedding"
    assert config["compression_rate"] == 4 and config["fingerprint"]
    assert config["fingerprint"] in (directory / "README.md").read_text(), "the card names the weights it describes"
    adapter = json.loads((directory / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "gemma-3-270m", "no local path in a shipped file"


def test_a_shipped_compressor_is_recorded_by_name_not_location(tmp_path) -> None:
    assert source_name(resolve_compressor_path(None)) == DEFAULT_COMPRESSOR
    assert source_name(resolve_compressor_path(DEFAULT_COMPRESSOR)) == DEFAULT_COMPRESSOR
    assert source_name(tmp_path / "my-compressor") == str(tmp_path / "my-compressor")


@pytest.mark.slow
def test_the_default_answers_from_slots_better_than_an_untrained_compressor() -> None:
    """Teacher-forced answer loss on held-out demo questions (SQuAD dev), from the gold passage's slots."""
    from memrag.compressor import Compressor, CompressorConfig
    from memrag.demo_corpus import load_demo_corpus
    from memrag.models.loading import load_base_model
    from memrag.training.data import QAExample
    from memrag.training.objectives import QAObjective

    trained = Compressor.from_pretrained(dtype="bfloat16")  # verifies the stored fingerprint
    assert trained.config.base_model == "gemma-3-270m" and trained.source == DEFAULT_COMPRESSOR
    examples = [
        QAExample(id=q.id, question=q.question, answers=q.answers, contexts=[p.text])
        for p in load_demo_corpus()[:6]
        for q in p.questions[:1]
    ]

    def mean_loss(compressor: Compressor) -> float:
        with torch.no_grad():
            out = QAObjective()(compressor, examples)
        return float(out.loss_sum) / out.num_tokens

    trained_loss = mean_loss(trained)
    same_shape = CompressorConfig(
        base_model="gemma-3-270m", segment_length=trained.config.segment_length, lora_rank=trained.config.lora_rank
    )
    untrained = Compressor.from_base(load_base_model("gemma-3-270m", dtype="bfloat16"), same_shape, seed=0)
    untrained_loss = mean_loss(untrained)
    assert trained_loss < untrained_loss - 0.5, (trained_loss, untrained_loss)
