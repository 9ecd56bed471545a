"""The writer lock of a store: one writing process at a time (a file lock), re-entrant within it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from memrag.store.errors import StoreLockedError


class WriterLock:
    """A file lock held across a series of writes, re-entrant within the process.

    Args:
        store: The store directory (named in errors).
        lock_file: The lock file (``<store>/.write.lock``).
        timeout: Seconds to wait for another process to release it.
    """

    def __init__(self, store: Path, lock_file: Path, timeout: float) -> None:
        import filelock

        self.store = store
        self._file_lock = filelock.FileLock(str(lock_file))
        self.timeout = timeout
        self._lock = threading.RLock()
        self._depth = 0

    @contextlib.contextmanager
    def hold(
        self, *, on_acquire: Callable[[], None], on_release: Callable[[], None]
    ) -> Iterator[None]:
        """Holds the lock; the outermost hold calls ``on_acquire`` once it has the file lock and
        ``on_release`` before giving it back (the file lock is released even if it fails).

        Raises:
            StoreLockedError: another process held the lock longer than :attr:`timeout`.
        """
        import filelock

        with self._lock:
            if self._depth == 0:
                try:
                    self._file_lock.acquire(timeout=self.timeout)
                except filelock.Timeout:
                    raise StoreLockedError(
                        f"{self.store} is being written by another process (lock "
                        f"{self._file_lock.lock_file}); waited {self.timeout:.0f}s"
                    ) from None
                try:
                    on_acquire()
                except BaseException:
                    self._file_lock.release()
                    raise
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    try:
                        on_release()
                    finally:
                        self._file_lock.release()
