"""A readers-writer lock: many readers at once, or one writer.

Writers are preferred: once a writer waits, new readers wait behind it (so a steady stream of
searches cannot starve a document add). Both sides are re-entrant within a thread, and the
thread holding the write side may also read; a thread holding only the read side cannot take
the write side (that would deadlock against another reader doing the same), and is refused.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class ReadWriteLock:
    """Shared (:meth:`read`) and exclusive (:meth:`write`) locking, as context managers."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers: dict[int, int] = {}  # thread id -> read depth
        self._writer: int | None = None
        self._write_depth = 0
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        """Holds the lock shared with other readers."""
        me = threading.get_ident()
        with self._cond:
            if self._writer != me and me not in self._readers:
                self._cond.wait_for(lambda: self._writer is None and not self._writers_waiting)
            self._readers[me] = self._readers.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                depth = self._readers[me] - 1
                if depth:
                    self._readers[me] = depth
                else:
                    del self._readers[me]
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """Holds the lock alone.

        Raises:
            RuntimeError: the calling thread holds the read side (and not the write side).
        """
        me = threading.get_ident()
        with self._cond:
            if self._writer != me:
                if me in self._readers:
                    raise RuntimeError("cannot take the write lock while holding the read lock")
                self._writers_waiting += 1
                try:
                    self._cond.wait_for(lambda: self._writer is None and not self._readers)
                finally:
                    self._writers_waiting -= 1
                self._writer = me
            self._write_depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._write_depth -= 1
                if not self._write_depth:
                    self._writer = None
                    self._cond.notify_all()

    @property
    def readers(self) -> int:
        """Threads holding the read side now."""
        return len(self._readers)
