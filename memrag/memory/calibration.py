"""Per-channel centres and spreads of a model's keys and values, for ``int4c`` storage.

Keys have channels whose values sit far from zero in every token (and channels far wider than
the rest); quantizing a token's head in 4 bits with one step then spends most of its range on
them. ``int4c`` subtracts each channel's centre and divides by the square root of its spread
before rotating the head (:mod:`memrag.memory.hadamard`) and quantizing it, so a token is
coded with precision close to per-channel quantization, without the per-chunk header rows that
per-channel quantization needs (SmoothQuant's migration strength 0.5, arXiv 2211.10438). The
figures are a property of the model and its compressor, not of a corpus: they are measured
once, on the bundled calibration passages, when a store is created, and recorded in its
manifest, so every chunk of the store (written then or appended later) is coded with the same.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from memrag.memory.kv import KVSlots

#: Smallest spread a channel is divided by (a constant channel is only centred).
_MIN_SPREAD = 1e-3
_FIELDS = ("key_centre", "key_scale", "value_centre", "value_scale")


@dataclass(frozen=True)
class KVCalibration:
    """Per head and channel: the centre subtracted and the scale divided by before coding.

    Attributes:
        key_centre: ``(layers * kv_heads, head_dim)`` float32, float16-exact.
        key_scale: Same shape, positive.
        value_centre: Same shape.
        value_scale: Same shape, positive.
    """

    key_centre: torch.Tensor
    key_scale: torch.Tensor
    value_centre: torch.Tensor
    value_scale: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        """``(layers * kv_heads, head_dim)``."""
        return (int(self.key_centre.shape[0]), int(self.key_centre.shape[1]))

    def for_part(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(centre, scale) of ``"key"`` or ``"value"``."""
        return getattr(self, f"{part}_centre"), getattr(self, f"{part}_scale")

    def to_text(self) -> str:
        """The four tensors as base64 float16 bytes, after their shape and a checksum of the
        bytes (``"18x256:<sha256 prefix>:<base64>"``; for a manifest)."""
        stacked = torch.stack([getattr(self, name) for name in _FIELDS]).to(torch.float16)
        heads, width = self.shape
        raw = stacked.contiguous().view(torch.uint8).numpy().tobytes()
        payload = base64.b64encode(raw).decode("ascii")
        return f"{heads}x{width}:{checksum(raw)}:{payload}"

    @classmethod
    def from_text(cls, text: str) -> KVCalibration:
        """Parses :meth:`to_text`'s form.

        Raises:
            ValueError: malformed, the wrong number of bytes, bytes that do not match their
                checksum, or non-finite / non-positive scales (naming which).
        """
        try:
            shape, digest, payload = text.split(":", 2)
            heads, width = (int(part) for part in shape.split("x"))
            raw = base64.b64decode(payload.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError) as err:
            raise ValueError(f"K/V calibration is malformed ({err})") from None
        if checksum(raw) != digest:
            raise ValueError("K/V calibration does not match its checksum (damaged or edited)")
        expected = len(_FIELDS) * heads * width * 2
        if heads < 1 or width < 1 or len(raw) != expected:
            raise ValueError(
                f"K/V calibration holds {len(raw)} bytes, expected {expected} for "
                f"{heads} heads x {width} channels"
            )
        stacked = (
            torch.frombuffer(bytearray(raw), dtype=torch.float16).float().reshape(4, heads, width)
        )
        tensors = dict(zip(_FIELDS, stacked))
        for name, tensor in tensors.items():
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"K/V calibration {name} is not finite")
        for name in ("key_scale", "value_scale"):
            if not bool((tensors[name] > 0).all()):
                raise ValueError(f"K/V calibration {name} is not positive")
        return cls(**tensors)


@functools.lru_cache(maxsize=8)
def calibration_from_text(text: str) -> KVCalibration:
    """:meth:`KVCalibration.from_text`, parsed and checked once per distinct text (a store's
    codec is asked for on every read; a text that fails is refused every time)."""
    return KVCalibration.from_text(text)


def fit_calibration(memories: Sequence[KVSlots]) -> KVCalibration:
    """The centres and scales of ``memories``' keys and values (over every kept position).

    Each channel's centre is its mean; its scale the square root of its standard deviation
    (at least :data:`_MIN_SPREAD`), rounded as float16 stores them.

    Raises:
        ValueError: no positions.
    """
    if not memories or not sum(m.num_slots for m in memories):
        raise ValueError("calibrating K/V storage needs memory with at least one position")
    first = memories[0]
    heads = first.keys.shape[1] * first.keys.shape[2]
    width = first.keys.shape[3]
    fitted: dict[str, torch.Tensor] = {}
    for part in ("key", "value"):
        stacked = torch.cat(
            [
                getattr(m, f"{part}s").detach().to("cpu", torch.float32).reshape(-1, heads, width)
                for m in memories
            ]
        )
        spread = stacked.std(dim=0, unbiased=False).clamp(min=_MIN_SPREAD)
        fitted[f"{part}_centre"] = float16_exact(stacked.mean(dim=0))
        fitted[f"{part}_scale"] = float16_exact(spread.sqrt())
    return KVCalibration(**fitted)


def calibration_passages(name: str = "passages.jsonl") -> list[str]:
    """The bundled calibration paragraphs of file ``name`` (``memrag/resources/calibration``)."""
    path = Path(str(files("memrag").joinpath("resources", "calibration", name)))
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def calibration_memory(
    compressor: Any, spec: Any, *, passages: str = "passages.jsonl", batch_size: int = 4
) -> list[KVSlots]:
    """``spec``'s K/V memory of the bundled ``passages`` made by ``compressor``, as float16
    (what every codec is calibrated on, whatever it stores). Pruned memory keeps some of the
    exact memory's positions, unchanged: it is calibrated on the exact memory (no selection
    pass, which would double the positions a passage needs)."""
    from memrag.memory.builders import build_memory
    from memrag.memory.kinds import MemoryKind

    float_spec = dataclasses.replace(spec, kv_dtype="float16")
    if float_spec.memory_kind is MemoryKind.KV_PRUNED:
        float_spec = dataclasses.replace(float_spec, kind=MemoryKind.KV_EXACT.value)
    texts = calibration_passages(passages)
    memories = build_memory(compressor, float_spec, texts, batch_size=batch_size)
    return [m for m in memories if isinstance(m, KVSlots)]


def calibrate(compressor: Any, spec: Any, *, batch_size: int = 4) -> KVCalibration:
    """Measures the ``int4c`` calibration of ``spec``'s K/V memory made by ``compressor`` on the
    bundled passages (the memory as stored in float16, so any dtype's spec gives the same)."""
    return fit_calibration(calibration_memory(compressor, spec, batch_size=batch_size))


def checksum(raw: bytes) -> str:
    """The checksum a calibration's text form records of its bytes (a sha256 prefix)."""
    return hashlib.sha256(raw).hexdigest()[:16]


def float16_exact(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as float32 holding the values float16 stores (clamped into its range)."""
    return tensor.float().clamp(-65504.0, 65504.0).to(torch.float16).float()
