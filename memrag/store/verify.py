"""Checking a store's files (``memrag index verify``) and repairing what can be repaired.

:func:`verify_store` needs no model and never writes: it reads the manifest, runs SQLite's
integrity check, checks every slot shard (size, header, compressor fingerprint, and with
``full=True`` its SHA-256), loads the newest index checkpoint (checksum first), replays the
journal and compares the index's ids with the database's.

:func:`repair_store` fixes what the database still describes: it rebuilds the FAISS index
from the vectors in SQLite, removes debris of interrupted writes, and re-compresses the
chunks of corrupt or missing shards from their text (or, without a compressor, flags them
``use_text`` so they are served as text). A missing database or a manifest from a newer
memrag cannot be repaired.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memrag.store.database import Database
from memrag.store.errors import StoreCorruptError, StoreError, StoreVersionError
from memrag.store.index import list_checkpoints, read_checkpoint
from memrag.store.manifest import DATABASE_NAME, INDEX_DIR, MANIFEST_NAME, SHARDS_DIR, Manifest
from memrag.store.shards import SHARD_SUFFIX, ShardLayoutError, check_shard
from memrag.utils.atomic import sha256_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    """One thing :func:`verify_store` found.

    Attributes:
        part: ``manifest``, ``database``, ``shard``, ``index`` or ``debris``.
        path: The file concerned.
        message: What is wrong.
        chunk_ids: Chunks affected (for a bad shard), possibly truncated to the first 20.
        affected: How many chunks are affected.
    """

    part: str
    path: str
    message: str
    chunk_ids: tuple[str, ...] = ()
    affected: int = 0

    def __str__(self) -> str:
        text = f"[{self.part}] {self.path}: {self.message}"
        if self.affected:
            text += f" ({self.affected} chunk(s) affected, e.g. {', '.join(self.chunk_ids[:3])})"
        return text


@dataclass
class VerifyReport:
    """Result of :func:`verify_store`: problems (the store is damaged) and warnings."""

    path: Path
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no problem was found (warnings allowed)."""
        return not self.problems

    def parts(self) -> set[str]:
        """Parts with problems."""
        return {p.part for p in self.problems}

    def summary(self) -> str:
        """Human-readable, one finding per line."""
        head = f"{self.path}: {'OK' if self.ok else f'{len(self.problems)} problem(s)'}"
        if self.stats:
            head += " (" + ", ".join(f"{k} {v}" for k, v in self.stats.items()) + ")"
        lines = (
            [head]
            + [f"  problem: {p}" for p in self.problems]
            + [f"  warning: {w}" for w in self.warnings]
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""

        def finding(f: Finding) -> dict[str, Any]:
            return {
                "part": f.part,
                "path": f.path,
                "message": f.message,
                "affected": f.affected,
                "chunk_ids": list(f.chunk_ids),
            }

        return {
            "path": str(self.path),
            "ok": self.ok,
            "problems": [finding(p) for p in self.problems],
            "warnings": [finding(w) for w in self.warnings],
            "stats": self.stats,
        }


def _affected(db: Database, shard_id: int) -> tuple[tuple[str, ...], int]:
    rows = db.rows_by_shard(shard_id)
    return tuple(r.id for r in rows[:20]), len(rows)


def verify_store(path: str | Path, *, full: bool = True) -> VerifyReport:
    """Checks a store without modifying it.

    Args:
        path: The store directory.
        full: Also hash every shard and run SQLite's full integrity check.
    """
    root = Path(path)
    report = VerifyReport(root)
    try:
        manifest = Manifest.load(root)
    except (StoreError, OSError) as err:
        report.problems.append(Finding("manifest", str(root / "manifest.json"), str(err)))
        manifest = None
    try:
        db = Database(root / DATABASE_NAME, read_only=True)
    except (StoreCorruptError, StoreVersionError) as err:
        report.problems.append(Finding("database", str(root / DATABASE_NAME), str(err)))
        return report
    try:
        if full:
            for message in db.integrity_problems():
                report.problems.append(Finding("database", str(db.path), message))
        report.stats.update(db.counts())
        if manifest is not None:
            _verify_shards(root, manifest, db, report, full)
            _verify_index(root, manifest, db, report)
    finally:
        db.close()
    return report


def bad_shards(report: VerifyReport) -> set[str]:
    """File names of the shards a report found damaged."""
    return {
        Path(p.path).name
        for p in report.problems
        if p.part == "shard" and p.path.endswith(SHARD_SUFFIX)
    }


def _bad_chunks_message(root: Path, db: Database, shard_id: int) -> str:
    """Which chunks of a shard fail their own checksum (stores written with checksums)."""
    from memrag.store.integrity import rows_checksum
    from memrag.store.shards import ShardReader

    reader = ShardReader(root / SHARDS_DIR)
    bad, unchecked = [], 0
    for row in db.rows_by_shard(shard_id):
        if row.slot_crc32 is None or row.shard_file is None:
            unchecked += 1
            continue
        try:
            rows = reader.read(row.shard_file, int(row.slot_start or 0), int(row.slot_count or 0))
            if rows_checksum(rows) != row.slot_crc32:
                bad.append(row.id)
        except (StoreCorruptError, FileNotFoundError):
            bad.append(row.id)
    reader.forget()
    if unchecked:
        return f"{unchecked} chunk(s) have no checksum of their own (written by an older memrag)"
    if not bad:
        return "every chunk's rows match their checksum (the damage is in the header or padding)"
    return f"chunk(s) whose rows fail their checksum: {', '.join(bad[:20])}"


def _verify_shards(
    root: Path, manifest: Manifest, db: Database, report: VerifyReport, full: bool
) -> None:
    directory = root / SHARDS_DIR
    known = set()
    problem = manifest.memory_info.inconsistency()
    if problem:
        report.problems.append(Finding("manifest", str(root / MANIFEST_NAME), problem))
    layout = manifest.shard_layout()
    for shard in db.shards():
        known.add(shard.file)
        path = directory / shard.file
        try:
            check_shard(
                path,
                num_slots=shard.num_slots,
                size=shard.bytes,
                fingerprint=manifest.memory_info.fingerprint,
                layout=layout,
            )
            if full and sha256_file(path) != shard.sha256:
                raise StoreCorruptError(
                    f"slot shard {path} does not match its checksum (corrupt); "
                    + _bad_chunks_message(root, db, shard.shard_id)
                )
        except ShardLayoutError as err:
            ids, count = _affected(db, shard.shard_id)
            report.problems.append(Finding("manifest", str(root / MANIFEST_NAME), str(err), ids, count))
        except StoreCorruptError as err:
            ids, count = _affected(db, shard.shard_id)
            report.problems.append(Finding("shard", str(path), str(err), ids, count))
    overflow = db._execute(
        "SELECT c.id FROM chunks AS c JOIN shards AS s ON s.shard_id = c.shard_id "
        "WHERE c.slot_start < 0 OR c.slot_start + c.slot_count > s.num_slots"
    )
    if overflow:
        ids = tuple(r[0] for r in overflow[:20])
        report.problems.append(
            Finding(
                "database", str(db.path), "chunks point outside their shard", ids, len(overflow)
            )
        )
    if directory.is_dir():
        for entry in sorted(directory.iterdir()):
            if entry.name not in known:
                report.warnings.append(
                    Finding(
                        "debris",
                        str(entry),
                        "not referenced by the database (left by an interrupted write; "
                        "the next writer removes it)",
                    )
                )
    for entry in sorted(root.glob(".*.tmp")) + sorted((root / INDEX_DIR).glob(".*.tmp")):
        report.warnings.append(
            Finding("debris", str(entry), "temporary file of an interrupted write")
        )


def _verify_index(root: Path, manifest: Manifest, db: Database, report: VerifyReport) -> None:
    directory = root / INDEX_DIR
    try:
        required = db.checkpoint_seq()
        usable = [c for c in list_checkpoints(directory) if c.seq >= required]
        if not usable:
            raise StoreCorruptError(f"no index checkpoint at or after journal entry {required}")
        newest = usable[-1]
        index = read_checkpoint(newest, manifest.index, manifest.embedder.dimension)
        _, entries = db.journal_since(newest.seq)
    except (StoreCorruptError, LookupError) as err:
        report.problems.append(Finding("index", str(directory), str(err)))
        return
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("index-") and entry not in (newest.file, newest.sidecar):
            report.warnings.append(
                Finding(
                    "debris",
                    str(entry),
                    "index file other than the newest checkpoint (the next writer removes it)",
                )
            )
    added = {vid for _, op, vid in entries if op == "add"}
    deleted = {vid for _, op, vid in entries if op == "del"}
    in_index = set(index.ids().tolist()) - set(index.tombstones)
    expected = (in_index - deleted) | added
    live = set(db.all_vids().tolist())
    missing, extra = live - expected, expected - live
    if missing or extra:
        report.problems.append(
            Finding(
                "index",
                str(newest.file),
                f"the index and the database disagree: {len(missing)} chunk vector(s) missing "
                "from the index, "
                f"{len(extra)} index id(s) without a chunk",
            )
        )
    report.stats["index_vectors"] = len(live & expected)
    report.stats["journal_pending"] = len(entries)


@dataclass
class RepairReport:
    """What :func:`repair_store` did."""

    index_rebuilt: bool = False
    recompressed: int = 0
    text_only: int = 0
    shards_removed: int = 0
    before: VerifyReport | None = None
    after: VerifyReport | None = None

    def summary(self) -> str:
        """One line for people."""
        return (
            f"index rebuilt: {'yes' if self.index_rebuilt else 'no'}; chunks re-compressed: "
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
    from memrag.store.memory_store import MemoryStore

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
    from memrag.store.processing import ChunkInput

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
