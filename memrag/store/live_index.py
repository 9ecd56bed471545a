"""The store's FAISS index, kept up to date with the database's journal, and its checkpoints.

The index on disk is a checkpoint (``index/index-<seq>.faiss``) plus the journal of vector
ids added and deleted after it, so it can always be brought up to date: :meth:`LiveIndex.load`
reads the newest checkpoint and replays the journal, :meth:`LiveIndex.refresh` replays what
other writers committed since, and a writer checkpoints when the journal has grown long
(:meth:`LiveIndex.maybe_checkpoint`). Searches hold :attr:`LiveIndex.lock` shared; commits
and index changes hold it exclusively.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ContextManager

import numpy as np

from memrag.store.database import Database
from memrag.store.errors import StoreCorruptError
from memrag.store.index import (
    IndexSpec,
    VectorIndex,
    list_checkpoints,
    normalize,
    read_checkpoint,
    remove_checkpoint,
    write_checkpoint,
)
from memrag.store.manifest import INDEX_DIR
from memrag.utils.rwlock import ReadWriteLock

logger = logging.getLogger(__name__)

#: Filtered searches on HNSW / IVF with at most this many candidates are done exactly.
EXACT_FILTER_LIMIT = 20_000
#: Index checkpoints are always written when the index is at most this big.
SMALL_INDEX_BYTES = 8 << 20
#: Re-reads when writers keep superseding the checkpoint being read.
INDEX_LOAD_ATTEMPTS = 5


class LiveIndex:
    """A store's vector index in memory, its journal position and its checkpoints.

    Args:
        root: The store directory (checkpoints live in its ``index/``).
        db: The store's database (vectors and journal).
        spec: The index type.
        dimension: The vectors' dimension.
        read_only: Never write checkpoints.
    """

    def __init__(
        self, root: Path, db: Database, spec: IndexSpec, dimension: int, *, read_only: bool
    ) -> None:
        self.directory = Path(root) / INDEX_DIR
        self.db = db
        self.spec = spec
        self.dimension = dimension
        self.read_only = read_only
        #: Shared by searches and reads, exclusive for commits and index changes.
        self.lock = ReadWriteLock()
        self.index = VectorIndex(spec, dimension)
        #: The last journal entry the in-memory index reflects.
        self.applied_seq = 0

    # ------------------------------------------------------------------ reading
    def load(self) -> None:
        """Loads the newest checkpoint and replays the journal after it.

        Raises:
            StoreCorruptError: no usable checkpoint (``memrag index verify --repair``
                rebuilds one).
        """
        self.index, self.applied_seq = self._load()

    def load_or_rebuild(self, writing: Callable[[], ContextManager[Any]] | None) -> bool:
        """:meth:`load`; when no checkpoint is usable and ``writing`` (the store's writer
        lock) is given, rebuilds the index from the database under it instead of raising.
        Returns whether it rebuilt.

        Raises:
            StoreCorruptError: no usable checkpoint, and no ``writing``.
        """
        try:
            self.load()
            return False
        except StoreCorruptError as err:
            if writing is None:
                raise
            logger.warning("%s; rebuilding the index from the database", err)
        # Nothing to replay: the rebuild reads every vector from the database.
        self.applied_seq = self.db.journal_head()
        with writing():
            self.rebuild()
        return True

    def refresh(self) -> None:
        """Brings the index up to date with other writers' committed changes."""
        if self.db.journal_head() <= self.applied_seq:
            return  # nothing new (this process's own writes update the index as they commit)
        with self.lock.write():
            try:
                head, entries = self.db.journal_since(self.applied_seq)
            except LookupError:  # folded into a newer checkpoint (e.g. after a compaction)
                self.index, self.applied_seq = self._load()
                return
            if entries:
                self._replay(self.index, entries)
            self.applied_seq = max(self.applied_seq, head)

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """``(vector id, cosine score)`` of the ``k`` nearest vectors, best first, among
        ``allowed`` ids when given (a small allowed set on an approximate index is searched
        exactly). Call with :attr:`lock` held for reading."""
        if (
            allowed is not None
            and self.index.structure != "flat"
            and len(allowed) <= EXACT_FILTER_LIMIT
        ):
            scores, vids = self._exact_search(query, allowed, k)
        else:
            found_scores, found_vids = self.index.search(query.reshape(1, -1), k, allowed=allowed)
            scores, vids = found_scores[0], found_vids[0]
        return [(int(v), float(s)) for v, s in zip(vids, scores) if v >= 0]

    def _exact_search(
        self, query: np.ndarray, allowed: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        vids, vectors = self.db.vectors(allowed.tolist(), self.dimension)
        scores = (
            normalize(vectors) @ normalize(query)[0] if len(vids) else np.zeros(0, dtype=np.float32)
        )
        top = np.argsort(-scores, kind="stable")[:k]
        return scores[top], vids[top]

    def stats(self) -> dict[str, int | str]:
        """Structure, live vectors, tombstones and journal entries not yet checkpointed."""
        with self.lock.read():
            return {
                "structure": self.index.structure,
                "vectors": self.index.live_count,
                "tombstones": len(self.index.tombstones),
                "journal_pending": self.applied_seq - self.db.checkpoint_seq(),
            }

    def _replay(self, index: VectorIndex, entries: list[tuple[int, str, int]]) -> None:
        added = {vid for _, op, vid in entries if op == "add"}
        deleted = {vid for _, op, vid in entries if op == "del"}
        index.remove(np.fromiter(deleted - added, dtype=np.int64))
        vids, vectors = self.db.vectors(sorted(added - deleted), self.dimension)
        index.add(vids, vectors)

    def _load(self) -> tuple[VectorIndex, int]:
        """The newest index checkpoint with the journal after it replayed.

        A writer in another process may supersede the checkpoint while it is read (it
        writes a newer one, deletes the old one and folds the journal into it): the read
        then starts over from the newer checkpoint.
        """
        attempts_left = INDEX_LOAD_ATTEMPTS
        while True:
            attempts_left -= 1
            required = self.db.checkpoint_seq()
            usable = [c for c in list_checkpoints(self.directory) if c.seq >= required]
            if not usable:
                raise StoreCorruptError(
                    f"{self.directory}: no index checkpoint at or after journal entry {required}; "
                    "`memrag index verify --repair` rebuilds the index from the database"
                )
            newest = usable[-1]
            try:
                index = read_checkpoint(newest, self.spec, self.dimension)
                head, entries = self.db.journal_since(newest.seq)
            except (StoreCorruptError, LookupError):
                superseded = not newest.sidecar.exists() or self.db.checkpoint_seq() > newest.seq
                if superseded and attempts_left > 0:
                    continue
                raise
            if entries:
                self._replay(index, entries)
            return index, max(newest.seq, head)

    # ------------------------------------------------------------------ writing (writer lock held)
    def apply(
        self, removed: list[int], added: list[int], vectors: np.ndarray | None = None
    ) -> None:
        """Applies a commit this process just made (call with :attr:`lock` held for writing)."""
        self.index.remove(np.asarray(removed, dtype=np.int64))
        if added:
            self.index.add(np.asarray(added, dtype=np.int64), vectors)
        self.applied_seq = self.db.journal_head()

    def maybe_checkpoint(self, *, force: bool = False, final: bool = False) -> None:
        """Checkpoints the index when the journal since the last checkpoint is long enough.

        During a series of writes, a checkpoint is due when the pending journal holds a
        quarter of the index (at least 10,000 entries), so a growing store rewrites its
        index a bounded number of times; at the end of a series (``final``), a small index
        is always checkpointed. An ``ivf`` index that has become large enough is trained.
        """
        if self.read_only:
            return
        with self.lock.write():
            pending = self.applied_seq - self.db.checkpoint_seq()
            train = self.index.wants_training()
            if pending <= 0 and not train:
                return
            small = self.index.ntotal * self.dimension * 4 <= SMALL_INDEX_BYTES
            due = (
                force
                or pending >= max(10_000, self.index.ntotal // 4)
                or (final and (small or train))
            )
            if not due:
                return
            if train:
                self.rebuild()
            else:
                self.write_checkpoint()

    def write_checkpoint(self) -> None:
        """Writes the index as of :attr:`applied_seq` and folds the journal into it."""
        seq = self.applied_seq
        checkpoint = write_checkpoint(self.directory, seq, self.index)
        with self.db.transaction() as conn:
            Database.set_meta(conn, "index_checkpoint_seq", str(seq))
            conn.execute("DELETE FROM journal WHERE seq <= ?", (seq,))
        for old in list_checkpoints(self.directory):
            if old.seq < checkpoint.seq:
                remove_checkpoint(old)
        logger.info("index checkpoint %s (%d vectors)", checkpoint.file.name, checkpoint.ntotal)

    def rebuild(self) -> None:
        """Rebuilds the FAISS index from the database's vectors and checkpoints it."""
        with self.lock.write():
            self.applied_seq = self.db.journal_head()
            vids, vectors = self.db.all_vectors(self.dimension)
            self.index = VectorIndex.build(self.spec, self.dimension, vids, vectors)
            self.write_checkpoint()
