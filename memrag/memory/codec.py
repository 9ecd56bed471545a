"""K/V codecs: how a chunk's keys and values become store rows and back, behind one interface
with a registry by name (the stored layout is not the engine's; as transformers registers its
quantizers).

A store keeps every chunk's memory as rows of one byte matrix (``(rows, row_bytes)`` uint8),
so the shard machinery (atomic writes, memory-mapped reads of a chunk's row range, compaction,
checksums) is the same for every codec. A codec is a class registered under the storage names
it codes (:func:`register_codec`); :func:`kv_codec` makes the one a name asks for:

* :mod:`memrag.memory.quantized_codec`: ``float16``, ``bfloat16``, ``int8``, ``int4``,
  ``k8v4``, ``int4r``, ``int4c`` — one fixed-width row per kept position;
* :mod:`memrag.memory.transform_codec`: ``tc<bits>`` (``tc2`` ...) — a per-store transform,
  per-component steps and entropy coding, a variable number of rows per chunk.

Codecs that need a per-store calibration (``int4c``, ``tc<bits>``) say so
(:attr:`KVCodec.needs_calibration`), fit it on calibration memory (:meth:`KVCodec.calibrated_on`)
and keep it in the store's manifest as text (:meth:`KVCodec.calibration_text`), which a store
reads back with :meth:`KVCodec.with_calibration_text` (checksummed: an edited or truncated
calibration is refused). Decoding checks shapes and offsets, and names the field that is wrong.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from memrag.memory.kv import KVSlots

#: Modules whose codecs register themselves when imported.
_BUILTIN_MODULES = ("memrag.memory.quantized_codec", "memrag.memory.transform_codec")
#: (matcher, codec class, example names) in registration order.
_REGISTRY: list[tuple[Callable[[str], bool], type[KVCodec], tuple[str, ...]]] = []


class KVDecodeError(ValueError):
    """Stored K/V rows do not decode (wrong width, bad offsets, non-finite scales)."""


class KVCodec(ABC):
    """Packs :class:`KVSlots` of one model shape into uint8 rows, and back.

    Subclasses are dataclasses with the fields ``layers``, ``kv_heads``, ``head_dim``,
    ``dtype`` (the storage name) and ``calibration`` (``None`` where none is needed or none
    is fitted yet).
    """

    layers: int
    kv_heads: int
    head_dim: int
    dtype: str
    calibration: Any

    needs_calibration: ClassVar[bool] = False
    #: The bundled passages (``memrag/resources/calibration``) a new store calibrates on.
    calibration_passages: ClassVar[str] = "passages.jsonl"

    @property
    def calibrated(self) -> bool:
        """Whether this codec codes through a store's calibration (which it then requires)."""
        return bool(self.needs_calibration)

    @property
    @abstractmethod
    def row_bytes(self) -> int:
        """Width of a stored row in bytes."""

    @abstractmethod
    def encode(self, memory: KVSlots) -> torch.Tensor:
        """``(rows, row_bytes)`` uint8 rows of one chunk's memory."""

    @abstractmethod
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
        """One chunk's memory from its rows.

        Raises:
            KVDecodeError: naming ``where`` and the field that does not fit.
        """

    def calibration_text(self) -> str:
        """The calibration in manifest form (empty when there is none)."""
        return ""

    def with_calibration_text(self, text: str) -> KVCodec:
        """This codec with a store's recorded calibration.

        Raises:
            ValueError: this codec takes no calibration, or the text is damaged.
        """
        raise ValueError(f"{self.dtype} K/V storage takes no calibration")

    def calibrated_on(self, memories: list[KVSlots]) -> KVCodec:
        """This codec with a calibration fitted to ``memories`` (itself when it needs none)."""
        return self

    def calibrate(self, compressor: Any, spec: Any) -> KVCodec:
        """This codec calibrated for a new store of ``spec`` made by ``compressor``: fitted on
        the memory of its bundled passages (:attr:`calibration_passages`); itself when it
        needs no calibration."""
        if not self.needs_calibration:
            return self
        from memrag.memory.calibration import calibration_memory

        return self.calibrated_on(
            calibration_memory(compressor, spec, passages=self.calibration_passages)
        )

    def check_shape(self, memory: KVSlots) -> None:
        """Raises ``ValueError`` when ``memory`` is not of this codec's model shape."""
        expected = (self.layers, self.kv_heads, self.head_dim)
        if tuple(memory.keys.shape[1:]) != expected:
            raise ValueError(
                f"K/V memory has shape (n, {', '.join(map(str, memory.keys.shape[1:]))}), the "
                f"store keeps (n, {', '.join(map(str, expected))})"
            )


def register_codec(
    *names: str, matcher: Callable[[str], bool] | None = None, examples: tuple[str, ...] = ()
) -> Callable[[type[KVCodec]], type[KVCodec]]:
    """Class decorator: the codec codes the storage ``names`` (and any name ``matcher`` accepts).

    Args:
        names: Fixed storage names.
        matcher: For parametrised names (``tc<bits>``): whether a name is this codec's.
        examples: Names to show users for ``matcher``'s family.
    """
    fixed = frozenset(names)

    def accepts(name: str) -> bool:
        return name in fixed or (matcher is not None and matcher(name))

    def decorate(cls: type[KVCodec]) -> type[KVCodec]:
        _REGISTRY.append((accepts, cls, tuple(names) + tuple(examples)))
        return cls

    return decorate


def _load_builtin() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def codec_class(dtype: str) -> type[KVCodec]:
    """The codec class registered for storage name ``dtype``.

    Raises:
        ValueError: no codec codes ``dtype`` (naming the known ones).
    """
    _load_builtin()
    for accepts, cls, _ in _REGISTRY:
        if accepts(dtype):
            return cls
    raise ValueError(f"K/V storage dtype must be one of {', '.join(kv_dtype_examples())}, got {dtype!r}")


def is_kv_dtype(dtype: str) -> bool:
    """Whether a registered codec codes storage name ``dtype``."""
    _load_builtin()
    return any(accepts(dtype) for accepts, _, _ in _REGISTRY)


def kv_dtype_examples() -> tuple[str, ...]:
    """Every fixed storage name and an example of each parametrised family, for messages."""
    _load_builtin()
    return tuple(name for _, _, names in _REGISTRY for name in names)


def kv_codec(
    layers: int, kv_heads: int, head_dim: int, dtype: str = "float16", calibration: str = ""
) -> KVCodec:
    """The codec storage name ``dtype`` asks for, for a model shape, with a store's recorded
    ``calibration`` text (empty: none yet).

    Raises:
        ValueError: an unknown name, or a calibration that does not load or fit.
    """
    codec = codec_class(dtype)(layers, kv_heads, head_dim, dtype)  # type: ignore[call-arg]
    return codec.with_calibration_text(calibration) if calibration else codec


def checked_slots(
    keys: torch.Tensor,
    values: torch.Tensor,
    offsets: torch.Tensor,
    *,
    span: int,
    kind: str,
    fingerprint: str,
    text: str | None,
    where: str,
) -> KVSlots:
    """Decoded memory, once its offsets (``(n, layers)`` int64) are checked to lie in the
    chunk and to increase down each layer.

    Raises:
        KVDecodeError: naming ``where``.
    """
    count = offsets.shape[0]
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
