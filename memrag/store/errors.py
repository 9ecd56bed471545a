"""Errors raised by the memory store."""

from __future__ import annotations

from typing import Any


class StoreError(RuntimeError):
    """Base class of the store's errors."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """The path is not a memrag store (no manifest), or the store does not exist."""


class StoreExistsError(StoreError, FileExistsError):
    """A store (or a non-empty directory) is already at the path given to ``create``."""


class StoreVersionError(StoreError):
    """The store was written by a newer memrag (its format version is not supported)."""


class StoreCorruptError(StoreError):
    """A file of the store is missing, truncated or does not match its checksum."""


class StoreLockedError(StoreError):
    """Another process holds the store's writer lock."""


class StoreReadOnlyError(StoreError):
    """A write was attempted on a store opened with ``read_only=True``."""


class EmbedderMismatchError(StoreError, ValueError):
    """The embedder given does not match the one the store's vectors were made with."""


# ``CompressorMismatchError`` (memrag.compressor's) is also importable from here, lazily.
__all__ = [
    "EmbedderMismatchError",
    "StoreCorruptError",
    "StoreError",
    "StoreExistsError",
    "StoreLockedError",
    "StoreNotFoundError",
    "StoreReadOnlyError",
    "StoreVersionError",
]


def compressor_mismatch(message: str) -> Exception:
    """A :class:`memrag.compressor.CompressorMismatchError` (imported lazily: transformers)."""
    from memrag.compressor.model import CompressorMismatchError

    return CompressorMismatchError(message)


def __getattr__(name: str) -> Any:
    if name == "CompressorMismatchError":
        from memrag.compressor.model import CompressorMismatchError

        return CompressorMismatchError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
