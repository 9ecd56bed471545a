"""Repairing a store (``memrag index verify --repair``): what the database still describes.

:func:`repair_store` rebuilds the FAISS index from the vectors in SQLite, removes debris of
interrupted writes, and re-compresses the chunks of corrupt or missing shards from their text
(or, without a compressor, flags them ``use_text`` so they are served as text). A missing
database or a manifest from a newer memrag cannot be repaired.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memrag.store.errors import StoreCorruptError, StoreError
from memrag.store.manifest import SHARDS_DIR
from memrag.store.memory_store import MemoryStore
from memrag.store.processing import ChunkInput
from memrag.store.verify import VerifyReport, bad_shards, verify_store

logger = logging.getLogger(__name__)


@dataclass
class RepairReport:
    """What :func:`repair_store` did."""

    index_rebuilt: bool = False
    lexical_rebuilt: bool = False
    recompressed: int = 0
    text_only: int = 0
    shards_removed: int = 0
    before: VerifyReport | None = None
    after: VerifyReport | None = None

    def summary(self) -> str:
        """One line for people."""
        return (
            f"index rebuilt: {'yes' if self.index_rebuilt else 'no'}; lexical index rebuilt: "
            f"{'yes' if self.lexical_rebuilt else 'no'}; chunks re-compressed: "
            f"{self.recompressed}; "
            f"chunks now served as text: {self.text_only}; damaged shards removed: "
            f"{self.shards_removed}; "
            f"store now {'OK' if self.after is not None and self.after.ok else 'still damaged'}"
        )


def repair_store(
    path: str | Path,
    *,
    compressor: Any = None,
    embedder: Any = None,
    recompress: bool = True,
    **open_kwargs: Any,
) -> RepairReport:
    """Repairs what the database still describes (see the module docstring).

    Args:
        path: The store directory.
        compressor: The store's compressor (default: loaded from the manifest) for
            re-compressing chunks of damaged shards.
        embedder: The store's embedder (default: from the manifest).
        recompress: Re-compress chunks of damaged shards; when False (or the compressor
            cannot be loaded) they lose their slots and are flagged ``use_text``.
        open_kwargs: Passed to :meth:`MemoryStore.open`.

    Raises:
        StoreCorruptError / StoreVersionError: the damage cannot be repaired (missing
            database, unreadable or newer manifest).
    """
    root = Path(path)
    result = RepairReport(before=verify_store(root))
    fatal = [p for p in result.before.problems if p.part in ("manifest", "database")]
    if fatal:
        raise StoreCorruptError(
            "cannot repair: "
            + "; ".join(str(p) for p in fatal)
            + ". Rebuild the store from its corpus."
        )
    store = MemoryStore.open(
        root, compressor, embedder, check=False, rebuild_index=True, **open_kwargs
    )
    try:
        result.index_rebuilt = store.index_was_rebuilt
        damaged = bad_shards(result.before)
        with store.writing():
            if "lexical" in result.before.parts():
                if store.db.lexical_problems():  # opening for writing re-makes a missing one
                    store.db.rebuild_lexical_index()
                result.lexical_rebuilt = True
            if damaged:
                rows = [
                    r
                    for s in store.db.shards()
                    if s.file in damaged
                    for r in store.db.rows_by_shard(s.shard_id)
                ]
                done = _recompress(store, rows) if recompress and rows else False
                with store.db.transaction() as conn:
                    if not done:
                        conn.executemany(
                            "UPDATE chunks SET shard_id = NULL, slot_start = NULL, slot_count = "
                            "NULL, use_text = 1 "
                            "WHERE vid = ?",
                            [(r.vid,) for r in rows],
                        )
                    conn.executemany(
                        "DELETE FROM shards WHERE file = ?", [(name,) for name in damaged]
                    )
                for name in damaged:
                    (root / SHARDS_DIR / name).unlink(missing_ok=True)
                result.recompressed = len(rows) if done else 0
                result.text_only = 0 if done else len(rows)
                result.shards_removed = len(damaged)
        store.reader.shards.forget()
    finally:
        store.close()
    result.after = verify_store(root)
    return result


def _recompress(store: Any, rows: list) -> bool:
    try:
        processor = store.processor
    except (StoreError, OSError, ValueError) as err:
        logger.warning(
            "cannot load the store's compressor to re-compress damaged chunks (%s); serving "
            "them as text",
            err,
        )
        return False
    inputs = [ChunkInput(r.id, r.text, r.metadata, r.source_id) for r in rows]
    for start in range(0, len(inputs), 64):
        store.write(processor.process(inputs[start : start + 64]))
    return True
