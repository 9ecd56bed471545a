"""Admission control: a bounded queue in front of a few generation slots, deadlines, disconnects.

A request that needs the model (a chat completion, a document add) is *admitted* first: when
``slots + max_queue`` requests are already in, it is refused at once (the server answers 429
with ``Retry-After``). An admitted request does its cheap work (parsing, retrieval) and then
waits for one of the *slots*; it gives its place back when it finishes, fails, times out or
its client goes away. With batched decoding the slots are the rows of the batch
(``max_batch_size``); decoding one request at a time, the compressor serialises its decoder
with a lock, so one slot is the natural default. Queued requests wait on an ``asyncio``
semaphore (no thread each) rather than on a lock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class QueueFullError(RuntimeError):
    """No room for another request; retry after :attr:`retry_after` seconds."""

    def __init__(self, retry_after: int, in_flight: int) -> None:
        super().__init__(
            f"the server is busy ({in_flight} requests in flight); retry in {retry_after}s"
        )
        self.retry_after = retry_after
        self.in_flight = in_flight


class RequestTimeoutError(TimeoutError):
    """The request used up its time."""


class ClientDisconnectedError(ConnectionError):
    """The client went away before its answer was complete."""


class ServerShuttingDownError(RuntimeError):
    """The server stopped the request: its graceful shutdown ran out of time."""


class Ticket:
    """One admitted request's place: :meth:`acquire` a slot, then :meth:`release` it all.

    :meth:`release` is idempotent and safe whether or not a slot was acquired.
    """

    def __init__(self, limiter: GenerationLimiter) -> None:
        self._limiter = limiter
        self._has_slot = False
        self._released = False
        self._slot_since: float | None = None
        #: Seconds spent waiting for the slot (set by :meth:`acquire`).
        self.queue_seconds = 0.0

    @property
    def has_slot(self) -> bool:
        """Whether this ticket holds a generation slot."""
        return self._has_slot

    async def acquire(self) -> None:
        """Waits for a generation slot (cancel the wait to give up)."""
        if self._released:
            raise RuntimeError("this ticket was released")
        if self._has_slot:
            return
        start = time.monotonic()
        await self._limiter._semaphore.acquire()
        self._has_slot = True
        self._slot_since = time.monotonic()
        self.queue_seconds = self._slot_since - start

    def release(self) -> None:
        """Gives back the slot (if held) and the place in the queue."""
        if self._released:
            return
        self._released = True
        if self._has_slot:
            self._has_slot = False
            if self._slot_since is not None:
                self._limiter._record(time.monotonic() - self._slot_since)
            self._limiter._semaphore.release()
        self._limiter._admitted -= 1


class GenerationLimiter:
    """At most ``max_concurrent`` slots, at most ``max_queue`` admitted requests waiting.

    Use from one event loop (it is not thread-safe; the server's handlers all run on the loop).

    Args:
        max_concurrent: Slots (generations running at once).
        max_queue: Admitted requests beyond the slots.
        retry_after_min / retry_after_max: Bounds of the suggested retry delay in seconds.
    """

    def __init__(
        self,
        max_concurrent: int = 1,
        max_queue: int = 8,
        *,
        retry_after_min: int = 1,
        retry_after_max: int = 60,
    ) -> None:
        if max_concurrent < 1 or max_queue < 0:
            raise ValueError("max_concurrent must be >= 1 and max_queue >= 0")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.retry_after_min = retry_after_min
        self.retry_after_max = retry_after_max
        self._semaphore = asyncio.Semaphore(max_concurrent)
        self._admitted = 0
        self._average_seconds: float | None = None

    @property
    def capacity(self) -> int:
        """Requests admitted at most: slots plus queue."""
        return self.max_concurrent + self.max_queue

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released."""
        return self._admitted

    @property
    def active(self) -> int:
        """Slots in use."""
        return self.max_concurrent - self._semaphore._value

    def admit(self) -> Ticket:
        """A ticket for one more request.

        Raises:
            QueueFullError: ``capacity`` requests are already in.
        """
        if self._admitted >= self.capacity:
            raise QueueFullError(self.retry_after(), self._admitted)
        self._admitted += 1
        return Ticket(self)

    def retry_after(self) -> int:
        """Seconds after which a slot is likely free: queue length times the mean hold time."""
        mean = self._average_seconds if self._average_seconds is not None else 1.0
        waves = max(1, math.ceil((self._admitted - self.max_concurrent + 1) / self.max_concurrent))
        return int(min(self.retry_after_max, max(self.retry_after_min, math.ceil(mean * waves))))

    def _record(self, seconds: float) -> None:
        # Exponential moving average of slot hold times, for Retry-After.
        if self._average_seconds is None:
            self._average_seconds = seconds
        else:
            self._average_seconds = 0.8 * self._average_seconds + 0.2 * seconds

    def stats(self) -> dict[str, Any]:
        """Slots in use, requests waiting, and the limits."""
        return {
            "active": self.active,
            "queued": max(0, self._admitted - self.active),
            "max_concurrent": self.max_concurrent,
            "max_queue": self.max_queue,
        }


class RequestGuard:
    """A request's deadline, its client's liveness and the server's shutdown, for awaiting
    work on its behalf.

    Args:
        receive: The ASGI ``receive`` of the request, read only after its body (it then
            reports ``http.disconnect`` when the client goes away).
        deadline: ``loop.time()`` at which the request times out.
        stopping: Set when the server stops the requests still running (the end of its
            graceful shutdown); none: never.
    """

    def __init__(
        self, receive: Any, deadline: float, stopping: asyncio.Event | None = None
    ) -> None:
        self.deadline = deadline
        self._receive = receive
        self._disconnected = asyncio.Event()
        self._stopping = stopping if stopping is not None else asyncio.Event()
        self._watcher = asyncio.ensure_future(self._watch())
        self._waiter = asyncio.ensure_future(self._disconnected.wait())
        self._stop_waiter = asyncio.ensure_future(self._stopping.wait())

    async def _watch(self) -> None:
        try:
            while True:
                message = await self._receive()
                if message.get("type") == "http.disconnect":
                    self._disconnected.set()
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a broken receive means the client is gone
            self._disconnected.set()

    @property
    def disconnected(self) -> bool:
        """Whether the client has gone away."""
        return self._disconnected.is_set()

    @property
    def stopped(self) -> bool:
        """Whether the server has stopped its requests (it is shutting down)."""
        return self._stopping.is_set()

    def remaining(self) -> float:
        """Seconds left before the deadline (may be negative)."""
        return self.deadline - asyncio.get_running_loop().time()

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Awaits ``awaitable`` unless the deadline passes, the client leaves or the server
        stops its requests first.

        On any of these, ``awaitable`` is cancelled (and awaited, so its clean-up has run) and
        :class:`RequestTimeoutError`, :class:`ClientDisconnectedError` or
        :class:`ServerShuttingDownError` is raised.
        """
        task = asyncio.ensure_future(awaitable)
        if self.disconnected or self.stopped:
            await _cancel(task)
            self._raise_why_stopped()
        try:
            done, _ = await asyncio.wait(
                {task, self._waiter, self._stop_waiter},
                timeout=max(0.0, self.remaining()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        except asyncio.CancelledError:
            await _cancel(task)
            raise
        if task in done:
            return task.result()
        await _cancel(task)
        self._raise_why_stopped()
        raise RequestTimeoutError("request timed out")

    def _raise_why_stopped(self) -> None:
        if self.disconnected:
            raise ClientDisconnectedError("client disconnected")
        if self.stopped:
            raise ServerShuttingDownError("the server is shutting down")

    async def close(self) -> None:
        """Stops watching the client and the server."""
        for task in (self._watcher, self._waiter, self._stop_waiter):
            await _cancel(task)


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancels ``task`` and waits until it has finished (its ``finally`` blocks included)."""
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning
        return
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()
