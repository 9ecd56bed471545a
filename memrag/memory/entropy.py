"""Entropy coding of a transform codec's symbols (:mod:`memrag.memory.transform_codec`).

A chunk's symbols come as one block per frequency class (``(positions, components)`` int
arrays); a coder turns the blocks into bytes and back. Two coders, measured side by side
(docs/RESULTS.md, "Transform codec"):

* :class:`AnsCoder` (``ans``): :mod:`constriction`'s ANS coder under the store's frequency
  model (one histogram per class, fitted at calibration): the fewest bytes, about 15–25 ns a
  symbol to decode on one core.
* :class:`ZstdCoder` (``zstd``): each class's symbols component by component as int8 (int16
  where the class's alphabet needs it), compressed by Zstandard at a high level: a few percent
  more bytes than ANS, decoded about twenty times faster (its tables adapt per chunk; the
  store's model still sets the transform, the steps and the classes). The frame carries its
  own checksum, so a damaged one is refused rather than decoded into other symbols.

Both refuse bytes that do not decode into exactly the symbols asked for.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

#: Zstandard's level for stored chunks (written once, read many times).
ZSTD_LEVEL = 19


class EntropyDecodeError(ValueError):
    """Coded symbols do not decode (damaged or truncated bytes)."""


class EntropyCoder(ABC):
    """Turns per-class symbol blocks into bytes and back.

    Args:
        models: Per class, the frequency model (a :mod:`constriction` categorical model).
        radii: Per class, the alphabet radius (symbols lie in ``[-radius, radius]``).
    """

    name: ClassVar[str]

    def __init__(self, models: list[object], radii: np.ndarray) -> None:
        self.models = models
        self.radii = radii

    @abstractmethod
    def encode(self, blocks: dict[int, np.ndarray]) -> bytes:
        """Bytes of ``blocks`` (class -> ``(positions, components)`` int symbols)."""

    @abstractmethod
    def decode(self, data: bytes, shapes: dict[int, tuple[int, int]]) -> dict[int, np.ndarray]:
        """The blocks of ``shapes`` (class -> ``(positions, components)``) from ``data``.

        Raises:
            EntropyDecodeError: ``data`` does not decode into exactly those symbols.
        """


class AnsCoder(EntropyCoder):
    """One ANS stream over every class, each class under its own frequency model."""

    name = "ans"

    def encode(self, blocks: dict[int, np.ndarray]) -> bytes:
        import constriction

        coder = constriction.stream.stack.AnsCoder()
        for c in sorted(blocks, reverse=True):  # a stack: the first class is decoded first
            shifted = (blocks[c].reshape(-1) + int(self.radii[c])).astype(np.int32)
            coder.encode_reverse(shifted, self.models[c])
        return np.ascontiguousarray(coder.get_compressed(), dtype="<u4").tobytes()

    def decode(self, data: bytes, shapes: dict[int, tuple[int, int]]) -> dict[int, np.ndarray]:
        import constriction

        if len(data) % 4:
            raise EntropyDecodeError("the ANS stream is not whole 32-bit words")
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
        blocks = {}
        try:
            for c in sorted(shapes):
                rows, columns = shapes[c]
                decoded = coder.decode(self.models[c], rows * columns)
                blocks[c] = (decoded.astype(np.int32) - int(self.radii[c])).reshape(rows, columns)
        except (ValueError, RuntimeError, OverflowError) as err:
            raise EntropyDecodeError(f"the ANS stream does not decode ({err})") from None
        if not coder.is_empty():
            raise EntropyDecodeError("the ANS stream does not end where it should")
        return blocks


class ZstdCoder(EntropyCoder):
    """Each class's symbols component-major as int8/int16, in one Zstandard frame."""

    name = "zstd"

    def _dtype(self, c: int) -> str:
        return "<i1" if int(self.radii[c]) <= 127 else "<i2"

    def encode(self, blocks: dict[int, np.ndarray]) -> bytes:
        import zstandard

        raw = b"".join(
            np.ascontiguousarray(blocks[c].T).astype(self._dtype(c)).tobytes() for c in sorted(blocks)
        )
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(raw)

    def decode(self, data: bytes, shapes: dict[int, tuple[int, int]]) -> dict[int, np.ndarray]:
        import zstandard

        sizes = {c: rows * columns * np.dtype(self._dtype(c)).itemsize for c, (rows, columns) in shapes.items()}
        expected = sum(sizes.values())
        try:
            raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=expected)
        except zstandard.ZstdError as err:
            raise EntropyDecodeError(f"the Zstandard frame does not decode ({err})") from None
        if len(raw) != expected:
            raise EntropyDecodeError(
                f"the Zstandard frame holds {len(raw)} bytes of symbols, expected {expected}"
            )
        blocks, cursor = {}, 0
        for c in sorted(shapes):
            rows, columns = shapes[c]
            chunk = np.frombuffer(raw, dtype=self._dtype(c), count=rows * columns, offset=cursor)
            blocks[c] = chunk.reshape(columns, rows).T.astype(np.int32)
            cursor += sizes[c]
            if int(np.abs(blocks[c]).max(initial=0)) > int(self.radii[c]):
                raise EntropyDecodeError("decoded symbols lie outside their class's alphabet")
        return blocks


#: Coders by name.
ENTROPY_CODERS: dict[str, type[EntropyCoder]] = {AnsCoder.name: AnsCoder, ZstdCoder.name: ZstdCoder}
