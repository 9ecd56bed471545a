"""Batched decoding: many prompts decoded together, rows joining and leaving at every step.

:class:`BatchedGenerator` is the engine behind ``memrag serve``'s batched decoding; it
starts every batch from :meth:`memrag.compressor.Compressor.build` (the one splice path) and
decodes it with its own step loop, so that each row keeps its own stop strings, token limit
and sampling options, streams its own text, and can leave (finished, failed, cancelled) or
join while the others go on.
"""

from __future__ import annotations

from memrag.batching.engine import (
    DEFAULT_BATCH_WINDOW,
    DEFAULT_MAX_BATCH_SIZE,
    BatchedGenerator,
    BatcherClosedError,
)
from memrag.batching.handle import RowCancelledError, RowHandle
from memrag.batching.rows import RowText
from memrag.batching.sampling import RowSampler, sample, warp_scores
from memrag.batching.state import DecodeState

__all__ = [
    "DEFAULT_BATCH_WINDOW",
    "DEFAULT_MAX_BATCH_SIZE",
    "BatchedGenerator",
    "BatcherClosedError",
    "DecodeState",
    "RowCancelledError",
    "RowHandle",
    "RowSampler",
    "RowText",
    "sample",
    "warp_scores",
]
