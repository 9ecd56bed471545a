"""Timing one answer: time to first token and total latency, with an injectable clock.

:class:`AnswerTimer` is started when the retrieved chunk ids are known, marks the moment the
mode's stored payload (text, slots or key/value cache) is in memory, and is passed to
``model.generate`` as its streamer: ``generate`` hands the prompt to the streamer first and
then every generated token, so the second ``put`` is the first token. Everything is read from
a clock given to the timer (``time.perf_counter`` by default), so tests drive it with a fake
clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from transformers.generation.streamers import BaseStreamer

Clock = Callable[[], float]


@dataclass(frozen=True)
class AnswerTiming:
    """Seconds measured for one answer, all from the timer's start.

    Attributes:
        fetch_s: Until the mode's stored payload was loaded.
        ttft_s: Until the first generated token existed.
        latency_s: Until the whole answer was generated and decoded.
    """

    fetch_s: float
    ttft_s: float
    latency_s: float


class AnswerTimer(BaseStreamer):
    """Times one answer; doubles as a transformers streamer to catch the first token.

    Args:
        clock: Returns the current time in seconds (monotonic).
    """

    def __init__(self, clock: Clock = time.perf_counter) -> None:
        self.clock = clock
        self._start: float | None = None
        self._fetched: float | None = None
        self._first_token: float | None = None
        self._done: float | None = None
        self._puts = 0

    def start(self) -> None:
        """Starts (or restarts) the measurement."""
        self._start = self.clock()
        self._fetched = self._first_token = self._done = None
        self._puts = 0

    def fetched(self) -> None:
        """Marks that the stored payload of the retrieved chunks is in memory."""
        self._fetched = self.clock()

    def put(self, value: Any) -> None:
        """Called by ``generate``: first with the prompt, then with each new token."""
        self._puts += 1
        if self._puts == 2 and self._first_token is None:
            self._first_token = self.clock()

    def end(self) -> None:
        """Called by ``generate`` when generation ends."""

    def stop(self) -> AnswerTiming:
        """Ends the measurement (call once the answer is decoded) and returns it.

        Raises:
            RuntimeError: the timer was not started, or no token was generated.
        """
        if self._start is None:
            raise RuntimeError("the timer was not started")
        self._done = self.clock()
        if self._first_token is None:
            raise RuntimeError(
                "no generated token reached the timer (was it passed as the streamer?)"
            )
        fetched = self._fetched if self._fetched is not None else self._start
        return AnswerTiming(
            fetch_s=fetched - self._start,
            ttft_s=self._first_token - self._start,
            latency_s=self._done - self._start,
        )


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation (NumPy's default method).

    Returns ``nan`` for no values.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def timed(clock: Clock, func: Callable[[], Any]) -> tuple[Any, float]:
    """Runs ``func`` and returns its result with the seconds it took on ``clock``."""
    started = clock()
    result = func()
    return result, clock() - started
