"""Blocking iterators (a decoder's stream) consumed from async code."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


async def _in_thread(function: Any, *args: Any) -> Any:
    """``function(*args)`` in the default executor, with this task's context variables."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    return await loop.run_in_executor(None, functools.partial(context.run, function, *args))


async def iterate_in_thread(iterator: Iterator[T]) -> AsyncIterator[T]:
    """Iterates a blocking iterator from async code, one ``next`` at a time in a worker thread.

    When the consumer stops early (or is cancelled) the iterator's ``cancel()`` (when it has
    one, as :class:`~memrag.generation.TextStream` does) is called at once, and the iterator
    is closed once its pending ``next`` returns, which stops the decoder.
    """
    done = object()
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(_in_thread(next, iterator, done))
            item = await asyncio.shield(pending)
            pending = None
            if item is done:
                return
            yield item
    finally:
        if pending is not None and not pending.done():
            cancel = getattr(iterator, "cancel", None)
            if cancel is not None:
                cancel()  # a decoder in a long prefill stops at its next piece
            try:
                await asyncio.wait([pending])
            except BaseException:  # noqa: BLE001 - the consumer is going away anyway
                pass
        close = getattr(iterator, "close", None)
        if close is not None:
            # Closing joins the decoder's worker thread: keep that wait off the event loop.
            try:
                await _in_thread(close)
            except BaseException:  # noqa: BLE001 - cancelled meanwhile: close here instead
                close()
                raise
