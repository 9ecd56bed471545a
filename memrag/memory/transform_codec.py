"""Transform coding of K/V memory (``tc<bits>``, e.g. ``tc2``): a per-store decorrelating
transform, a step per component and entropy coding under one frequency model per store
(KVTC, arXiv 2511.01815; the model is :mod:`memrag.memory.transform_calibration`).

A chunk is coded as a variable number of bytes, laid into whole store rows of
:data:`ROW_BYTES` (the last one zero-padded), so the shard machinery (row ranges, checksums,
compaction) is the one every codec uses:

* a 12-byte header: ``b"TC"``, the layout version, flags (bit 0: per-layer offsets follow),
  the position count (uint32) and the coded symbols' length in bytes (uint32);
* the offsets as int16 (``positions x layers``), unless every layer keeps consecutive
  positions ``0 .. n-1`` (exact memory), which is written as a flag only;
* the symbols of every stored component, one class of components after another, entropy-coded
  (:mod:`memrag.memory.entropy`: one ANS stream under the store's frequency model, or one
  Zstandard frame).

Decoding refuses a chunk whose header, lengths or ANS stream do not add up (an ANS stream
decoded with the wrong bytes does not end exactly where it began), naming the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from memrag.memory.codec import KVCodec, KVDecodeError, checked_slots, register_codec
from memrag.memory.kv import KVSlots, consecutive_offsets
from memrag.memory.sensitivity import AttentionSensitivity
from memrag.memory.transform_calibration import (
    TransformModel,
    TransformSettings,
    coefficients,
    fit_transform_model,
    quantize,
    stacked_parts,
    transform_model_from_text,
)

#: Width of a stored row: a coded chunk takes ``ceil(bytes / ROW_BYTES)`` rows.
ROW_BYTES = 256
_MAGIC = b"TC"
_LAYOUT = 1
_HEADER = 12
_OFFSETS_FLAG = 1
_INT16_MAX = 32767
_NAME = re.compile(r"^tc(\d+(?:\.\d+)?)(?:k(\d+(?:\.\d+)?))?(s?)(z?)$")


def transform_settings(name: str) -> TransformSettings | None:
    """The settings a ``tc<bits>[k<key_step>][s][z]`` storage name asks for (``None`` for
    other names): ``tc2`` is 2 bits per element, steps weighted by what an error moves in the
    decoder (:mod:`memrag.memory.sensitivity`), keys' steps twice the values' (in their
    units); ``tc2k1`` the same budget with keys' steps as large as the values'; ``s`` one step
    per layer, a share of its spread,
    instead; a final ``z`` codes the symbols with Zstandard instead of ANS
    (:mod:`memrag.memory.entropy`: more bytes, faster reads).

    Raises:
        ValueError: a transform codec name whose figures are out of range.
    """
    match = _NAME.match(name)
    if not match:
        return None
    key_step = float(match.group(2)) if match.group(2) else TransformSettings().key_step
    return TransformSettings(
        bits=float(match.group(1)),
        key_step=key_step,
        weighting="spread" if match.group(3) else "attention",
        entropy="zstd" if match.group(4) else "ans",
    )


@register_codec(matcher=lambda name: _NAME.match(name) is not None, examples=("tc2", "tc1.5k0.5", "tc2z"))
@dataclass(frozen=True)
class TransformKVCodec(KVCodec):
    """Codes :class:`KVSlots` of one model shape with a store's :class:`TransformModel`.

    Args:
        layers: Decoder layers.
        kv_heads: Key/value heads per layer.
        head_dim: Width of a head.
        dtype: ``tc<bits>[k<key_step>]``: the mean bits per element the model is fitted for
            (and the keys' step relative to the values', and the entropy coder; see
            :func:`transform_settings`).
        calibration: The store's fitted model (required to code; see :meth:`calibrated_on`).
    """

    layers: int
    kv_heads: int
    head_dim: int
    dtype: str = "tc2"
    calibration: TransformModel | None = field(default=None, compare=False, repr=False)

    needs_calibration: ClassVar[bool] = True
    calibration_passages: ClassVar[str] = "transform_passages.jsonl"

    def __post_init__(self) -> None:
        settings = transform_settings(self.dtype)
        if settings is None:
            raise ValueError(f"a transform codec's name is tc<bits> (e.g. tc2), got {self.dtype!r}")
        model = self.calibration
        if model is not None:
            channels = self.kv_heads * self.head_dim
            if (model.layers, model.channels) != (self.layers, channels):
                raise ValueError(
                    f"transform codec calibration is for {model.layers} layers x {model.channels} "
                    f"channels, the store keeps {self.layers} x {channels}"
                )
            if model.settings != settings:
                raise ValueError(
                    f"transform codec calibration was fitted for {model.settings}, the store's "
                    f"memory is {self.dtype}"
                )

    @property
    def row_bytes(self) -> int:
        """Width of a stored row in bytes."""
        return ROW_BYTES

    def calibration_text(self) -> str:
        """The fitted model's manifest form (empty when not calibrated)."""
        return self.calibration.to_text() if self.calibration is not None else ""

    def with_calibration_text(self, text: str) -> TransformKVCodec:
        """This codec with a store's recorded model (checked)."""
        return TransformKVCodec(
            self.layers, self.kv_heads, self.head_dim, self.dtype, transform_model_from_text(text)
        )

    @property
    def settings(self) -> TransformSettings:
        """What the storage name asks for."""
        settings = transform_settings(self.dtype)
        assert settings is not None  # checked at construction
        return settings

    def calibrated_on(
        self, memories: list[KVSlots], sensitivity: AttentionSensitivity | None = None
    ) -> TransformKVCodec:
        """This codec with a model fitted to ``memories`` (float K/V memory of calibration
        text) and, for the attention weighting, the decoder's ``sensitivity``."""
        model = fit_transform_model(memories, self.settings, sensitivity)
        return TransformKVCodec(self.layers, self.kv_heads, self.head_dim, self.dtype, model)

    def calibrate(self, compressor: Any, spec: Any) -> TransformKVCodec:
        """This codec fitted on ``spec``'s memory of the bundled passages and, for the
        attention weighting, the frozen decoder's sensitivity over them (both measured once
        per compressor and memory kind in a process: several budgets fit on the same)."""
        memories, sensitivity = _calibration_inputs(compressor, spec, self.calibration_passages)
        return self.calibrated_on(memories, sensitivity)  # the spread weighting ignores it

    def _model(self) -> TransformModel:
        if self.calibration is None:
            raise ValueError(
                f"{self.dtype} K/V storage needs the store's transform calibration "
                "(TransformKVCodec.calibrated_on)"
            )
        return self.calibration

    def encode(self, memory: KVSlots) -> torch.Tensor:
        """``(rows, ROW_BYTES)`` uint8 rows of one chunk's coded memory."""
        self.check_shape(memory)
        model = self._model()
        count = memory.num_slots
        symbols = quantize(model, coefficients(model, stacked_parts(memory))).reshape(count, -1).int()
        blocks = {
            c: symbols[:, torch.from_numpy(index)].numpy()
            for c, index in enumerate(model.class_indices())
            if len(index) and count
        }
        payload = model.entropy_coder().encode(blocks)
        offsets = memory.offsets.to("cpu", torch.int64)
        consecutive = bool(torch.equal(offsets, consecutive_offsets(count, self.layers)))
        parts = [
            _MAGIC,
            bytes([_LAYOUT, 0 if consecutive else _OFFSETS_FLAG]),
            count.to_bytes(4, "little"),
            len(payload).to_bytes(4, "little"),
        ]
        if not consecutive:
            if memory.span > _INT16_MAX + 1:
                raise ValueError(
                    f"{self.dtype} stores offsets as int16: a chunk of {memory.span} positions is "
                    f"too long (at most {_INT16_MAX + 1})"
                )
            parts.append(offsets.to(torch.int16).numpy().astype("<i2").tobytes())
        parts.append(payload)
        data = b"".join(parts)
        rows = math.ceil(len(data) / ROW_BYTES)
        padded = np.zeros(rows * ROW_BYTES, dtype=np.uint8)
        padded[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        return torch.from_numpy(padded.reshape(rows, ROW_BYTES))

    def decode(
        self,
        rows: torch.Tensor,
        *,
        span: int,
        kind: str,
        fingerprint: str = "",
        text: str | None = None,
        where: str = "chunk",
    ) -> KVSlots:
        """One chunk's memory from its coded rows (keys and values as float16).

        Raises:
            KVDecodeError: naming ``where`` and the field that does not fit.
        """
        from memrag.memory.entropy import EntropyDecodeError

        model = self._model()
        if rows.dtype != torch.uint8 or rows.dim() != 2 or rows.shape[1] != ROW_BYTES or not rows.shape[0]:
            raise KVDecodeError(
                f"{where}: stored K/V rows are {rows.dtype} {tuple(rows.shape)}, expected uint8 "
                f"(n, {ROW_BYTES}) ({self.dtype})"
            )
        data = rows.contiguous().numpy().reshape(-1)
        if bytes(data[:2]) != _MAGIC or int(data[2]) != _LAYOUT or int(data[3]) not in (0, _OFFSETS_FLAG):
            raise KVDecodeError(f"{where}: not a {self.dtype} coded chunk (header)")
        count = int.from_bytes(bytes(data[4:8]), "little")
        length = int.from_bytes(bytes(data[8:12]), "little")
        offset_bytes = 2 * count * self.layers if data[3] == _OFFSETS_FLAG else 0
        end = _HEADER + offset_bytes + length
        if count < 1 or count > span or end > data.size:
            raise KVDecodeError(
                f"{where}: the coded chunk's header says {count} positions and {length} bytes of "
                f"symbols, which do not fit its {data.size} bytes and {span} positions"
            )
        if offset_bytes:
            offsets = torch.from_numpy(
                data[_HEADER : _HEADER + offset_bytes].view("<i2").astype(np.int64)
            ).reshape(count, self.layers)
        else:
            offsets = consecutive_offsets(count, self.layers)
        shapes = {c: (count, len(index)) for c, index in enumerate(model.class_indices()) if len(index)}
        try:
            decoded = model.entropy_coder().decode(data[_HEADER + offset_bytes : end].tobytes(), shapes)
        except EntropyDecodeError as err:
            raise KVDecodeError(f"{where}: the coded K/V symbols do not decode ({err})") from None
        blocks = [decoded[c] for c in sorted(decoded)]
        keys, values = self._reconstructed(model, blocks, count)
        shape = (count, self.layers, self.kv_heads, self.head_dim)
        return checked_slots(
            keys.reshape(shape).to(torch.float16),
            values.reshape(shape).to(torch.float16),
            offsets,
            span=span,
            kind=kind,
            fingerprint=fingerprint,
            text=text,
            where=where,
        )

    @staticmethod
    def _reconstructed(
        model: TransformModel, blocks: list[np.ndarray], count: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (``(n, layers, channels)`` each) from each class's decoded symbols
        (``(n, components)`` blocks, alphabet-shifted)."""
        steps, gather, bases = model.synthesis()
        symbols = torch.from_numpy(np.hstack(blocks)).float() if blocks else torch.zeros((count, 0))
        coeffs = torch.cat([symbols * steps, torch.zeros((count, 1))], dim=1)
        grouped = coeffs[:, gather].transpose(0, 1)  # (groups, n, width)
        channels = torch.bmm(grouped, bases).transpose(0, 1)  # (n, groups, channels)
        out = channels.reshape(count, 2, model.layers, -1) + model.means
        return out[:, 0], out[:, 1]


#: The last calibration inputs measured: ``(key, (memories, sensitivity))``.
_LAST_INPUTS: list[tuple[tuple[Any, ...], tuple[list[KVSlots], AttentionSensitivity]]] = []


def _calibration_inputs(
    compressor: Any, spec: Any, passages: str
) -> tuple[list[KVSlots], AttentionSensitivity]:
    """``spec``'s float memory of the bundled ``passages`` and the decoder's sensitivity over
    them (the last pair measured is kept: a process fitting several budgets measures once)."""
    from memrag.memory.calibration import calibration_memory, calibration_passages
    from memrag.memory.sensitivity import measure_sensitivity

    key = (id(compressor), str(compressor.fingerprint), spec.kind, passages)
    if _LAST_INPUTS and _LAST_INPUTS[0][0] == key:
        return _LAST_INPUTS[0][1]
    memories = calibration_memory(compressor, spec, passages=passages)
    texts = calibration_passages(passages)
    ids = [compressor.tokenizer(text, return_tensors="pt")["input_ids"] for text in texts]
    with compressor.decoder_mode() as decoder:
        device = next(decoder.parameters()).device
        sensitivity = measure_sensitivity(decoder, [i.to(device) for i in ids], memories)
    _LAST_INPUTS[:] = [(key, (memories, sensitivity))]
    return memories, sensitivity
