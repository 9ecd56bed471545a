"""Packing K/V memory into store shards, and back (the stored layout is not the engine's).

A store keeps every chunk's memory as rows of one byte matrix (``(rows, row_bytes)`` uint8),
so the shard machinery (atomic writes, memory-mapped reads of a chunk's row range,
compaction, checksums) is the same for every kind. One row per kept position holds, for all
layers, its key and value and its offset in the chunk:

* ``float16`` / ``bfloat16``: ``K[layers, kv_heads, head_dim]``, ``V[...]`` (2 bytes each),
  ``offsets[layers]`` (int32).
* ``int8`` (KIVI, arXiv 2402.02750, symmetric): one header row per chunk with the keys'
  per-channel scales ``[layers, kv_heads, head_dim]`` (float16: keys have outlier channels),
  then per position ``K`` and ``V`` as int8, the value's per-token scales
  ``[layers, kv_heads]`` (float16) and the offsets. Half the bytes of float16.

Decoding checks shapes and offsets, and names the field that is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memrag.memory.kv import KVSlots
from memrag.utils.torch_utils import resolve_dtype

_INT8_MAX = 127.0


class KVDecodeError(ValueError):
    """Stored K/V rows do not decode (wrong width, bad offsets, non-finite scales)."""


@dataclass(frozen=True)
class KVCodec:
    """Packs :class:`KVSlots` of one model shape into uint8 rows.

    Args:
        layers: Decoder layers.
        kv_heads: Key/value heads per layer.
        head_dim: Width of a head.
        dtype: ``"float16"``, ``"bfloat16"`` or ``"int8"``.
    """

    layers: int
    kv_heads: int
    head_dim: int
    dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.dtype not in ("float16", "bfloat16", "int8"):
            raise ValueError(f"K/V storage dtype must be float16, bfloat16 or int8, got {self.dtype!r}")

    @property
    def _channels(self) -> int:
        return self.layers * self.kv_heads * self.head_dim

    @property
    def row_bytes(self) -> int:
        """Width of a stored row in bytes."""
        if self.dtype == "int8":
            return 2 * self._channels + 2 * self.layers * self.kv_heads + 4 * self.layers
        return 4 * self._channels + 4 * self.layers

    def header_rows(self) -> int:
        """Rows per chunk before its positions' rows."""
        return 1 if self.dtype == "int8" else 0

    def rows_for(self, entries: int) -> int:
        """Stored rows of a chunk with ``entries`` kept positions."""
        return self.header_rows() + entries

    def _check_shape(self, memory: KVSlots) -> None:
        expected = (self.layers, self.kv_heads, self.head_dim)
        if tuple(memory.keys.shape[1:]) != expected:
            raise ValueError(
                f"K/V memory has shape (n, {', '.join(map(str, memory.keys.shape[1:]))}), the "
                f"store keeps (n, {', '.join(map(str, expected))})"
            )

    def encode(self, memory: KVSlots) -> torch.Tensor:
        """``(rows_for(n), row_bytes)`` uint8 rows of one chunk's memory."""
        self._check_shape(memory)
        count = memory.num_slots
        keys = memory.keys.detach().to("cpu", torch.float32).reshape(count, -1)
        values = memory.values.detach().to("cpu", torch.float32).reshape(count, -1)
        offsets = memory.offsets.to("cpu", torch.int32).reshape(count, self.layers).contiguous()
        offset_bytes = offsets.view(torch.uint8)
        if self.dtype != "int8":
            target = resolve_dtype(self.dtype)
            key_bytes = _finite(keys, target).to(target).view(torch.uint8)
            value_bytes = _finite(values, target).to(target).view(torch.uint8)
            return torch.cat([key_bytes, value_bytes, offset_bytes], dim=1).contiguous()
        key_scale = (keys.abs().amax(dim=0) / _INT8_MAX).clamp(min=1e-8)  # per channel
        grouped = values.reshape(count, self.layers * self.kv_heads, self.head_dim)
        value_scale = (grouped.abs().amax(dim=-1) / _INT8_MAX).clamp(min=1e-8)  # per token
        key_q = torch.round(keys / key_scale).clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
        value_q = torch.round(grouped / value_scale.unsqueeze(-1)).clamp(-_INT8_MAX, _INT8_MAX)
        value_q = value_q.to(torch.int8).reshape(count, -1)
        header = torch.zeros((1, self.row_bytes), dtype=torch.uint8)
        scale_bytes = _finite(key_scale, torch.float16).to(torch.float16).view(torch.uint8)
        header[0, : scale_bytes.numel()] = scale_bytes
        rows = torch.cat(
            [
                key_q.view(torch.uint8),
                value_q.view(torch.uint8),
                _finite(value_scale, torch.float16).to(torch.float16).view(torch.uint8),
                offset_bytes,
            ],
            dim=1,
        )
        return torch.cat([header, rows]).contiguous()

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
        channels = self._channels
        if self.dtype != "int8":
            stored = resolve_dtype(self.dtype)
            width = 2 * channels
            keys = body[:, :width].contiguous().view(stored).reshape(shape)
            values = body[:, width : 2 * width].contiguous().view(stored).reshape(shape)
            offsets = body[:, 2 * width :].contiguous().view(torch.int32)
        else:
            key_scale = rows[0, : 2 * channels].contiguous().view(torch.float16).float()
            keys_q = body[:, :channels].contiguous().view(torch.int8).float()
            values_q = body[:, channels : 2 * channels].contiguous().view(torch.int8).float()
            groups = self.layers * self.kv_heads
            cursor = 2 * channels
            value_scale = body[:, cursor : cursor + 2 * groups].contiguous().view(torch.float16).float()
            offsets = body[:, cursor + 2 * groups :].contiguous().view(torch.int32)
            if not torch.isfinite(key_scale).all() or not torch.isfinite(value_scale).all():
                raise KVDecodeError(f"{where}: stored K/V scales are not finite")
            keys = (keys_q * key_scale).reshape(shape).to(torch.float16)
            values = (values_q.reshape(count, groups, self.head_dim) * value_scale.unsqueeze(-1))
            values = values.reshape(shape).to(torch.float16)
        offsets = offsets.reshape(count, self.layers).long()
        if count and (int(offsets.min()) < 0 or int(offsets.max()) >= span):
            raise KVDecodeError(
                f"{where}: stored K/V offsets lie in [{int(offsets.min())}, {int(offsets.max())}], "
                f"outside the chunk's {span} positions"
            )
        if count > 1 and bool((offsets[1:] <= offsets[:-1]).any()):
            raise KVDecodeError(f"{where}: stored K/V offsets are not increasing")
        return KVSlots(
            keys=keys,
            values=values,
            offsets=offsets,
            span=span,
            kind=kind,
            fingerprint=fingerprint,
            num_tokens=span,
            text=text,
        )


def _finite(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` clamped into ``dtype``'s range (float16 overflows beyond 65,504)."""
    info = torch.finfo(dtype)
    return torch.nan_to_num(tensor, nan=0.0, posinf=info.max, neginf=info.min).clamp(info.min, info.max)
