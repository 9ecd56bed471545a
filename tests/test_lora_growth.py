"""Growing a trained compressor's LoRA adapter (``--lora-rank`` with ``--init-from``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memrag.compressor import Compressor
from memrag.compressor.lora_growth import grow_lora_rank
from memrag.testing import tiny_base_model, tiny_compressor
from memrag.training.arguments import ModelArguments
from memrag.training.recipes import build_compressor

TEXT = "Paris is the capital and most populous city of France, on the Seine."


def _saved_kv_compressor(tmp_path: Path) -> Path:
    base_dir = tmp_path / "base"
    base = tiny_base_model(seed=3, name=str(base_dir))
    base.model.save_pretrained(base_dir)
    base.tokenizer.save_pretrained(base_dir)
    tiny_compressor(seed=3, base=base, slot_kind="kv", kv_positions="subset").save_pretrained(tmp_path / "r4")
    return tmp_path / "r4"


@pytest.mark.parametrize("alpha", [None, 4])
def test_a_grown_adapter_computes_what_the_trained_one_did(alpha: int | None) -> None:
    trained = tiny_compressor(seed=2, slot_kind="kv", kv_positions="subset")  # LoRA r=4, alpha 8
    grown = grow_lora_rank(trained, tiny_base_model(seed=2), 12, alpha=alpha)
    assert grown.config.lora_rank == 12
    assert grown.config.lora_alpha == (24 if alpha is None else alpha)
    assert grown.fingerprint != trained.fingerprint
    (before,), (after,) = trained.compress([TEXT]), grown.compress([TEXT])
    torch.testing.assert_close(after.keys, before.keys, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after.values, before.values, rtol=1e-5, atol=1e-5)
    # The new directions can learn: their A rows are not zero (B starts at zero).
    a = next(p for n, p in grown.peft_model.named_parameters() if "lora_A" in n)
    assert a.shape[0] == 12 and a[4:].abs().sum() > 0


def test_an_adapter_cannot_shrink() -> None:
    trained = tiny_compressor(seed=2)
    with pytest.raises(ValueError, match="rank 2 is below the compressor's 4"):
        grow_lora_rank(trained, tiny_base_model(seed=2), 2)


def test_init_from_with_a_larger_rank_grows_saves_and_loads(tmp_path: Path) -> None:
    source = _saved_kv_compressor(tmp_path)
    trained = Compressor.from_pretrained(source)
    grown = build_compressor(ModelArguments(init_from=str(source), lora_rank=8, compression_rate=8), "cpu")
    assert (grown.config.lora_rank, grown.config.lora_alpha, grown.config.compression_rate) == (8, 16, 8)
    grown.save_pretrained(tmp_path / "r8")
    loaded = Compressor.from_pretrained(tmp_path / "r8")
    assert loaded.fingerprint == grown.fingerprint and loaded.config.lora_rank == 8
    trained.set_compression_rate(8)
    torch.testing.assert_close(loaded.compress([TEXT])[0].keys, trained.compress([TEXT])[0].keys, rtol=1e-5, atol=1e-5)
    same = build_compressor(ModelArguments(init_from=str(source), lora_rank=4), "cpu")
    assert same.fingerprint == Compressor.from_pretrained(source).fingerprint


def test_init_from_refuses_a_smaller_rank_or_a_lone_alpha(tmp_path: Path) -> None:
    source = _saved_kv_compressor(tmp_path)
    with pytest.raises(ValueError, match="--lora-rank 2 .*can only grow"):
        build_compressor(ModelArguments(init_from=str(source), lora_rank=2), "cpu")
    with pytest.raises(ValueError, match="--lora-alpha 64 .*only with a larger --lora-rank"):
        build_compressor(ModelArguments(init_from=str(source), lora_alpha=64), "cpu")
