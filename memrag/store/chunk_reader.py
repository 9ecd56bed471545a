"""Reading chunks from a store: their rows, their memory from the shards, each chunk checked.

A chunk's memory is served only when its rows match the checksum recorded at write and decode
to finite values; a chunk that fails (or whose shard is damaged or missing) is served as its
text, recorded in :attr:`ChunkReader.integrity` and warned with the ``verify --repair`` hint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from memrag.memory.kv import KVSlots
from memrag.memory.slots import Slots
from memrag.store.database import ChunkRow, Database
from memrag.store.errors import StoreCorruptError
from memrag.store.integrity import (
    REPAIR_HINT,
    IntegrityFailure,
    IntegrityLog,
    finite,
    rows_checksum,
)
from memrag.store.manifest import MANIFEST_NAME, SHARDS_DIR, Manifest
from memrag.store.records import ChunkRecord
from memrag.store.shards import ShardLayoutError, ShardReader, check_shard

logger = logging.getLogger(__name__)


class ChunkReader:
    """Turns database rows into :class:`ChunkRecord`\\ s with their memory.

    Args:
        root: The store directory.
        manifest: The store's manifest (what memory its shards hold).
        db: The store's database.
    """

    def __init__(self, root: Path, manifest: Manifest, db: Database) -> None:
        self.path = Path(root)
        self.manifest = manifest
        self.db = db
        #: Memory-mapped shard files.
        self.shards = ShardReader(self.path / SHARDS_DIR)
        #: Chunks whose memory failed its integrity check on a read (served as text).
        self.integrity = IntegrityLog(str(self.path))
        #: Check each chunk read (checksum, finite values); off only to measure what it costs.
        self.verify = True
        #: ``{shard file: problem}`` of the shards found damaged when the store was opened.
        self.damaged_shards: dict[str, str] = {}

    def integrity_report(self) -> dict[str, Any]:
        """Damaged shards found on open and chunks that failed their check on a read since."""
        return {"damaged_shards": dict(self.damaged_shards), **self.integrity.stats()}

    def records(self, rows: list[ChunkRow], with_slots: bool) -> list[ChunkRecord]:
        """The records of ``rows``; with their memory when ``with_slots`` (a chunk whose memory
        fails its check is served as text)."""
        slots = self.read_memory(rows) if with_slots else {}
        return [
            ChunkRecord(
                id=row.id,
                text=row.text,
                metadata=row.metadata,
                slots=slots.get(row.vid),
                # A chunk whose memory failed its check is served as text.
                use_text=row.use_text
                or (with_slots and bool(row.slot_count) and row.vid not in slots),
                fidelity=row.fidelity,
            )
            for row in rows
        ]

    def scored_records(self, hits: list[tuple[int, float]], with_slots: bool) -> list[ChunkRecord]:
        """The records of search hits ``(vector id, score)``, best first, scores set (hits
        deleted meanwhile are left out)."""
        rows = self.db.rows_by_vids([vid for vid, _ in hits])
        found = [(rows[vid], score) for vid, score in hits if vid in rows]
        records = self.records([row for row, _ in found], with_slots)
        for record, (_, score) in zip(records, found):
            record.score = score
        return records

    def read_memory(
        self, rows: list[ChunkRow], *, retry: bool = True
    ) -> dict[int, Slots | KVSlots]:
        """The memory of each row that has some and passes its integrity check.

        A row whose shard is missing or unreadable, whose bytes do not match their checksum,
        or whose decoded memory is not finite is left out (its chunk is served as text) and
        recorded in :attr:`integrity`.
        """
        memory = self.manifest.memory_info
        codec = memory.codec() if memory.packed_kv else None
        result: dict[int, Slots | KVSlots] = {}
        for row in rows:
            if row.shard_file is None or not row.slot_count:
                continue
            if row.shard_file in self.damaged_shards:
                self._fail(row, f"damaged shard: {self.damaged_shards[row.shard_file]}")
                continue
            try:
                tensor = self.shards.read(
                    row.shard_file, int(row.slot_start or 0), int(row.slot_count)
                )
            except FileNotFoundError:
                if retry:
                    # A concurrent compaction moved the slots: read the rows' new locations.
                    self.shards.forget()
                    fresh = self.db.rows_by_vids([r.vid for r in rows])
                    return self.read_memory(
                        [fresh[r.vid] for r in rows if r.vid in fresh], retry=False
                    )
                self._fail(row, "missing shard")
                continue
            except StoreCorruptError as err:
                self._fail(row, f"unreadable shard: {err}")
                continue
            decoded = self._decode(row, tensor, codec)
            if decoded is not None:
                result[row.vid] = decoded
        return result

    def _decode(self, row: ChunkRow, tensor: torch.Tensor, codec: Any) -> Slots | KVSlots | None:
        """One row's memory from its stored rows, or ``None`` (recorded) when it fails a check."""
        verify = self.verify
        if verify and row.slot_crc32 is not None and rows_checksum(tensor) != row.slot_crc32:
            self._fail(row, "checksum mismatch")
            return None
        memory = self.manifest.memory_info
        if codec is not None:
            from memrag.memory.codec import KVDecodeError

            try:
                decoded: Slots | KVSlots = codec.decode(
                    tensor,
                    span=int(row.num_tokens),
                    kind=memory.kind,
                    fingerprint=memory.fingerprint,
                    text=row.text,
                    where=f"{self.path}: chunk {row.id!r} (shard {row.shard_file})",
                )
            except KVDecodeError as err:
                self._fail(row, f"undecodable: {err}")
                return None
        else:
            info = self.manifest.compressor
            decoded = Slots(
                tensor=tensor,
                kind=info.slot_kind,
                fingerprint=info.fingerprint,
                num_tokens=row.num_tokens,
                segment_slot_counts=list(row.segment_slot_counts),
            )
        if verify and not finite(decoded):
            self._fail(row, "non-finite values")
            return None
        return decoded

    def _fail(self, row: ChunkRow, reason: str) -> None:
        self.integrity.record(IntegrityFailure(row.id, row.shard_file, reason))

    def check_shards(self, *, full: bool = False) -> dict[str, str]:
        """``{shard file: problem}`` of the shards that fail their check (each one warned)."""
        from memrag.utils.atomic import sha256_file

        problem = self.manifest.memory_info.inconsistency()
        if problem:
            raise StoreCorruptError(f"{self.path / MANIFEST_NAME}: {problem}")
        layout = self.manifest.shard_layout()
        damaged: dict[str, str] = {}
        for shard in self.db.shards():
            path = self.path / SHARDS_DIR / shard.file
            try:
                check_shard(
                    path,
                    num_slots=shard.num_slots,
                    size=shard.bytes,
                    fingerprint=self.manifest.memory_info.fingerprint,
                    layout=layout,
                )
                if full and sha256_file(path) != shard.sha256:
                    raise StoreCorruptError(
                        f"slot shard {path} does not match its checksum (corrupt)"
                    )
            except ShardLayoutError as err:
                raise StoreCorruptError(
                    f"{err}: the manifest {self.path / MANIFEST_NAME} does not describe this "
                    "store's memory (edited?); restore it or rebuild the store"
                ) from None
            except StoreCorruptError as err:
                damaged[shard.file] = str(err)
                chunks = len(self.db.rows_by_shard(shard.shard_id))
                logger.warning(
                    "%s; its %d chunk(s) are served as text; %s", err, chunks, REPAIR_HINT
                )
        return damaged
