"""The fixed-width K/V codecs: float16, bfloat16, int8, int4, k8v4, int4r and int4c (one row per
kept position; registered by name in :mod:`memrag.memory.codec`).

A store keeps every chunk's memory as rows of one byte matrix (``(rows, row_bytes)`` uint8),
so the shard machinery (atomic writes, memory-mapped reads of a chunk's row range,
compaction, checksums) is the same for every kind. One row per kept position holds, for all
layers, its key and value and its offset in the chunk; quantized keys put their per-channel
parameters in header rows before the chunk's positions (keys have outlier channels, so they
are quantized per channel over the chunk's positions; values per token — KIVI, arXiv
2402.02750):

* ``float16`` / ``bfloat16``: ``K[layers, kv_heads, head_dim]``, ``V[...]`` (2 bytes each),
  ``offsets[layers]`` (int32). No header.
* ``int8`` (symmetric): a header row with the keys' per-channel scales (float16); per position
  ``K`` and ``V`` as int8, the values' per-token, per-head scales (float16) and the offsets.
  Half the bytes of float16.
* ``int4`` (K4V4, asymmetric): header rows with the keys' per-channel minimum and step
  (float16 each); per position ``K`` and ``V`` as 4-bit codes (two per byte), the values'
  minimum and step per token and group of :data:`VALUE_GROUP` channels, and the offsets.
  About a quarter of the bytes of float16.
* ``k8v4``: keys as ``int8`` does, values as ``int4`` does (keys need more bits than values on
  small models).
* ``int4r`` (K4V4, rotated, no header): each head's key and value turned by an orthonormal
  Hadamard matrix (:mod:`memrag.memory.hadamard`; QuaRot, arXiv 2404.00456), then quantized per
  token and head, symmetric, with one float16 step (the clipping of the range that best fits
  the head is searched at encode time; rotated heads are about centred, so a minimum would buy
  little); offsets as int16. No per-chunk header rows: the smallest layout (on Gemma 3 270M
  4,716 bytes per position against ``int4``'s 4,968 plus four header rows per chunk), at a
  cost in key precision, since keys are quantized per token rather than per channel: with one
  chunk in the prompt it answers as ``int4``, with five it loses a third of the F1
  (docs/RESULTS.md, "4-bit without header rows").
* ``int4c`` (K4V4, calibrated, rotated, no header): as ``int4r``, after each channel's centre
  is subtracted and the channel divided by the square root of its spread — figures measured once
  per store on the model's memory of bundled passages (:mod:`memrag.memory.calibration`) and
  kept in the store's manifest. The same bytes as ``int4r``, with the keys' round-trip error
  close to ``int4``'s per-channel coding (docs/RESULTS.md).

Decoding checks shapes and offsets, and names the field that is wrong.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from memrag.memory.calibration import KVCalibration, calibration_from_text, fit_calibration
from memrag.memory.codec import KVCodec, KVDecodeError, checked_slots, register_codec
from memrag.memory.hadamard import rotate_heads
from memrag.memory.kv import KVSlots
from memrag.utils.torch_utils import resolve_dtype

_INT8_MAX = 127.0
_INT4_LEVELS = 15.0
#: The code of zero in symmetric 4-bit codes (levels at half steps either side of it).
_INT4_CENTRE = 7.5
#: Channels sharing one minimum and step in a 4-bit value row (or a whole head, when its
#: width is not a multiple).
VALUE_GROUP = 64
#: Bits of the keys and of the values of each storage dtype.
_BITS = {
    "float16": (16, 16),
    "bfloat16": (16, 16),
    "int8": (8, 8),
    "int4": (4, 4),
    "k8v4": (8, 4),
    "int4r": (4, 4),
    "int4c": (4, 4),
}
#: The storage dtypes that rotate heads and quantize keys per token (no header rows).
_ROTATED = frozenset({"int4r", "int4c"})
#: The storage dtypes whose channels are centred and scaled by a store's calibration first.
_CALIBRATED = frozenset({"int4c"})
#: Fractions of a head's range tried as its 4-bit range when rotated heads are quantized.
_CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8)
_INT16_MAX = 32767


#: The storage names this module codes (the fixed-width layouts).
QUANTIZED_DTYPES = tuple(_BITS)


@register_codec(*QUANTIZED_DTYPES)
@dataclass(frozen=True)
class QuantizedKVCodec(KVCodec):
    """Packs :class:`KVSlots` of one model shape into uint8 rows, one per kept position.

    Args:
        layers: Decoder layers.
        kv_heads: Key/value heads per layer.
        head_dim: Width of a head.
        dtype: One of :data:`QUANTIZED_DTYPES` (``float16``, ``bfloat16``, ``int8``, ``int4``,
            ``k8v4``, ``int4r``, ``int4c``).
        calibration: The store's channel centres and scales (``int4c`` only, where it is
            required; see :mod:`memrag.memory.calibration`).
    """

    layers: int
    kv_heads: int
    head_dim: int
    dtype: str = "float16"
    calibration: KVCalibration | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.dtype not in _BITS:
            raise ValueError(
                f"K/V storage dtype must be one of {', '.join(_BITS)}, got {self.dtype!r}"
            )
        if _BITS.get(self.dtype, (16, 16))[1] == 4 and (self.layers * self.kv_heads * self.head_dim) % 2:
            raise ValueError(f"{self.dtype} packs two values per byte: needs an even channel count")
        if self.calibration is not None:
            if not self.calibrated:
                raise ValueError(f"{self.dtype} K/V storage takes no calibration")
            if self.calibration.shape != (self._heads, self.head_dim):
                raise ValueError(
                    f"K/V calibration is for {self.calibration.shape[0]} heads x "
                    f"{self.calibration.shape[1]} channels, the store keeps {self._heads} x "
                    f"{self.head_dim}"
                )

    @property
    def calibrated(self) -> bool:
        """Whether this dtype codes channels through a store's calibration (``int4c``)."""
        return self.dtype in _CALIBRATED

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        """Whether this dtype needs a store's calibration to code (``int4c``)."""
        return self.calibrated

    def calibration_text(self) -> str:
        """The store's channel calibration in manifest form (empty when there is none)."""
        return self.calibration.to_text() if self.calibration is not None else ""

    def with_calibration_text(self, text: str) -> QuantizedKVCodec:
        """This codec with a store's recorded calibration (checked)."""
        return dataclasses.replace(self, calibration=calibration_from_text(text))

    def calibrated_on(self, memories: list[KVSlots]) -> QuantizedKVCodec:
        """This codec with a calibration measured on ``memories``."""
        return dataclasses.replace(self, calibration=fit_calibration(memories))

    def _calibration(self) -> KVCalibration:
        if self.calibration is None:
            raise ValueError(
                f"{self.dtype} K/V storage needs the store's calibration (channel centres and "
                "scales; memrag.memory.calibration.calibrate)"
            )
        return self.calibration

    @property
    def key_bits(self) -> int:
        """Bits per stored key element."""
        return _BITS[self.dtype][0]

    @property
    def value_bits(self) -> int:
        """Bits per stored value element."""
        return _BITS[self.dtype][1]

    @property
    def rotated(self) -> bool:
        """Whether heads are rotated and keys quantized per token (no header rows)."""
        return self.dtype in _ROTATED

    @property
    def _channels(self) -> int:
        return self.layers * self.kv_heads * self.head_dim

    @property
    def _heads(self) -> int:
        return self.layers * self.kv_heads

    def _offset_bytes(self) -> int:
        return (2 if self.rotated else 4) * self.layers

    @property
    def value_group(self) -> int:
        """Channels per 4-bit value group (a divisor of ``head_dim``)."""
        return VALUE_GROUP if self.head_dim % VALUE_GROUP == 0 else self.head_dim

    def _key_bytes(self) -> int:
        return self._channels * self.key_bits // 8

    def _value_bytes(self) -> int:
        return self._channels * self.value_bits // 8

    def _key_param_bytes(self) -> int:
        return 2 * self._heads if self.rotated else 0  # one float16 step per head

    def _value_param_bytes(self) -> int:
        if self.rotated:
            return 2 * self._heads
        if self.value_bits == 8:
            return 2 * self.layers * self.kv_heads  # one float16 scale per token and head
        if self.value_bits == 4:
            return 4 * (self._channels // self.value_group)  # float16 minimum and step per group
        return 0

    def _header_bytes(self) -> int:
        if self.rotated:
            return 0
        return {16: 0, 8: 2, 4: 4}[self.key_bits] * self._channels

    @property
    def row_bytes(self) -> int:
        """Width of a stored row in bytes."""
        return (
            self._key_bytes()
            + self._key_param_bytes()
            + self._value_bytes()
            + self._value_param_bytes()
            + self._offset_bytes()
        )

    def header_rows(self) -> int:
        """Rows per chunk before its positions' rows (the keys' quantization parameters)."""
        return math.ceil(self._header_bytes() / self.row_bytes)

    def rows_for(self, entries: int) -> int:
        """Stored rows of a chunk with ``entries`` kept positions."""
        return self.header_rows() + entries

    def encode(self, memory: KVSlots) -> torch.Tensor:
        """``(rows_for(n), row_bytes)`` uint8 rows of one chunk's memory."""
        self.check_shape(memory)
        count = memory.num_slots
        keys = memory.keys.detach().to("cpu", torch.float32).reshape(count, -1)
        values = memory.values.detach().to("cpu", torch.float32).reshape(count, -1)
        offsets = memory.offsets.to("cpu", torch.int32).reshape(count, self.layers).contiguous()
        if self.rotated:
            return self._encode_rotated(keys, values, offsets, span=memory.span)
        if self.key_bits == 16:
            target = resolve_dtype(self.dtype)
            key_bytes = _finite(keys, target).to(target).view(torch.uint8)
            value_bytes = _finite(values, target).to(target).view(torch.uint8)
            return torch.cat(
                [key_bytes, value_bytes, offsets.view(torch.uint8)], dim=1
            ).contiguous()
        key_header, key_bytes = self._encode_keys(keys)
        rows = torch.cat(
            [key_bytes, *self._encode_values(values), offsets.view(torch.uint8)], dim=1
        )
        header = torch.zeros((self.header_rows() * self.row_bytes,), dtype=torch.uint8)
        header[: key_header.numel()] = key_header
        return torch.cat([header.reshape(-1, self.row_bytes), rows]).contiguous()

    def _encode_rotated(
        self, keys: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor, *, span: int
    ) -> torch.Tensor:
        """Rows of ``int4r`` / ``int4c``: per position, rotated 4-bit keys and values with their
        per-head steps, then int16 offsets."""
        if span > _INT16_MAX + 1:
            raise ValueError(
                f"{self.dtype} stores offsets as int16: a chunk of {span} positions is too long "
                f"(at most {_INT16_MAX + 1}); cut it into smaller chunks or store it as int4"
            )
        parts = []
        for part, tensor in (("key", keys), ("value", values)):
            heads = tensor.reshape(tensor.shape[0], self._heads, self.head_dim)
            if self.calibrated:
                centre, scale = self._calibration().for_part(part)
                heads = (heads - centre) / scale
            codes, step = _quantize_rows4(rotate_heads(heads))
            parts += [_pack4(codes.reshape(tensor.shape[0], -1)), _f16_bytes(step)]
        small = offsets.to(torch.int16).contiguous().view(torch.uint8)
        return torch.cat([*parts, small], dim=1).contiguous()

    def _decode_rotated(self, body: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys, values (float32, ``(n, channels)``) and int16 offsets of ``int4r`` / ``int4c``
        rows."""
        count, heads = body.shape[0], self._heads
        tensors, cursor = [], 0
        for part in ("key", "value"):
            codes = _unpack4(body[:, cursor : cursor + self._channels // 2]).float()
            cursor += self._channels // 2
            step = _from_f16(body[:, cursor : cursor + 2 * heads]).reshape(count, heads, 1)
            cursor += 2 * heads
            _check_finite(where, step)
            rotated = (codes.reshape(count, heads, self.head_dim) - _INT4_CENTRE) * step
            decoded = rotate_heads(rotated)  # its own inverse
            if self.calibrated:
                centre, scale = self._calibration().for_part(part)
                decoded = decoded * scale + centre
            tensors.append(decoded.reshape(count, -1))
        offsets = body[:, cursor:].contiguous().view(torch.int16).int()
        return tensors[0], tensors[1], offsets

    def _encode_keys(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(header bytes, per-position key bytes): per-channel quantization over the chunk."""
        if self.key_bits == 8:
            scale = (keys.abs().amax(dim=0) / _INT8_MAX).clamp(min=1e-8)
            codes = torch.round(keys / scale).clamp(-_INT8_MAX, _INT8_MAX)
            return _f16_bytes(scale), codes.to(torch.int8).view(torch.uint8)
        low, step = _asymmetric(keys, dim=0)
        codes = _codes4(keys, low, step)
        return torch.cat([_f16_bytes(low), _f16_bytes(step)]), _pack4(codes)

    def _encode_values(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Per-position value bytes and their per-token parameters."""
        count = values.shape[0]
        if self.value_bits == 8:
            grouped = values.reshape(count, self.layers * self.kv_heads, self.head_dim)
            scale = (grouped.abs().amax(dim=-1) / _INT8_MAX).clamp(min=1e-8)
            codes = torch.round(grouped / scale.unsqueeze(-1)).clamp(-_INT8_MAX, _INT8_MAX)
            return [codes.to(torch.int8).reshape(count, -1).view(torch.uint8), _f16_bytes(scale)]
        grouped = values.reshape(count, -1, self.value_group)
        low, step = _asymmetric(grouped, dim=-1)
        codes = _codes4(grouped, low.unsqueeze(-1), step.unsqueeze(-1)).reshape(count, -1)
        return [_pack4(codes), _f16_bytes(low), _f16_bytes(step)]

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
        """One chunk's memory from its rows (keys and values as float16, or bfloat16 if stored so).

        Raises:
            KVDecodeError: naming ``where`` and the field that does not fit.
        """
        if rows.dtype != torch.uint8 or rows.dim() != 2 or rows.shape[1] != self.row_bytes:
            raise KVDecodeError(
                f"{where}: stored K/V rows are {rows.dtype} {tuple(rows.shape)}, expected uint8 "
                f"(n, {self.row_bytes}) for {self.layers} layers x {self.kv_heads} heads x "
                f"{self.head_dim} ({self.dtype})"
            )
        rows = rows.contiguous()
        header = self.header_rows()
        if rows.shape[0] <= header:
            raise KVDecodeError(f"{where}: no stored K/V positions")
        body = rows[header:]
        count = body.shape[0]
        shape = (count, self.layers, self.kv_heads, self.head_dim)
        if self.rotated:
            keys, values, offsets = self._decode_rotated(body, where)
            keys, values = keys.reshape(shape).to(torch.float16), values.reshape(shape).to(torch.float16)
        elif self.key_bits == 16:
            stored = resolve_dtype(self.dtype)
            width = 2 * self._channels
            keys = body[:, :width].contiguous().view(stored).reshape(shape)
            values = body[:, width : 2 * width].contiguous().view(stored).reshape(shape)
            offsets = body[:, 2 * width :].contiguous().view(torch.int32)
        else:
            cursor = self._key_bytes()
            keys = self._decode_keys(rows[:header].reshape(-1), body[:, :cursor], where)
            end = cursor + self._value_bytes() + self._value_param_bytes()
            values = self._decode_values(body[:, cursor:end], where)
            keys, values = (
                keys.reshape(shape).to(torch.float16),
                values.reshape(shape).to(torch.float16),
            )
            offsets = body[:, end:].contiguous().view(torch.int32)
        return checked_slots(
            keys,
            values,
            offsets.reshape(count, self.layers).long(),
            span=span,
            kind=kind,
            fingerprint=fingerprint,
            text=text,
            where=where,
        )

    def _decode_keys(self, header: torch.Tensor, body: torch.Tensor, where: str) -> torch.Tensor:
        channels = self._channels
        if self.key_bits == 8:
            scale = _from_f16(header[: 2 * channels])
            _check_finite(where, scale)
            return body.contiguous().view(torch.int8).float() * scale
        low, step = (
            _from_f16(header[: 2 * channels]),
            _from_f16(header[2 * channels : 4 * channels]),
        )
        _check_finite(where, low, step)
        return _unpack4(body).float() * step + low

    def _decode_values(self, body: torch.Tensor, where: str) -> torch.Tensor:
        count, channels = body.shape[0], self._channels
        if self.value_bits == 8:
            groups = self.layers * self.kv_heads
            scale = _from_f16(body[:, channels:]).reshape(count, groups)
            _check_finite(where, scale)
            codes = body[:, :channels].contiguous().view(torch.int8).float()
            return codes.reshape(count, groups, self.head_dim) * scale.unsqueeze(-1)
        groups = channels // self.value_group
        cursor = channels // 2
        low = _from_f16(body[:, cursor : cursor + 2 * groups]).reshape(count, groups, 1)
        step = _from_f16(body[:, cursor + 2 * groups :]).reshape(count, groups, 1)
        _check_finite(where, low, step)
        codes = _unpack4(body[:, :cursor]).float().reshape(count, groups, self.value_group)
        return codes * step + low


def _half(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` rounded to float16 and back: parameters quantize with what decoding reads."""
    return _finite(tensor, torch.float16).to(torch.float16).float()


def _f16_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """Float16 bytes of ``tensor``, flattened per leading row (or wholly for a vector)."""
    half = _finite(tensor, torch.float16).to(torch.float16).contiguous()
    if half.dim() <= 1:
        return half.view(torch.uint8)
    return half.reshape(half.shape[0], -1).view(torch.uint8)


def _from_f16(data: torch.Tensor) -> torch.Tensor:
    return data.contiguous().view(torch.float16).float()


def _check_finite(where: str, *tensors: torch.Tensor) -> None:
    if not all(bool(torch.isfinite(t).all()) for t in tensors):
        raise KVDecodeError(f"{where}: stored K/V scales are not finite")


def _asymmetric(tensor: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and step of 4-bit codes along ``dim``, as float16 will store them."""
    low = _half(tensor.amin(dim=dim))
    high = tensor.amax(dim=dim)
    step = _half(((high - low) / _INT4_LEVELS).clamp(min=1e-6))
    return low, step


def _quantize_rows4(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric 4-bit codes of ``rows`` (``(..., width)``) and one step per row.

    Code ``c`` stands for ``(c - 7.5) * step``: sixteen levels, symmetric about zero. Each row's
    largest magnitude is narrowed by each of :data:`_CLIP_RATIOS` in turn and the step with
    the smallest squared error is kept (outliers are clipped when that costs less than coarser
    steps for every other channel).
    """
    peak = rows.abs().amax(dim=-1, keepdim=True)
    best = None
    for ratio in _CLIP_RATIOS:
        step = _half((peak * ratio / _INT4_CENTRE).clamp(min=1e-6))
        codes = torch.round(rows / step + _INT4_CENTRE).clamp(0, _INT4_LEVELS).to(torch.uint8)
        error = (((codes.float() - _INT4_CENTRE) * step - rows) ** 2).sum(dim=-1, keepdim=True)
        if best is None:
            best = (codes, step, error)
            continue
        better = error < best[2]
        best = (
            torch.where(better, codes, best[0]),
            torch.where(better, step, best[1]),
            torch.minimum(error, best[2]),
        )
    assert best is not None
    return best[0], best[1].squeeze(-1)


def _codes4(tensor: torch.Tensor, low: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    return torch.round((tensor - low) / step).clamp(0, _INT4_LEVELS).to(torch.uint8)


def _pack4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte (the even channel in the low nibble)."""
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()


def _unpack4(packed: torch.Tensor) -> torch.Tensor:
    packed = packed.contiguous()
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def _finite(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` clamped into ``dtype``'s range (float16 overflows beyond 65,504)."""
    info = torch.finfo(dtype)
    return torch.nan_to_num(tensor, nan=0.0, posinf=info.max, neginf=info.min).clamp(
        info.min, info.max
    )
