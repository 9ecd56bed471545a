"""Checking a store's files (``memrag index verify``); repairing is :mod:`memrag.store.repair`.

:func:`verify_store` needs no model and never writes: it reads the manifest, runs SQLite's
integrity check, checks every slot shard (size, header, compressor fingerprint, and with
``full=True`` its SHA-256), loads the newest index checkpoint (checksum first), replays the
journal and compares the index's ids with the database's.
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
        part: ``manifest``, ``database``, ``lexical``, ``shard``, ``index`` or ``debris``.
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
        for message in db.lexical_problems():
            report.problems.append(Finding("lexical", str(db.path), message))
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
    overflow = db.ids_outside_their_shard()
    if overflow:
        ids = tuple(overflow[:20])
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
