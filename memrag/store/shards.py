"""Slot shards: safetensors files holding the memory slots of many chunks.

A shard holds one tensor, ``slots``, the slots of its chunks concatenated along dim 0; the
database records each chunk's ``(slot_start, slot_count)``. The header metadata names the
format and the compressor fingerprint, so a shard from another compressor is refused.
Shards are written atomically (temporary file, fsync, rename) and read through
``safetensors.safe_open``, which memory-maps the file: reading a chunk's slots touches only
its rows.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from memrag.store.errors import StoreCorruptError
from memrag.utils.atomic import atomic_path

logger = logging.getLogger(__name__)

SHARD_FORMAT = "memrag-slots"
SHARD_FORMAT_VERSION = "1"
SHARD_SUFFIX = ".safetensors"
_TENSOR = "slots"


@dataclass(frozen=True)
class WrittenShard:
    """A shard file just written: its name, slot count, size and SHA-256."""

    file: str
    num_slots: int
    bytes: int
    sha256: str


def write_shard(
    directory: Path, slots: torch.Tensor, *, fingerprint: str, slot_kind: str
) -> WrittenShard:
    """Writes ``slots`` (``(total_slots, ...)``) as a new shard file in ``directory``."""
    tensor = slots.detach().to("cpu").contiguous()
    payload = save(
        {_TENSOR: tensor},
        metadata={
            "format": SHARD_FORMAT,
            "format_version": SHARD_FORMAT_VERSION,
            "fingerprint": fingerprint,
            "slot_kind": slot_kind,
        },
    )
    name = f"shard-{uuid.uuid4().hex}{SHARD_SUFFIX}"
    with atomic_path(directory / name) as tmp:
        tmp.write_bytes(payload)
    return WrittenShard(
        name, int(tensor.shape[0]), len(payload), hashlib.sha256(payload).hexdigest()
    )


class ShardLayoutError(StoreCorruptError):
    """A shard's header or shape contradicts the store's manifest (the manifest was edited, or
    the shard comes from another store): naming both."""


def check_shard(
    path: Path, *, num_slots: int, size: int, fingerprint: str, layout: Any = None
) -> None:
    """Cheap structural check of one shard: size, header, format, fingerprint, shape.

    Args:
        layout: The manifest's :class:`~memrag.store.manifest.ShardLayout` (kind, row width,
            dtype), checked against the header when given.

    Raises:
        ShardLayoutError: the header contradicts ``layout``.
        StoreCorruptError: describing the first problem found.
    """
    if not path.is_file():
        raise StoreCorruptError(f"slot shard {path} is missing")
    actual = path.stat().st_size
    if actual != size:
        raise StoreCorruptError(
            f"slot shard {path} has {actual} bytes, expected {size} (truncated or altered)"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            view = handle.get_slice(_TENSOR) if _TENSOR in handle.keys() else None
            shape = view.get_shape() if view is not None else None
            dtype = view.get_dtype() if view is not None else None
    except (SafetensorError, OSError) as err:
        raise StoreCorruptError(f"slot shard {path} is unreadable: {err}") from None
    if metadata.get("format") != SHARD_FORMAT or shape is None:
        raise StoreCorruptError(f"{path} is not a memrag slot shard")
    if metadata.get("fingerprint") != fingerprint:
        raise StoreCorruptError(
            f"slot shard {path} was made by compressor {metadata.get('fingerprint')}, the "
            f"store's is {fingerprint}"
        )
    if layout is not None:
        found = (metadata.get("slot_kind"), int(shape[1]) if len(shape) > 1 else None, dtype)
        wanted = (layout.kind, layout.width, layout.dtype)
        if found != wanted:
            raise ShardLayoutError(
                f"slot shard {path} holds {found[0]!r} rows of width {found[1]} ({found[2]}), "
                f"the manifest says {wanted[0]!r} rows of width {wanted[1]} ({wanted[2]})"
            )
    if int(shape[0]) != num_slots:
        raise StoreCorruptError(
            f"slot shard {path} holds {shape[0]} slots, the database says {num_slots}"
        )


class ShardReader:
    """Reads slot ranges from shards through memory-mapped ``safe_open`` handles (LRU cache).

    Reads from many threads run in parallel: the lock guards only the handle cache.

    Args:
        directory: The store's shard directory.
        max_open: Handles kept open at most.
    """

    def __init__(self, directory: Path, *, max_open: int = 64) -> None:
        self.directory = Path(directory)
        self.max_open = max_open
        self._handles: collections.OrderedDict[str, object] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _handle(self, file: str) -> object:
        with self._lock:
            handle = self._handles.get(file)
            if handle is not None:
                self._handles.move_to_end(file)
                return handle
        path = self.directory / file
        if not path.is_file():
            raise FileNotFoundError(f"slot shard {path} is missing")
        try:
            handle = safe_open(str(path), framework="pt")
        except SafetensorError as err:
            raise StoreCorruptError(f"slot shard {path} is unreadable: {err}") from None
        with self._lock:
            handle = self._handles.setdefault(file, handle)
            while len(self._handles) > self.max_open:
                self._handles.popitem(last=False)
        return handle

    def read(self, file: str, start: int, count: int) -> torch.Tensor:
        """Slots ``[start, start + count)`` of shard ``file``.

        Raises:
            FileNotFoundError: the shard is gone (e.g. removed by a concurrent compaction).
            StoreCorruptError: the shard cannot be read or is shorter than the range.
        """
        handle = self._handle(file)
        try:
            view = handle.get_slice(_TENSOR)
            total = int(view.get_shape()[0])
            if start < 0 or start + count > total:
                raise StoreCorruptError(
                    f"slot shard {self.directory / file} has {total} slots, cannot read "
                    f"[{start}, {start + count})"
                )
            return view[start : start + count]
        except SafetensorError as err:
            raise StoreCorruptError(
                f"slot shard {self.directory / file} is unreadable: {err}"
            ) from None

    def forget(self, files: set[str] | None = None) -> None:
        """Drops cached handles (all, or those of ``files``)."""
        with self._lock:
            for name in list(self._handles):
                if files is None or name in files:
                    del self._handles[name]
