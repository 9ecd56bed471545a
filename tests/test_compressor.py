"""The compressor core on tiny random models: slots, save/load, base-model checks."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from memrag.compressor import Compressor, CompressorConfig, CompressorMismatchError
from memrag.compressor.config import SAVED_FILES
from memrag.testing import randomize_lora, tiny_base_model, tiny_compressor


def _long_text(compressor: Compressor, tokens: int) -> str:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    text = " ".join(words[i % len(words)] for i in range(tokens))
    assert len(compressor.tokenizer(text, add_special_tokens=False)["input_ids"]) >= tokens
    return text


def test_slot_counts_follow_segments_and_rate(tiny_compressor: Compressor) -> None:
    config = tiny_compressor.config
    texts = ["Paris is the capital of France.", _long_text(tiny_compressor, 50)]
    slots = tiny_compressor.compress(texts)
    for text, memory in zip(texts, slots):
        ids = tiny_compressor.tokenizer(text, add_special_tokens=False)["input_ids"]
        lengths = [min(config.segment_length, len(ids) - i) for i in range(0, len(ids), config.segment_length)]
        expected = [math.ceil(n / config.compression_rate) for n in lengths]
        assert memory.segment_slot_counts == expected
        assert memory.tensor.shape == (sum(expected), tiny_compressor.hidden_size)
        assert memory.num_tokens == len(ids)
        assert memory.fingerprint == tiny_compressor.fingerprint
    assert len(slots[1].segment_slot_counts) > 1


def test_text_many_segments_long(tiny_compressor: Compressor) -> None:
    text = _long_text(tiny_compressor, 40 * tiny_compressor.config.segment_length)
    (memory,) = tiny_compressor.compress(text, batch_size=7)
    assert len(memory.segment_slot_counts) >= 40
    assert memory.num_slots == sum(memory.segment_slot_counts)
    assert torch.isfinite(memory.tensor).all()


@pytest.mark.parametrize("bad", ["", "   \n\t "])
def test_empty_text_is_a_clear_error(tiny_compressor: Compressor, bad: str) -> None:
    with pytest.raises(ValueError, match=r"empty or whitespace-only text \(indices \[1\]\)"):
        tiny_compressor.compress(["fine text", bad])


def test_batching_does_not_change_slots(tiny_compressor: Compressor) -> None:
    texts = ["short one.", _long_text(tiny_compressor, 37), "The Eiffel Tower was completed in 1889."]
    together = tiny_compressor.compress(texts, batch_size=16)
    alone = [tiny_compressor.compress([t], batch_size=1)[0] for t in texts]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a.tensor, b.tensor, rtol=1e-4, atol=1e-5)


def test_adapter_changes_encoder_but_not_decoder(tiny_compressor: Compressor) -> None:
    ids = torch.tensor([[2, 10, 11, 12, 13]])
    with tiny_compressor.decoder_mode() as decoder:
        plain = decoder(input_ids=ids).logits
    adapted = tiny_compressor.causal_lm(input_ids=ids).logits
    assert not torch.allclose(plain, adapted), "random LoRA must change the encoder's output"


def test_decoder_mode_nests_and_restores_the_adapter(tiny_compressor: Compressor) -> None:
    ids = torch.tensor([[5, 6, 7, 8]])
    adapted = tiny_compressor.causal_lm(input_ids=ids).logits
    with tiny_compressor.decoder_mode() as outer:
        plain = outer(input_ids=ids).logits
        with tiny_compressor.decoder_mode() as inner:
            assert torch.equal(inner(input_ids=ids).logits, plain)
        # the inner exit must not re-enable the adapter while the outer mode is active
        assert torch.equal(outer(input_ids=ids).logits, plain)
    assert not torch.allclose(plain, adapted)
    assert torch.equal(tiny_compressor.causal_lm(input_ids=ids).logits, adapted)


def test_decoder_logits_equal_plain_base_model() -> None:
    base = tiny_base_model(seed=3)
    reference = copy.deepcopy(base.model)
    compressor = tiny_compressor(seed=3, base=base)
    ids = torch.tensor([[2, 40, 41, 42, 43, 44, 45]])
    with compressor.decoder_mode() as decoder:
        got = decoder(input_ids=ids).logits
    want = reference(input_ids=ids).logits
    assert torch.equal(got, want)


def test_save_load_roundtrip_is_bit_identical(tmp_path) -> None:
    base = tiny_base_model(seed=1)
    reference_state = copy.deepcopy(base.model.state_dict())
    compressor = tiny_compressor(seed=1, base=base)
    texts = ["Paris is the capital of France.", "The quick brown fox jumps over the lazy dog." * 3]
    before = compressor.compress(texts)
    target = compressor.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in target.iterdir()) == sorted(SAVED_FILES)
    total = sum(p.stat().st_size for p in target.iterdir())
    base_bytes = sum(t.numel() * t.element_size() for t in reference_state.values())
    assert total < base_bytes / 2, "the base model's weights must not be saved"
    adapter_config = json.loads((target / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == compressor.config.base_model

    fresh = tiny_base_model(seed=1)
    fresh.model.load_state_dict(reference_state)
    loaded = Compressor.from_pretrained(target, base=fresh)
    assert loaded.fingerprint == compressor.fingerprint
    after = loaded.compress(texts)
    for a, b in zip(before, after):
        assert torch.equal(a.tensor, b.tensor)
        assert b.fingerprint == a.fingerprint


def test_fingerprint_changes_with_weights(tiny_compressor: Compressor) -> None:
    first = tiny_compressor.fingerprint
    randomize_lora(tiny_compressor, seed=99)
    assert tiny_compressor.fingerprint != first


def test_load_weights_replaces_the_learned_weights_in_place(tmp_path) -> None:
    trained = tiny_compressor(seed=3, base=tiny_base_model(seed=0))
    randomize_lora(trained, seed=5)
    target = trained.save_pretrained(tmp_path / "saved")
    fresh = tiny_compressor(seed=4, base=tiny_base_model(seed=0))
    assert fresh.fingerprint != trained.fingerprint
    fresh.load_weights(target, expected_fingerprint=trained.fingerprint)
    assert fresh.fingerprint == trained.fingerprint
    text = ["Paris is the capital of France."]
    assert torch.equal(fresh.compress(text)[0].tensor, trained.compress(text)[0].tensor)
    with pytest.raises(CompressorMismatchError, match="stored fingerprint"):
        fresh.load_weights(target, expected_fingerprint="0" * 24)


def test_loading_against_wrong_base_model_fails(tmp_path, tiny_compressor: Compressor) -> None:
    target = tiny_compressor.save_pretrained(tmp_path / "saved")
    other = tiny_base_model(seed=7)
    with pytest.raises(CompressorMismatchError, match="was trained for base model"):
        Compressor.from_pretrained(target, base=other)
    wider = tiny_base_model(seed=0, hidden_size=48)
    with pytest.raises(CompressorMismatchError, match="hidden_size=48"):
        Compressor.from_pretrained(target, base=wider)


def test_corrupt_weights_are_detected(tmp_path, tiny_compressor: Compressor) -> None:
    from safetensors.torch import load_file, save_file

    target = tiny_compressor.save_pretrained(tmp_path / "saved")
    path = target / "memory_embeddings.safetensors"
    tensors = load_file(str(path))
    tensors["memory_embeddings"] = tensors["memory_embeddings"] + 1.0
    save_file(tensors, str(path))
    base = tiny_base_model(seed=0)
    with pytest.raises(CompressorMismatchError, match="fingerprint"):
        Compressor.from_pretrained(target, base=base)


def test_wrong_shapes_are_refused(tmp_path, tiny_compressor: Compressor) -> None:
    from safetensors.torch import load_file, save_file

    target = tiny_compressor.save_pretrained(tmp_path / "saved")
    path = target / "memory_embeddings.safetensors"
    tensors = load_file(str(path))
    tensors["memory_embeddings"] = tensors["memory_embeddings"][:-1]
    save_file(tensors, str(path))
    with pytest.raises(CompressorMismatchError, match="has shape"):
        Compressor.from_pretrained(target, base=tiny_base_model(seed=0))


def test_missing_file_is_named(tmp_path, tiny_compressor: Compressor) -> None:
    target = tiny_compressor.save_pretrained(tmp_path / "saved")
    (target / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        Compressor.from_pretrained(target, base=tiny_base_model(seed=0))


def test_save_in_bfloat16_halves_the_size(tmp_path, tiny_compressor: Compressor) -> None:
    full = tiny_compressor.save_pretrained(tmp_path / "fp32")
    half = tiny_compressor.save_pretrained(tmp_path / "bf16", dtype="bfloat16")
    size = lambda d: (d / "adapter_model.safetensors").stat().st_size  # noqa: E731
    assert size(half) < 0.6 * size(full)
    loaded = Compressor.from_pretrained(half, base=tiny_base_model(seed=0))
    assert loaded.fingerprint != tiny_compressor.fingerprint


def test_any_decoder_only_model_works() -> None:
    compressor = tiny_compressor(architecture="llama", seed=2)
    (memory,) = compressor.compress("Question: What is the capital of France?")
    assert memory.tensor.shape[-1] == compressor.hidden_size


def test_config_validation_and_newer_format() -> None:
    with pytest.raises(ValueError, match="slot_kind"):
        CompressorConfig(slot_kind="nope")  # type: ignore[arg-type]
    data = CompressorConfig().to_dict()
    data["format_version"] = 999
    with pytest.raises(ValueError, match="newer than this memrag supports"):
        CompressorConfig.from_dict(data)


def test_unknown_compressor_name_is_clear() -> None:
    with pytest.raises(FileNotFoundError, match="no compressor at 'does-not-exist'"):
        Compressor.from_pretrained("does-not-exist", base=tiny_base_model())


def test_a_base_model_serves_one_compressor() -> None:
    base = tiny_base_model(seed=4)
    Compressor(base, CompressorConfig(base_model=base.name, segment_length=16, lora_rank=2))
    with pytest.raises(ValueError, match="already carries a compressor's adapter"):
        Compressor(base, CompressorConfig(base_model=base.name, segment_length=16, lora_rank=2))


def test_same_seed_gives_the_same_fresh_compressor() -> None:
    first = Compressor(tiny_base_model(seed=0), CompressorConfig(segment_length=16, lora_rank=2), seed=11)
    torch.manual_seed(12345)  # the global RNG state must not matter
    second = Compressor(tiny_base_model(seed=0), CompressorConfig(segment_length=16, lora_rank=2), seed=11)
    assert first.fingerprint == second.fingerprint


def test_the_compressor_has_what_its_protocols_promise() -> None:
    """DecodingModel / MemoryMaker state what the rest of memrag calls on a compressor."""
    import inspect

    from memrag.compressor import Compressor
    from memrag.protocols import DecodingModel, MemoryMaker

    for protocol in (DecodingModel, MemoryMaker):
        for name, wanted in vars(protocol).items():
            if name.startswith("_"):
                continue
            assert hasattr(Compressor, name), f"Compressor lacks {protocol.__name__}.{name}"
            if inspect.isfunction(wanted):
                promised = set(inspect.signature(wanted).parameters)
                assert promised <= set(inspect.signature(getattr(Compressor, name)).parameters), name
