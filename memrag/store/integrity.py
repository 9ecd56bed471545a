"""Per-chunk integrity of stored memory: checksums at write, checks at read, a failure log.

Each chunk's memory rows are checksummed (CRC-32 of their bytes as stored) when they are
written; a read recomputes the checksum of the rows it got and checks that decoded memory is
finite. A chunk that fails is never spliced: the store hands it out as its text (``use_text``),
logs a warning naming the chunk and ``memrag index verify --repair``, and counts it
(:class:`IntegrityLog`, reported by ``memrag index info`` and ``/healthz``). Reading a chunk's
rows already touches every byte, so the check costs one pass over them (measured per retrieved
chunk in ``memrag bench``'s ``integrity_check_s``).
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: What a damaged chunk's warning tells the operator to run.
REPAIR_HINT = "run `memrag index verify --repair STORE` to restore it"


def rows_checksum(rows: torch.Tensor) -> int:
    """CRC-32 of a tensor's bytes (any dtype, on CPU), as an unsigned 32-bit integer."""
    data = rows.detach().to("cpu").contiguous().view(torch.uint8).numpy()
    return zlib.crc32(data) & 0xFFFFFFFF


def finite(memory: Any) -> bool:
    """Whether decoded memory (embedding slots or K/V memory) holds only finite values.

    Checked through each tensor's sum (accumulated in float32): an inf or NaN anywhere makes
    the sum inf or NaN, and a sum is ten times cheaper than an element-wise test. The sum of
    finite values overflowing would also be refused, which only errs on the safe side (the
    chunk is served as text).
    """
    tensors = [memory.tensor] if hasattr(memory, "tensor") else [memory.keys, memory.values]
    return all(bool(torch.isfinite(t.sum(dtype=torch.float32))) for t in tensors)


@dataclass(frozen=True)
class IntegrityFailure:
    """One chunk that failed its check on a read."""

    chunk_id: str
    shard: str | None
    reason: str


class IntegrityLog:
    """Counts the chunks that failed their integrity check on read (thread-safe).

    Each chunk is logged as a warning the first time it fails, and counted every time.
    """

    def __init__(self, store: str) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._reads = 0
        self._failures: Counter[str] = Counter()
        self._last: dict[str, IntegrityFailure] = {}

    def record(self, failure: IntegrityFailure) -> None:
        """Counts ``failure`` and warns about its chunk (once per chunk)."""
        with self._lock:
            first = failure.chunk_id not in self._last
            self._failures[failure.reason.split(":")[0]] += 1
            self._last[failure.chunk_id] = failure
        if first:
            logger.warning(
                "%s: chunk %r (shard %s) failed its integrity check (%s); serving its text "
                "instead of its memory; %s",
                self._store,
                failure.chunk_id,
                failure.shard,
                failure.reason,
                REPAIR_HINT,
            )

    def stats(self, limit: int = 20) -> dict[str, Any]:
        """``{"failed_reads", "failed_chunks", "by_reason", "chunks"}`` (at most ``limit`` ids)."""
        with self._lock:
            return {
                "failed_reads": sum(self._failures.values()),
                "failed_chunks": len(self._last),
                "by_reason": dict(self._failures),
                "chunks": sorted(self._last)[:limit],
            }
