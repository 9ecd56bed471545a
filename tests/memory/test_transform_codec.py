"""The transform codec (``tc<bits>``): its model is fitted once and read back identically, its
bytes follow the budget, its error shrinks with bits, the same memory codes to the same bytes in
another process, and damaged chunks or calibrations are refused, never decoded into other
memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from memrag.memory.codec import KVDecodeError, codec_class, is_kv_dtype, kv_codec
from memrag.memory.kv import KVSlots
from memrag.memory.spec import parse_memory_mode
from memrag.memory.transform_calibration import TransformModel
from memrag.memory.transform_codec import ROW_BYTES, TransformKVCodec, transform_settings

LAYERS, HEADS, HEAD_DIM = 3, 2, 32
CHANNELS = HEADS * HEAD_DIM


def _memory(seed: int, positions: int = 40, offsets: torch.Tensor | None = None) -> KVSlots:
    """Correlated channels with unequal spreads and per-channel offsets: as decoders make them
    (the basis is the same for every seed, the positions are not)."""
    basis = torch.linalg.qr(torch.randn(CHANNELS, CHANNELS, generator=torch.Generator().manual_seed(7)))[0]
    spreads = torch.logspace(0.5, -2, CHANNELS)
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for shift in (3.0, 0.0):
        latent = torch.randn(positions, LAYERS, CHANNELS, generator=generator) * spreads
        parts.append((latent @ basis.T + shift).reshape(positions, LAYERS, HEADS, HEAD_DIM))
    if offsets is None:
        return KVSlots.consecutive(parts[0].half(), parts[1].half(), kind="kv-exact", num_tokens=positions)
    return KVSlots(parts[0].half(), parts[1].half(), offsets, span=int(offsets.max()) + 3, kind="kv-pruned")


@pytest.fixture(scope="module")
def calibration() -> list[KVSlots]:
    return [_memory(seed) for seed in range(12)]


def _codec(name: str, calibration: list[KVSlots]) -> TransformKVCodec:
    """``name`` with the spread weighting (synthetic memory has no decoder to measure)."""
    name = name[:-1] + "sz" if name.endswith("z") else name + "s"
    codec = kv_codec(LAYERS, HEADS, HEAD_DIM, name).calibrated_on(calibration)
    assert isinstance(codec, TransformKVCodec)
    return codec


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).pow(2).sum() / (b.float() - b.float().mean(0)).pow(2).sum())


def test_names_select_the_transform_codec_and_bad_figures_are_refused() -> None:
    assert is_kv_dtype("tc2") and is_kv_dtype("tc1.5k0.5") and not is_kv_dtype("tc") and not is_kv_dtype("tcx")
    assert codec_class("tc3") is TransformKVCodec
    assert transform_settings("tc1.5k0.5").key_step == 0.5 and transform_settings("int8") is None
    assert parse_memory_mode("kv-exact:tc2").kv_dtype == "tc2"
    with pytest.raises(ValueError, match="bits per element must lie in"):
        kv_codec(LAYERS, HEADS, HEAD_DIM, "tc40")
    with pytest.raises(ValueError, match="tc2.*cannot understand|cannot understand 'tcz'"):
        parse_memory_mode("kv-exact:tcz")


def test_round_trip_error_shrinks_with_bits_and_bytes_follow_the_budget(calibration) -> None:
    memory = _memory(99)
    elements = memory.keys.numel() + memory.values.numel()
    errors, bits = {}, {}
    for name in ("tc1", "tc2", "tc4"):
        codec = _codec(name, calibration)
        rows = codec.encode(memory)
        assert rows.dtype == torch.uint8 and rows.shape[1] == ROW_BYTES == codec.row_bytes
        decoded = codec.decode(rows, span=memory.span, kind=memory.kind)
        assert torch.equal(decoded.offsets, memory.offsets) and decoded.span == memory.span
        assert decoded.keys.dtype == torch.float16
        errors[name] = max(_relative_error(decoded.keys, memory.keys), _relative_error(decoded.values, memory.values))
        # The chunk's own bytes (not the padding of its last row), against the budget.
        bits[name] = 8 * (rows.numel() - ROW_BYTES) / elements
    assert errors["tc4"] < errors["tc2"] < errors["tc1"] < 0.5
    assert errors["tc4"] < 0.01
    for name, budget in (("tc1", 1), ("tc2", 2), ("tc4", 4)):
        assert 0.5 * budget < bits[name] < 1.5 * budget + 1, (name, bits[name])


def test_the_entropy_coders_decode_the_same_memory(calibration) -> None:
    """ANS and Zstandard code the same symbols: the same memory back, in different bytes."""
    memory = _memory(11)
    ans, zstd = _codec("tc2", calibration), _codec("tc2z", calibration)
    decoded = [c.decode(c.encode(memory), span=memory.span, kind=memory.kind) for c in (ans, zstd)]
    assert torch.equal(decoded[0].keys, decoded[1].keys) and torch.equal(decoded[0].values, decoded[1].values)
    assert ans.encode(memory).numpy().tobytes() != zstd.encode(memory).numpy().tobytes()


def test_pruned_memory_keeps_its_offsets(calibration) -> None:
    offsets = torch.stack([torch.arange(0, 60, 3), torch.arange(1, 61, 3), torch.arange(2, 62, 3)], dim=1)
    memory = _memory(5, positions=20, offsets=offsets)
    codec = _codec("tc3", calibration)
    decoded = codec.decode(codec.encode(memory), span=memory.span, kind=memory.kind)
    assert torch.equal(decoded.offsets, offsets) and decoded.span == memory.span


def test_the_model_reads_back_from_its_text_and_codes_identically(calibration) -> None:
    codec = _codec("tc2", calibration)
    text = codec.calibration_text()
    again = kv_codec(LAYERS, HEADS, HEAD_DIM, "tc2s", text)
    memory = _memory(3)
    assert torch.equal(again.encode(memory), codec.encode(memory))
    assert again.calibration_text() == text
    # A calibration of other settings or another shape is refused.
    with pytest.raises(ValueError, match="fitted for"):
        kv_codec(LAYERS, HEADS, HEAD_DIM, "tc3s", text)
    with pytest.raises(ValueError, match="is for 3 layers x 64 channels, the store keeps 2 x 64"):
        kv_codec(2, HEADS, HEAD_DIM, "tc2s", text)


def test_a_tampered_or_truncated_calibration_is_refused(calibration) -> None:
    text = _codec("tc2", calibration).calibration_text()
    version, digest, payload = text.split(":", 2)
    middle = len(payload) // 2
    edited = f"{version}:{digest}:{payload[:middle]}{'B' if payload[middle] == 'A' else 'A'}{payload[middle + 1:]}"
    with pytest.raises(ValueError, match="does not match its checksum"):
        TransformModel.from_text(edited)
    with pytest.raises(ValueError, match="malformed|checksum"):
        TransformModel.from_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="version"):
        TransformModel.from_text("tc9" + text[3:])


@pytest.mark.parametrize("name", ["tc2", "tc2z"])
def test_damaged_chunks_do_not_decode(calibration, name: str) -> None:
    codec = _codec(name, calibration)
    memory = _memory(4)
    rows = codec.encode(memory)
    header = len(b"TC") + 2 + 8
    damaged = {
        "magic": (0, 0x55),
        "position count": (5, 0x40),
        "stream length": (9, 0x01),
    }
    for what, (index, mask) in damaged.items():
        bad = rows.clone().reshape(-1)
        bad[index] ^= mask
        with pytest.raises(KVDecodeError, match="chunk"):
            codec.decode(bad.reshape(rows.shape), span=memory.span, kind=memory.kind)
    # A flipped byte in the middle of the entropy-coded symbols: the stream does not end where
    # it began (checked for several positions; the store's checksum also catches it first).
    payload_bytes = rows.numel() - header
    for fraction in (0.1, 0.5, 0.9):
        bad = rows.clone().reshape(-1)
        bad[header + int(fraction * payload_bytes) // 4 * 4] ^= 0x10
        with pytest.raises(KVDecodeError, match="chunk"):
            codec.decode(bad.reshape(rows.shape), span=memory.span, kind=memory.kind)
    with pytest.raises(KVDecodeError, match="do not fit"):
        codec.decode(rows[:1], span=memory.span, kind=memory.kind)
    with pytest.raises(KVDecodeError, match="expected uint8"):
        codec.decode(rows[:, :10], span=memory.span, kind=memory.kind)


def test_the_same_memory_codes_to_the_same_bytes_in_another_process(calibration, tmp_path) -> None:
    """A store's recorded model codes the same memory to the same bytes in another process
    (with another thread count); fitting twice on the same memory records the same model."""
    codec = _codec("tc2", calibration)
    assert _codec("tc2", calibration).calibration_text() == codec.calibration_text()
    (tmp_path / "calibration.txt").write_text(codec.calibration_text())
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(tmp_path)!r})
        torch.set_num_threads(2)
        from test_helper import memory
        from memrag.memory.codec import kv_codec
        recorded = open({str(tmp_path / "calibration.txt")!r}).read()
        codec = kv_codec({LAYERS}, {HEADS}, {HEAD_DIM}, "tc2s", recorded)
        sys.stdout.write(codec.encode(memory(8)).numpy().tobytes().hex())
        """
    )
    helper = textwrap.dedent(
        f"""
        import torch
        from memrag.memory.kv import KVSlots
        LAYERS, HEADS, HEAD_DIM, CHANNELS = {LAYERS}, {HEADS}, {HEAD_DIM}, {CHANNELS}
        """
    ) + "\n".join(
        line for line in _source_of_memory().splitlines()
    ) + "\n"
    (tmp_path / "test_helper.py").write_text(helper)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == codec.encode(_memory(8)).numpy().tobytes().hex()


def _source_of_memory() -> str:
    import inspect

    return inspect.getsource(_memory).replace("def _memory(", "def memory(")


def test_sensitivity_weighs_keys_by_query_energy_and_values_by_the_output(tiny_compressor) -> None:
    """Key weights are the decoder's own query energy (symmetric, positive semi-definite, zero
    across K/V heads); value weights make each layer's mean value output energy one."""
    from memrag.memory.anatomy import decoder_anatomy
    from memrag.memory.builders import build_memory
    from memrag.memory.sensitivity import measure_sensitivity

    texts = ["Paris is the capital of France.", "The tower was completed in 1889 for the fair."]
    memories = build_memory(tiny_compressor, parse_memory_mode("kv-exact:float16"), texts)
    ids = [tiny_compressor.tokenizer(t, return_tensors="pt")["input_ids"] for t in texts]
    with tiny_compressor.decoder_mode() as decoder:
        sensitivity = measure_sensitivity(decoder, ids, memories)
        anatomy = decoder_anatomy(decoder)
    width = anatomy.head_dim
    for layer in range(anatomy.num_layers):
        keys = sensitivity.keys[layer]
        assert torch.allclose(keys, keys.T, atol=1e-10)
        assert float(torch.linalg.eigvalsh(keys).min()) > -1e-9 and float(keys.diagonal().min()) > 0
        if anatomy.num_kv_heads > 1:
            assert float(keys[:width, width:].abs().max()) == 0.0
        values = torch.cat([m.values.double().reshape(m.num_slots, anatomy.num_layers, -1)[:, layer] for m in memories])
        energy = torch.einsum("nc,cd,nd->n", values, sensitivity.values[layer], values).mean()
        assert float(energy) == pytest.approx(1.0, rel=1e-6)
