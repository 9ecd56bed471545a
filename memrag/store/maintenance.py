"""Store upkeep: compaction (rewrite slot shards, rebuild the index) and removal of debris."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from typing import Any

import torch

from memrag.store.database import ChunkRow, Database
from memrag.store.index import list_checkpoints
from memrag.store.manifest import INDEX_DIR, SHARDS_DIR
from memrag.store.shards import write_shard

logger = logging.getLogger(__name__)


@dataclass
class CompactReport:
    """What :meth:`MemoryStore.compact` did."""

    shards_before: int
    shards_after: int
    shard_bytes_before: int
    shard_bytes_after: int
    slots_dropped: int
    tombstones_dropped: int
    index_structure: str

    def summary(self) -> str:
        """One line for people."""
        return (
            f"shards {self.shards_before} -> {self.shards_after}, slot bytes "
            f"{self.shard_bytes_before:,} -> "
            f"{self.shard_bytes_after:,} ({self.slots_dropped} dead slots dropped), "
            f"{self.tombstones_dropped} index tombstones dropped, index {self.index_structure}"
        )


def compact(store: Any, *, target_shard_slots: int = 65_536) -> CompactReport:
    """Rewrites slot shards without deleted slots, merges small shards, rebuilds the index.

    Concurrent readers keep working: they re-read a chunk's location when its old shard
    has gone.
    """
    with store.writing():
        before = store.db.shards()
        live = store.db.live_slots_by_shard()
        rewrite = [
            s
            for s in before
            if live.get(s.shard_id, 0) < s.num_slots or s.num_slots < target_shard_slots // 2
        ]
        dropped = sum(s.num_slots - live.get(s.shard_id, 0) for s in rewrite)
        _rewrite_shards(store, rewrite, target_shard_slots)
        tombstones = len(store.live_index.index.tombstones)
        store.live_index.rebuild()
        store.db.vacuum()
        after = store.db.shards()
        return CompactReport(
            shards_before=len(before),
            shards_after=len(after),
            shard_bytes_before=sum(s.bytes for s in before),
            shard_bytes_after=sum(s.bytes for s in after),
            slots_dropped=dropped,
            tombstones_dropped=tombstones,
            index_structure=store.live_index.index.structure,
        )


def _rewrite_shards(store: Any, shards: list, target_slots: int) -> None:
    info = store.memory
    pending_rows: list[ChunkRow] = []
    pending_tensors: list[torch.Tensor] = []
    pending_old: list = []
    size = 0

    def flush() -> None:
        nonlocal size
        files = [s.file for s in pending_old]
        if pending_rows:
            shard = write_shard(
                store.path / SHARDS_DIR,
                torch.cat(pending_tensors),
                fingerprint=info.fingerprint,
                slot_kind=info.kind,
            )
        # Readers of this store wait while the slots move (readers elsewhere re-read a
        # chunk's location when its old shard has gone).
        with store.live_index.lock.write():
            with store.db.transaction() as conn:
                if pending_rows:
                    shard_id = Database.insert_shard(
                        conn, shard.file, shard.num_slots, shard.bytes, shard.sha256
                    )
                    start = 0
                    for row in pending_rows:
                        conn.execute(
                            "UPDATE chunks SET shard_id = ?, slot_start = ? WHERE vid = ?",
                            (shard_id, start, row.vid),
                        )
                        start += int(row.slot_count or 0)
                conn.executemany(
                    "DELETE FROM shards WHERE shard_id = ?", [(s.shard_id,) for s in pending_old]
                )
            store.reader.shards.forget(set(files))
            for name in files:
                (store.path / SHARDS_DIR / name).unlink(missing_ok=True)
        pending_rows.clear()
        pending_tensors.clear()
        pending_old.clear()
        size = 0

    for shard in shards:
        rows = store.db.rows_by_shard(shard.shard_id)
        for row in rows:
            pending_tensors.append(
                store.reader.shards.read(shard.file, int(row.slot_start or 0), int(row.slot_count or 0))
            )
            pending_rows.append(row)
            size += int(row.slot_count or 0)
        pending_old.append(shard)
        if size >= target_slots:
            flush()
    if pending_old:
        flush()


def remove_debris(store: Any) -> None:
    """Removes what interrupted writers left: temporary files, unreferenced shards, and
    index files other than the newest checkpoint (e.g. one whose sidecar was never written).
    """
    known = {s.file for s in store.db.shards()}
    checkpoints = list_checkpoints(store.path / INDEX_DIR)
    keep = {checkpoints[-1].file.name, checkpoints[-1].sidecar.name} if checkpoints else set()
    removed = 0
    for directory in (store.path, store.path / SHARDS_DIR, store.path / INDEX_DIR):
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            name = entry.name
            stray = name.startswith(".") and name.endswith(".tmp")
            stray |= (
                directory.name == SHARDS_DIR and name.endswith(".safetensors") and name not in known
            )
            stray |= directory.name == INDEX_DIR and name.startswith("index-") and name not in keep
            if stray:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
    if removed:
        logger.warning("removed %d file(s) left by an interrupted write in %s", removed, store.path)
