"""The store's SQLite database: chunk text, metadata, fidelity, vectors and slot locations.

SQLite runs in WAL mode, so many readers (threads or processes) read while one writer
writes; every write is one transaction. The database is the source of truth of a store:

* ``chunks``: one row per chunk. ``vid`` (``INTEGER PRIMARY KEY AUTOINCREMENT``, never
  reused) is the chunk's id in the FAISS index; the row holds the text, metadata (JSON),
  a content hash (to skip unchanged chunks when a build resumes), the fidelity score, the
  ``use_text`` flag, the embedding vector (float32 blob) and where its slots are
  (``shard_id``, ``slot_start``, ``slot_count``).
* ``shards``: the slot shard files with their size and SHA-256.
* ``chunk_meta``: top-level metadata values indexed by (key, type, value) for filters.
* ``journal``: every vector added or deleted since the last index checkpoint, in order,
  so the FAISS index can be brought up to date from any checkpoint.
* ``meta``: key/value pairs (schema version, index checkpoint sequence number).
* ``chunks_lexical``: the lexical (BM25) index over the chunks' text, kept in step by
  triggers (:mod:`memrag.store.lexical`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from memrag.store import lexical
from memrag.store.errors import StoreCorruptError, StoreVersionError
from memrag.store.metadata import compile_filter, index_rows

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_IN_BATCH = 900  # stay far below SQLite's bound-parameter limit

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE shards (
    shard_id INTEGER PRIMARY KEY AUTOINCREMENT,
    file TEXT NOT NULL UNIQUE,
    num_slots INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE TABLE chunks (
    vid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    source_id TEXT,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    num_tokens INTEGER NOT NULL,
    fidelity REAL,
    use_text INTEGER NOT NULL DEFAULT 0,
    shard_id INTEGER REFERENCES shards(shard_id),
    slot_start INTEGER,
    slot_count INTEGER,
    segment_slot_counts TEXT NOT NULL DEFAULT '[]',
    vector BLOB NOT NULL,
    slot_crc32 INTEGER,
    text_tokens INTEGER
);
CREATE INDEX chunks_source ON chunks(source_id);
CREATE INDEX chunks_shard ON chunks(shard_id);
CREATE TABLE chunk_meta (
    vid INTEGER NOT NULL,
    key TEXT NOT NULL,
    type TEXT NOT NULL,
    value,
    PRIMARY KEY (vid, key)
) WITHOUT ROWID;
CREATE INDEX chunk_meta_lookup ON chunk_meta(key, type, value);
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('add', 'del')),
    vid INTEGER NOT NULL
);
"""

_ROW_COLUMNS = (
    "c.vid, c.id, c.source_id, c.text, c.metadata, c.content_hash, c.num_tokens, c.fidelity, "
    "c.use_text, c.shard_id, c.slot_start, c.slot_count, c.segment_slot_counts, s.file, "
    "c.slot_crc32"
)
#: Columns added after schema 1 (nullable; an old store gains them when opened for writing).
ADDED_COLUMNS = ("slot_crc32", "text_tokens")
#: The same, for a store written before chunks had checksums, opened read-only.
_ROW_COLUMNS_WITHOUT_CRC = _ROW_COLUMNS.replace("c.slot_crc32", "NULL")
_ROW_FROM = "chunks AS c LEFT JOIN shards AS s ON s.shard_id = c.shard_id"


@dataclass
class ChunkRow:
    """One row of ``chunks`` (plus its shard's file name)."""

    vid: int
    id: str
    source_id: str | None
    text: str
    metadata: dict[str, Any]
    content_hash: str
    num_tokens: int
    fidelity: float | None
    use_text: bool
    shard_id: int | None
    slot_start: int | None
    slot_count: int | None
    segment_slot_counts: list[int]
    shard_file: str | None
    slot_crc32: int | None = None

    @classmethod
    def from_sql(cls, row: Sequence[Any]) -> "ChunkRow":
        return cls(
            vid=int(row[0]),
            id=row[1],
            source_id=row[2],
            text=row[3],
            metadata=json.loads(row[4]),
            content_hash=row[5],
            num_tokens=int(row[6]),
            fidelity=None if row[7] is None else float(row[7]),
            use_text=bool(row[8]),
            shard_id=row[9],
            slot_start=row[10],
            slot_count=row[11],
            segment_slot_counts=json.loads(row[12]),
            shard_file=row[13],
            slot_crc32=None if row[14] is None else int(row[14]),
        )


@dataclass
class NewChunk:
    """A chunk to insert (its slots already written to ``shard_id``)."""

    id: str
    source_id: str | None
    text: str
    metadata_json: str
    content_hash: str
    num_tokens: int
    fidelity: float | None
    use_text: bool
    vector: np.ndarray
    shard_id: int | None = None
    slot_start: int | None = None
    slot_count: int | None = None
    segment_slot_counts: list[int] = field(default_factory=list)
    slot_crc32: int | None = None
    text_tokens: int | None = None


@dataclass(frozen=True)
class ShardRow:
    """One row of ``shards``."""

    shard_id: int
    file: str
    num_slots: int
    bytes: int
    sha256: str


def _batches(items: Sequence[Any], size: int = _IN_BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(count: int) -> str:
    return ",".join("?" * count)


class Database:
    """A connection to a store's SQLite file, shared by the threads of one process.

    Args:
        path: The SQLite file.
        read_only: Open it read-only.
        create: Create the file and its schema (it must not exist).

    Raises:
        StoreCorruptError: the file is missing (and ``create`` is False), is not a SQLite
            database, or lacks memrag's schema.
        StoreVersionError: its schema is newer than this memrag supports.
    """

    def __init__(self, path: Path, *, read_only: bool = False, create: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        if create:
            if self.path.exists():
                raise FileExistsError(f"{self.path} already exists")
            self._conn = self._connect("rwc")
            self._conn.execute("PRAGMA journal_mode=WAL")
            with self.transaction() as conn:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
                for statement in lexical.LEXICAL_SCHEMA:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                conn.execute("INSERT INTO meta VALUES ('index_checkpoint_seq', '0')")
        else:
            if not self.path.is_file():
                raise StoreCorruptError(f"the store's database {self.path} is missing")
            self._conn = self._connect("ro" if read_only else "rw")
        self._check_schema()

    def _connect(self, mode: str) -> sqlite3.Connection:
        uri = f"file:{quote(str(self.path.resolve()))}?mode={mode}"
        try:
            conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False, timeout=60.0
            )
            conn.execute("PRAGMA busy_timeout = 60000")
            # WAL + NORMAL: a commit survives the process being killed (kill -9); after a power
            # loss the last commits may be lost but the database stays consistent, and shards
            # are fsynced before the commit that references them.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as err:
            raise StoreCorruptError(
                f"cannot open the store's database {self.path}: {err}"
            ) from None
        return conn

    def _check_schema(self) -> None:
        try:
            version = self.get_meta("schema_version")
            tables = {
                row[0]
                for row in self._execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        except sqlite3.DatabaseError as err:
            raise StoreCorruptError(
                f"{self.path} is not a readable SQLite database: {err}"
            ) from None
        missing = {"meta", "shards", "chunks", "chunk_meta", "journal"} - tables
        if missing or version is None:
            raise StoreCorruptError(
                f"{self.path} lacks memrag's tables ({', '.join(sorted(missing)) or 'meta'})"
            )
        if int(version) > SCHEMA_VERSION:
            raise StoreVersionError(
                f"{self.path}: database schema {version} is newer than this memrag supports "
                f"({SCHEMA_VERSION})"
            )
        columns = {row[1] for row in self._execute("PRAGMA table_info(chunks)")}
        missing = [c for c in ADDED_COLUMNS if c not in columns]
        if missing and not self.read_only:
            # Stores written before these columns existed: their chunks have none (NULL).
            with self.transaction() as conn:
                for column in missing:
                    conn.execute(f"ALTER TABLE chunks ADD COLUMN {column} INTEGER")
            columns.update(missing)
        self._columns = _ROW_COLUMNS if "slot_crc32" in columns else _ROW_COLUMNS_WITHOUT_CRC
        self._text_tokens = "text_tokens" in columns
        triggers = {
            row[0] for row in self._execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        }
        self.has_lexical_index = lexical.LEXICAL_TABLE in tables and set(lexical.TRIGGERS) <= triggers
        if not self.has_lexical_index and not self.read_only:
            # A store made before the lexical index: built from the chunks' text, once.
            self.rebuild_lexical_index()
            logger.info("%s: built the lexical index over the stored chunks' text", self.path)

    def close(self) -> None:
        """Closes the connection."""
        with self._lock:
            self._conn.close()

    # ------------------------------------------------------------------ plumbing
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``), committed on success, else rolled back."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def get_meta(self, key: str) -> str | None:
        """A value of the ``meta`` table."""
        rows = self._execute("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    @staticmethod
    def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
        """Sets a ``meta`` value inside a transaction."""
        conn.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # ------------------------------------------------------------------ writes
    @staticmethod
    def insert_shard(
        conn: sqlite3.Connection, file: str, num_slots: int, size: int, sha256: str
    ) -> int:
        """Registers a shard file inside a transaction; returns its id."""
        cursor = conn.execute(
            "INSERT INTO shards (file, num_slots, bytes, sha256) VALUES (?, ?, ?, ?)",
            (file, num_slots, size, sha256),
        )
        return int(cursor.lastrowid)

    @staticmethod
    def delete_ids(conn: sqlite3.Connection, ids: Sequence[str]) -> list[int]:
        """Deletes chunks by id inside a transaction, journaling their vids; returns them."""
        vids: list[int] = []
        for batch in _batches(list(ids)):
            vids += [
                r[0]
                for r in conn.execute(
                    f"SELECT vid FROM chunks WHERE id IN ({_marks(len(batch))})", batch
                )
            ]
        for batch in _batches(vids):
            conn.execute(f"DELETE FROM chunks WHERE vid IN ({_marks(len(batch))})", batch)
            conn.execute(f"DELETE FROM chunk_meta WHERE vid IN ({_marks(len(batch))})", batch)
        conn.executemany("INSERT INTO journal (op, vid) VALUES ('del', ?)", [(v,) for v in vids])
        return vids

    @staticmethod
    def insert_chunks(conn: sqlite3.Connection, chunks: Sequence[NewChunk]) -> list[int]:
        """Inserts chunks inside a transaction, journaling their new vids; returns them."""
        vids: list[int] = []
        for chunk in chunks:
            cursor = conn.execute(
                "INSERT INTO chunks (id, source_id, text, metadata, content_hash, num_tokens, "
                "fidelity, "
                "use_text, shard_id, slot_start, slot_count, segment_slot_counts, vector, "
                "slot_crc32, text_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    chunk.id,
                    chunk.source_id,
                    chunk.text,
                    chunk.metadata_json,
                    chunk.content_hash,
                    chunk.num_tokens,
                    chunk.fidelity,
                    int(chunk.use_text),
                    chunk.shard_id,
                    chunk.slot_start,
                    chunk.slot_count,
                    json.dumps(chunk.segment_slot_counts),
                    np.ascontiguousarray(chunk.vector, dtype=np.float32).tobytes(),
                    chunk.slot_crc32,
                    chunk.text_tokens,
                ),
            )
            vid = int(cursor.lastrowid)
            vids.append(vid)
            conn.executemany(
                "INSERT INTO chunk_meta (vid, key, type, value) VALUES (?, ?, ?, ?)",
                [(vid, *row) for row in index_rows(json.loads(chunk.metadata_json))],
            )
        conn.executemany("INSERT INTO journal (op, vid) VALUES ('add', ?)", [(v,) for v in vids])
        return vids

    # ------------------------------------------------------------------ reads
    def rows_by_ids(self, ids: Sequence[str]) -> dict[str, ChunkRow]:
        """Rows of the given chunk ids (unknown ids are absent)."""
        found: dict[str, ChunkRow] = {}
        unique = list(dict.fromkeys(ids))
        for batch in _batches(unique):
            sql = f"SELECT {self._columns} FROM {_ROW_FROM} WHERE c.id IN ({_marks(len(batch))})"
            for row in self._execute(sql, batch):
                found[row[1]] = ChunkRow.from_sql(row)
        return found

    def rows_by_vids(self, vids: Sequence[int]) -> dict[int, ChunkRow]:
        """Rows of the given vids (deleted vids are absent)."""
        found: dict[int, ChunkRow] = {}
        unique = [int(v) for v in dict.fromkeys(vids)]
        for batch in _batches(unique):
            sql = f"SELECT {self._columns} FROM {_ROW_FROM} WHERE c.vid IN ({_marks(len(batch))})"
            for row in self._execute(sql, batch):
                found[int(row[0])] = ChunkRow.from_sql(row)
        return found

    def rows_by_shard(self, shard_id: int) -> list[ChunkRow]:
        """Live rows whose slots are in ``shard_id``, in slot order."""
        sql = f"SELECT {self._columns} FROM {_ROW_FROM} WHERE c.shard_id = ? ORDER BY c.slot_start"
        return [ChunkRow.from_sql(r) for r in self._execute(sql, (shard_id,))]

    def content_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        """``id -> content hash`` of the given chunk ids that exist."""
        found: dict[str, str] = {}
        for batch in _batches(list(dict.fromkeys(ids))):
            sql = f"SELECT id, content_hash FROM chunks WHERE id IN ({_marks(len(batch))})"
            found.update(self._execute(sql, batch))
        return found

    def hashes_of_source(self, source_id: str) -> dict[str, str]:
        """``chunk id -> content hash`` of the chunks cut from one source document."""
        return dict(
            self._execute("SELECT id, content_hash FROM chunks WHERE source_id = ?", (source_id,))
        )

    def ids_outside_their_shard(self) -> list[str]:
        """Ids of chunks whose slot range does not lie inside their shard (a damaged database)."""
        sql = (
            "SELECT c.id FROM chunks AS c JOIN shards AS s ON s.shard_id = c.shard_id "
            "WHERE c.slot_start < 0 OR c.slot_start + c.slot_count > s.num_slots"
        )
        return [r[0] for r in self._execute(sql)]

    def ids_of_sources(self, source_ids: Sequence[str]) -> list[str]:
        """Chunk ids cut from the given source documents."""
        found: list[str] = []
        for batch in _batches(list(dict.fromkeys(source_ids))):
            sql = f"SELECT id FROM chunks WHERE source_id IN ({_marks(len(batch))})"
            found += [r[0] for r in self._execute(sql, batch)]
        return found

    def vectors(self, vids: Sequence[int], dimension: int) -> tuple[np.ndarray, np.ndarray]:
        """``(vids, vectors)`` of the given vids that still exist, in ascending vid order."""
        rows: list[tuple[int, bytes]] = []
        for batch in _batches(sorted(int(v) for v in set(vids))):
            rows += self._execute(
                f"SELECT vid, vector FROM chunks WHERE vid IN ({_marks(len(batch))})", batch
            )
        return self._unpack(rows, dimension)

    def iter_vectors(
        self, dimension: int, batch_size: int = 50_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All ``(vids, vectors)`` in ascending vid order, ``batch_size`` rows at a time."""
        last = -1
        while True:
            rows = self._execute(
                "SELECT vid, vector FROM chunks WHERE vid > ? ORDER BY vid LIMIT ?",
                (last, batch_size),
            )
            if not rows:
                return
            last = int(rows[-1][0])
            yield self._unpack(rows, dimension)

    def all_vectors(self, dimension: int) -> tuple[np.ndarray, np.ndarray]:
        """Every ``(vids, vectors)`` of the store."""
        parts = list(self.iter_vectors(dimension))
        if not parts:
            return np.zeros(0, dtype=np.int64), np.zeros((0, dimension), dtype=np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _unpack(
        self, rows: list[tuple[int, bytes]], dimension: int
    ) -> tuple[np.ndarray, np.ndarray]:
        vids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.zeros((len(rows), dimension), dtype=np.float32)
        for i, (vid, blob) in enumerate(rows):
            if len(blob) != 4 * dimension:
                raise StoreCorruptError(
                    f"{self.path}: the vector of chunk vid {vid} has {len(blob)} bytes, expected "
                    f"{4 * dimension}"
                )
            vectors[i] = np.frombuffer(blob, dtype=np.float32)
        return vids, vectors

    def all_vids(self) -> np.ndarray:
        """Every live vid, ascending."""
        rows = self._execute("SELECT vid FROM chunks ORDER BY vid")
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def filter_vids(self, filter: dict[str, Any]) -> np.ndarray:
        """Vids of the chunks whose metadata match ``filter`` (see :mod:`memrag.store.metadata`)."""
        sql, params = compile_filter(filter)
        rows = self._execute(f"SELECT vid FROM chunks WHERE {sql}", params)
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def iter_rows(self, batch_size: int = 1000) -> Iterator[ChunkRow]:
        """Every row, in vid order."""
        last = -1
        while True:
            rows = self._execute(
                f"SELECT {self._columns} FROM {_ROW_FROM} WHERE c.vid > ? ORDER BY c.vid LIMIT ?",
                (last, batch_size),
            )
            if not rows:
                return
            last = int(rows[-1][0])
            yield from (ChunkRow.from_sql(r) for r in rows)

    def shards(self) -> list[ShardRow]:
        """Every registered shard."""
        rows = self._execute(
            "SELECT shard_id, file, num_slots, bytes, sha256 FROM shards ORDER BY shard_id"
        )
        return [ShardRow(*row) for row in rows]

    def live_slots_by_shard(self) -> dict[int, int]:
        """``shard_id -> slots still referenced by live chunks``."""
        rows = self._execute(
            "SELECT shard_id, COALESCE(SUM(slot_count), 0) FROM chunks WHERE shard_id IS NOT "
            "NULL GROUP BY shard_id"
        )
        return {int(s): int(n) for s, n in rows}

    # ------------------------------------------------------------------ journal
    def journal_head(self) -> int:
        """Sequence number of the last journal entry ever written (0 if none)."""
        rows = self._execute("SELECT seq FROM sqlite_sequence WHERE name = 'journal'")
        return int(rows[0][0]) if rows else 0

    def checkpoint_seq(self) -> int:
        """Sequence number the newest index checkpoint is at (entries up to it are dropped)."""
        return int(self.get_meta("index_checkpoint_seq") or 0)

    def journal_since(self, seq: int) -> tuple[int, list[tuple[int, str, int]]]:
        """``(head, entries)``: journal entries after ``seq``, read in one snapshot."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                entries = self._conn.execute(
                    "SELECT seq, op, vid FROM journal WHERE seq > ? ORDER BY seq", (seq,)
                ).fetchall()
                head_rows = self._conn.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'journal'"
                ).fetchall()
                checkpoint = self._conn.execute(
                    "SELECT value FROM meta WHERE key = 'index_checkpoint_seq'"
                ).fetchall()
            finally:
                self._conn.execute("COMMIT")
        head = int(head_rows[0][0]) if head_rows else 0
        if checkpoint and int(checkpoint[0][0]) > seq:
            raise LookupError(
                f"journal entries after {seq} were folded into checkpoint {checkpoint[0][0]}"
            )
        return head, entries

    def counts(self) -> dict[str, int]:
        """Chunk, slot, shard and flagged-chunk counts, text tokens and memory positions.

        ``tokens`` counts the chunks' text tokens; ``positions`` the decoder positions their
        memory takes (fewer than the tokens for pruned or trained K/V memory). Chunks written
        before text tokens were recorded count their positions as tokens.
        """
        text = "COALESCE(text_tokens, num_tokens)" if self._text_tokens else "num_tokens"
        chunks, slots, flagged, tokens, positions = self._execute(
            "SELECT COUNT(*), COALESCE(SUM(slot_count), 0), COALESCE(SUM(use_text), 0), "
            f"COALESCE(SUM({text}), 0), COALESCE(SUM(num_tokens), 0) FROM chunks"
        )[0]
        shards = self._execute("SELECT COUNT(*) FROM shards")[0][0]
        return {
            "chunks": chunks,
            "slots": slots,
            "use_text": flagged,
            "tokens": tokens,
            "positions": positions,
            "shards": shards,
        }

    def fidelity_values(self) -> np.ndarray:
        """Every measured fidelity score."""
        rows = self._execute("SELECT fidelity FROM chunks WHERE fidelity IS NOT NULL")
        return np.fromiter((r[0] for r in rows), dtype=np.float64, count=len(rows))

    def vacuum(self) -> None:
        """Folds the WAL into the main file and rebuilds it without free pages."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.execute("VACUUM")

    # ------------------------------------------------------------------ lexical index
    def lexical_search(
        self, query: str, k: int, filter: dict[str, Any] | None = None
    ) -> list[tuple[int, float]]:
        """``(vid, BM25 score)`` of the ``k`` chunks whose text best matches the words of
        ``query`` (higher is better), among those matching ``filter``; empty when the query
        has no word to look for.

        Raises:
            StoreCorruptError: the store has no lexical index (a store made before it,
                opened read-only: open it for writing once, or ``memrag index verify --repair``).
        """
        if not self.has_lexical_index:
            raise StoreCorruptError(
                f"{self.path} has no lexical index (a store made before memrag kept one): open "
                "it for writing once, or run `memrag index verify STORE --repair`, to build it"
            )
        match = lexical.match_expression(query)
        if match is None or k <= 0:
            return []
        sql = (
            f"SELECT rowid, -bm25({lexical.LEXICAL_TABLE}) FROM {lexical.LEXICAL_TABLE} "
            f"WHERE {lexical.LEXICAL_TABLE} MATCH ?"
        )
        params: list[Any] = [match]
        if filter:
            condition, filter_params = compile_filter(filter)
            sql += f" AND rowid IN (SELECT vid FROM chunks WHERE {condition})"
            params.extend(filter_params)
        rows = self._execute(sql + " ORDER BY rank LIMIT ?", [*params, int(k)])
        return [(int(vid), float(score)) for vid, score in rows]

    def lexical_problems(self) -> list[str]:
        """What is wrong with the lexical index (empty when it is in step with the chunks).

        Read-only: the chunks it holds against the table's (FTS5's own ``integrity-check``,
        which also compares every token, needs a writable database and runs when there is one).
        """
        if not self.has_lexical_index:
            return [
                "the lexical index is missing or lacks its triggers (a store made before "
                "memrag kept one?)"
            ]
        sizes = f"{lexical.LEXICAL_TABLE}_docsize"
        missing = self._execute(f"SELECT count(*) FROM (SELECT vid FROM chunks EXCEPT SELECT id FROM {sizes})")
        extra = self._execute(f"SELECT count(*) FROM (SELECT id FROM {sizes} EXCEPT SELECT vid FROM chunks)")
        if missing[0][0] or extra[0][0]:
            return [
                f"the lexical index is out of step with the chunks: {missing[0][0]} chunk(s) "
                f"missing from it, {extra[0][0]} entry(ies) without a chunk"
            ]
        if not self.read_only:
            try:
                with self._lock:
                    self._conn.execute(lexical.INTEGRITY_CHECK)
            except sqlite3.DatabaseError as err:
                return [f"the lexical index is out of step with the chunks' text: {err}"]
        return []

    def rebuild_lexical_index(self) -> None:
        """Re-makes the lexical index and its triggers from the chunks' text, in one
        transaction."""
        with self.transaction() as conn:
            for statement in (*lexical.DROP, *lexical.LEXICAL_SCHEMA, lexical.REBUILD):
                conn.execute(statement)
        self.has_lexical_index = True

    def integrity_problems(self) -> list[str]:
        """SQLite's own ``PRAGMA integrity_check`` findings (empty when fine)."""
        rows = [r[0] for r in self._execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else rows
