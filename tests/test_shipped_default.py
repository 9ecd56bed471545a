"""The trained compressors shipped inside the package (gemma-3-270m): the default, with subset
K/V slots, and the default of ``embedding`` memory, with embedding slots (ICAE).

The file checks are fast; loading them onto the real base model is marked ``slow``.
"""

from __future__ import annotations

import json

import pytest
import torch

from memrag.compressor.config import CONFIG_NAME, SAVED_FILES
from memrag.compressor.shipped import (
    DEFAULT_COMPRESSOR,
    DEFAULT_EMBEDDING_COMPRESSOR,
    default_compressor,
    resolve_compressor_path,
    shipped_compressors,
    source_name,
)
from memrag.memory.kinds import MemoryKind

MAX_SHIPPED_BYTES = 20 * 1024 * 1024

#: name -> (slot kind, kv positions, compression rate) of each shipped compressor.
SHIPPED = {
    DEFAULT_COMPRESSOR: ("kv", "subset", 4),
    DEFAULT_EMBEDDING_COMPRESSOR: ("embedding", "memory", 4),
    "gemma-3-270m-kv-rate4-k5": ("kv", "subset", 4),
    "gemma-3-270m-kv-rate8": ("kv", "subset", 8),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_shipped_compressor_is_small_documented_and_has_its_training_record(name: str) -> None:
    assert name in shipped_compressors()
    directory = resolve_compressor_path(name)
    files = {p.name for p in directory.iterdir() if p.is_file()}
    assert set(SAVED_FILES) <= files and "README.md" in files, "weights and model card"
    weights = sum((directory / saved).stat().st_size for saved in SAVED_FILES)
    assert weights <= MAX_SHIPPED_BYTES
    config = json.loads((directory / CONFIG_NAME).read_text())
    slot_kind, kv_positions, rate = SHIPPED[name]
    assert config["base_model"] == "gemma-3-270m" and config["slot_kind"] == slot_kind
    assert config.get("kv_positions", "memory") == kv_positions
    assert config["compression_rate"] == rate and config["fingerprint"]
    assert f"rate{rate}" in name or name in (DEFAULT_COMPRESSOR, DEFAULT_EMBEDDING_COMPRESSOR), "names say the rate"
    card = (directory / "README.md").read_text()
    assert config["fingerprint"] in card, "the card names the weights it describes"
    adapter = json.loads((directory / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "gemma-3-270m", "no local path in a shipped file"
    runs = [p for p in (directory / "training").iterdir() if p.is_dir()]
    assert runs, "the training runs' records"
    for run in runs:
        assert {"summary.json", "log.jsonl", "curves.png"} <= {p.name for p in run.iterdir()}, run


def test_the_default_compressor_depends_on_the_memory_it_makes() -> None:
    assert resolve_compressor_path(None) == resolve_compressor_path(DEFAULT_COMPRESSOR)
    assert default_compressor() == DEFAULT_COMPRESSOR
    assert default_compressor("embedding") == default_compressor(MemoryKind.EMBEDDING) == DEFAULT_EMBEDDING_COMPRESSOR
    for kind in ("kv", "kv-exact", "kv-pruned", MemoryKind.KV):
        assert default_compressor(kind) == DEFAULT_COMPRESSOR


def test_a_shipped_compressor_is_recorded_by_name_not_location(tmp_path) -> None:
    assert source_name(resolve_compressor_path(None)) == DEFAULT_COMPRESSOR
    assert source_name(resolve_compressor_path(DEFAULT_EMBEDDING_COMPRESSOR)) == DEFAULT_EMBEDDING_COMPRESSOR
    assert source_name(tmp_path / "my-compressor") == str(tmp_path / "my-compressor")


def _demo_examples(count: int = 6) -> list:
    from memrag.data.examples import QAExample
    from memrag.demo_corpus import load_demo_corpus

    return [
        QAExample(id=q.id, question=q.question, answers=q.answers, contexts=[p.text])
        for p in load_demo_corpus()[:count]
        for q in p.questions[:1]
    ]


def _mean_answer_loss(compressor, examples) -> float:
    from memrag.training.objectives import QAObjective

    with torch.no_grad():
        out = QAObjective()(compressor, examples)
    return float(out.loss_sum) / out.num_tokens


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_shipped_compressor_answers_from_slots_better_than_untrained(name: str) -> None:
    """Teacher-forced answer loss on held-out demo questions (SQuAD dev), from the gold
    passage's slots, against an untrained compressor of the same shape over the same base
    model (for subset K/V slots: the frozen decoder's own keys and values)."""
    from memrag.compressor import Compressor
    from memrag.models.loading import load_base_model

    trained = Compressor.from_pretrained(name, dtype="float32")  # verifies the stored fingerprint
    assert trained.config.base_model == "gemma-3-270m" and trained.source == name
    examples = _demo_examples()
    trained_loss = _mean_answer_loss(trained, examples)
    # A base model of its own: the adapter is injected into the model it is given.
    untrained = Compressor.from_base(load_base_model("gemma-3-270m", dtype="float32"), trained.config, seed=0)
    untrained_loss = _mean_answer_loss(untrained, examples)
    # Untrained subset slots already answer (they are the decoder's own K/V); embedding slots
    # of an untrained encoder carry nothing.
    margin = 0.1 if trained.config.slot_kind == "kv" else 0.5
    assert trained_loss < untrained_loss - margin, (trained_loss, untrained_loss)
