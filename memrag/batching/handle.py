"""The consumer's side of one batched row: its text as it comes, its result, cancelling it.

A :class:`RowHandle` is filled by the batcher's thread and read from anywhere: iterate it in
a thread (blocking), or ``async for`` it on an event loop (no thread is held while waiting).
Every row ends exactly once: with its :class:`~memrag.generation.Generation`, or with an
error (:class:`RowCancelledError` when it was cancelled or the batcher shut down).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from memrag.generation import Generation


class RowCancelledError(RuntimeError):
    """The row was cancelled (by its consumer, or because the batcher closed) before it ended."""


class RowHandle(Iterator[str]):
    """Text chunks of one row's answer, then its :attr:`generation`.

    Iterating it (``for`` or ``async for``) yields the text chunks and, when the row failed,
    raises its error. :meth:`cancel` asks the batcher to drop the row at its next step;
    :meth:`wait` / :meth:`wait_async` return once the row has really left the batch.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._chunks: collections.deque[str] = collections.deque()
        self._done = False
        self._error: BaseException | None = None
        self._generation: Generation | None = None
        self._cancel = threading.Event()
        self._on_cancel: Callable[[], None] | None = None
        self._waker: Callable[[], None] | None = None
        self._batch_sizes = 0
        self._steps = 0
        self.max_batch_size = 0

    # ------------------------------------------------------------------ the batcher's side
    def emit(self, text: str) -> None:
        """Adds a text chunk (batcher thread)."""
        if text:
            with self._cond:
                self._chunks.append(text)
                self._wake()

    def finish(self, generation: Generation) -> None:
        """Ends the row with its answer (batcher thread); later ends are ignored."""
        self._end(generation, None)

    def fail(self, error: BaseException) -> None:
        """Ends the row with ``error`` (batcher thread); later ends are ignored."""
        self._end(None, error)

    def note_batch(self, rows: int) -> None:
        """Records that the row's latest token was decoded in a batch of ``rows`` rows."""
        self._steps += 1
        self._batch_sizes += rows
        self.max_batch_size = max(self.max_batch_size, rows)

    def _end(self, generation: Generation | None, error: BaseException | None) -> None:
        with self._cond:
            if self._done:
                return
            self._generation, self._error, self._done = generation, error, True
            self._wake()

    def _wake(self) -> None:
        self._cond.notify_all()
        if self._waker is not None:
            waker, self._waker = self._waker, None
            waker()

    # ------------------------------------------------------------------ the consumer's side
    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        """Whether the row has ended (and left the batch)."""
        return self._done

    @property
    def generation(self) -> Generation:
        """The answer, once the row ended without an error.

        Raises:
            RuntimeError: the row has not ended, or ended with an error.
        """
        if self._generation is None:
            raise RuntimeError("the row has no result (still running, or it failed)")
        return self._generation

    @property
    def error(self) -> BaseException | None:
        """The error the row ended with, if any."""
        return self._error

    @property
    def mean_batch_size(self) -> float:
        """Mean number of rows in the batches its tokens were decoded in (0 before any)."""
        return self._batch_sizes / self._steps if self._steps else 0.0

    def cancel(self) -> None:
        """Asks the batcher to drop the row (its other rows go on).

        A row still waiting to join the batch ends at once; a row in the batch leaves it at
        the next step.
        """
        if self._cancel.is_set() or self._done:
            return
        self._cancel.set()
        if self._on_cancel is not None:
            self._on_cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the row has ended; returns whether it has."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done, timeout)

    async def wait_async(self) -> None:
        """Waits (on the event loop) until the row has ended."""
        await self._next_async(consume=False)

    def __iter__(self) -> RowHandle:
        return self

    def __next__(self) -> str:
        with self._cond:
            self._cond.wait_for(lambda: self._chunks or self._done)
            return self._take()

    def _take(self) -> str:
        """A chunk, or the end (caller holds the lock and there is one or the other)."""
        if self._chunks:
            return self._chunks.popleft()
        if self._error is not None:
            raise self._error
        raise StopIteration

    def __aiter__(self) -> AsyncIterator[str]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[str]:
        while True:
            chunk = await self._next_async(consume=True)
            if chunk is None:
                return
            yield chunk

    async def _next_async(self, *, consume: bool) -> str | bool | None:
        """Next chunk (``consume``) or whether the row is done (not ``consume``), waiting on the loop."""
        loop = asyncio.get_running_loop()
        while True:
            event = asyncio.Event()
            with self._cond:
                if not consume and self._done:
                    return True
                if consume and (self._chunks or self._done):
                    try:
                        return self._take()
                    except StopIteration:
                        return None
                self._waker = _threadsafe_setter(loop, event)
            await event.wait()


def _threadsafe_setter(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> Callable[[], None]:
    def wake() -> None:
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass

    return wake
