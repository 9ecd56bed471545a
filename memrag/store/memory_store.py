"""The :class:`MemoryStore`: one directory of chunks, vectors and memory (its layout and
consistency design: :mod:`memrag.store`); life cycle, reads and writes, each job delegated to
its module (reader, commit, live index, compatibility, creation, description)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from memrag.compressor.resolve import resolve_compressor
from memrag.store.chunk_reader import ChunkReader
from memrag.store.chunking import Chunker
from memrag.store.retrieval import SearchSettings
from memrag.store.searching import search_store, vector_search
from memrag.store.commit import check_batch, commit_batch, delete_chunks, reflag_use_text
from memrag.store.compatibility import (
    check_compressor_matches,
    check_embedder_matches,
    load_recorded_compressor,
)
from memrag.store.creation import create_store_directory
from memrag.store.database import Database
from memrag.store.describe import describe_store
from memrag.store.documents import InvalidDocumentsError, document_chunks, prepare_documents
from memrag.store.embedder import Embedder, load_embedder
from memrag.store.errors import (
    StoreLockedError,
    StoreReadOnlyError,
)
from memrag.store.index import IndexSpec
from memrag.store.integrity import IntegrityLog
from memrag.store.live_index import LiveIndex
from memrag.store.maintenance import CompactReport, compact, remove_debris
from memrag.store.manifest import DATABASE_NAME, LOCK_NAME, Manifest, MemoryInfo, Options
from memrag.store.metadata import RESERVED_KEYS
from memrag.store.processing import ChunkInput, ChunkProcessor, ProcessedBatch, processor_for
from memrag.store.records import ChunkRecord
from memrag.store.writer_lock import WriterLock

logger = logging.getLogger(__name__)


class MemoryStore:
    """A directory of chunks with their vectors and memory slots. Use :meth:`create` / :meth:`open`.

    Thread-safe: searches and reads (:meth:`search`, :meth:`get`, their slot reads) run in
    parallel with each other; a write (adding or deleting chunks) excludes them while it
    commits, so a search sees the store before or after each committed batch, never half of
    one.
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        database: Database,
        *,
        compressor: Any | None = None,
        embedder: Embedder | None = None,
        read_only: bool = False,
        lock_timeout: float = 30.0,
        device: str | None = "cpu",
        dtype: Any = None,
    ) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.db = database
        self.read_only = read_only
        self.lock_timeout = lock_timeout
        self._device = device
        self._dtype = dtype
        self._compressor = compressor
        self._embedder = embedder
        self._processor: ChunkProcessor | None = None
        self._chunker: Chunker | None = None
        self.warned_no_lexical = False
        #: Reads chunks and their memory from the shards, checking each chunk's integrity.
        self.reader = ChunkReader(self.path, manifest, database)
        lock_file = self.path / LOCK_NAME
        self._writer = None if read_only else WriterLock(self.path, lock_file, lock_timeout)
        self._cleaned = False
        #: The vector index, kept up to date with the journal (its lock orders reads and commits).
        self.live_index = LiveIndex(
            self.path, database, manifest.index, manifest.embedder.dimension, read_only=read_only
        )
        self._closed = self._dirty = False
        #: True when :meth:`open` had to rebuild the index (``rebuild_index=True``).
        self.index_was_rebuilt = False

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls,
        path: str | Path,
        compressor: Any = None,
        embedder: Embedder | str | None = None,
        *,
        memory: Any = None,
        index: str | IndexSpec = "flat",
        index_options: Mapping[str, Any] | None = None,
        slot_dtype: str = "float16",
        fidelity: str = "auto",
        fidelity_threshold: float | None = None,
        fidelity_max_tokens: int = 512,
        fidelity_sample_tokens: int | None = 32,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        lock_timeout: float = 30.0,
        device: str | None = "cpu",
        dtype: Any = None,
    ) -> "MemoryStore":
        """Creates an empty store at ``path`` (which must not exist, or be an empty directory).

        Args:
            path: The store directory.
            compressor: A :class:`~memrag.compressor.Compressor`, a compressor directory or
                shipped name, or ``None`` for the trained default shipped with memrag for
                ``memory`` (:func:`~memrag.compressor.shipped.default_compressor`).
            embedder: An embedder, an embedder id (``"hashing:256"``, a sentence-transformers
                name or path), or ``None`` for all-MiniLM-L6-v2 from its pip package.
            memory: What the store keeps for each chunk: a
                :class:`~memrag.memory.spec.MemorySpec`, a mode string (``"embedding"``,
                ``"kv"``, ``"kv-exact"``, ``"kv-exact:int8"``, ``"kv-pruned:0.5"`` ...), or ``None`` for
                :func:`~memrag.memory.spec.default_memory` (``"kv-exact:int8"``). ``kv-exact``
                and ``kv-pruned`` memory is made by the compressor's frozen decoder (any
                compressor over the same base model reads it).
            index: ``"flat"`` (exact, default), ``"hnsw"`` or ``"ivf"``, or an :class:`IndexSpec`.
            index_options: Extra :class:`IndexSpec` fields (``hnsw_m``, ``ivf_nprobe``, ...).
            slot_dtype: ``"float16"`` (default), ``"bfloat16"`` or ``"float32"``.
            fidelity: How chunks are scored at index time: ``"agreement"`` (answers from the
                memory against answers from the text), ``"reconstruct"`` (likelihood of
                repeating the chunk from its memory), ``"none"``, or ``"auto"`` (the default:
                agreement for K/V memory, reconstruct for embedding slots).
            fidelity_threshold: Chunks scoring below it get ``use_text=True`` (``None``: the
                method's default, :data:`~memrag.store.manifest.DEFAULT_FIDELITY_THRESHOLDS`).
            fidelity_max_tokens: Tokens reconstructed per chunk at most.
            fidelity_sample_tokens: Tokens whose likelihood is averaged, evenly spaced
                (``None``: all of them; fewer make scoring cheaper with a 262k vocabulary).
            chunk_tokens: Chunk length for ``chunk=True`` and the indexing job (default:
                :data:`~memrag.store.chunking.DEFAULT_CHUNK_TOKENS`, several segments).
            chunk_overlap: Tokens shared by consecutive chunks (default:
                :data:`~memrag.store.chunking.DEFAULT_CHUNK_OVERLAP`, or an eighth of a chunk).
            lock_timeout: Seconds to wait for the writer lock before raising.
            device: Device for models loaded here.
            dtype: Dtype for a compressor loaded here.

        Raises:
            StoreExistsError: ``path`` exists and is not an empty directory.
        """
        target = Path(path)
        if not isinstance(index, IndexSpec):
            index = IndexSpec(index, **dict(index_options or {}))
        compressor, embedder = create_store_directory(
            target, compressor, embedder, memory, index, device=device, dtype=dtype,
            fidelity=fidelity, fidelity_threshold=fidelity_threshold, slot_dtype=slot_dtype,
            fidelity_max_tokens=fidelity_max_tokens, fidelity_sample_tokens=fidelity_sample_tokens,
            chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap,
        )
        return cls.open(
            target, compressor, embedder, lock_timeout=lock_timeout, device=device, dtype=dtype
        )

    @classmethod
    def open(
        cls,
        path: str | Path,
        compressor: Any = None,
        embedder: Embedder | str | None = None,
        read_only: bool = False,
        *,
        check: bool | str = True,
        rebuild_index: bool = False,
        lock_timeout: float = 30.0,
        device: str | None = "cpu",
        dtype: Any = None,
    ) -> "MemoryStore":
        """Opens an existing store.

        The compressor and embedder named in the manifest are loaded on first use when not
        given (searching needs only the embedder; reading slots needs neither).

        Args:
            path: The store directory.
            compressor: The store's compressor (instance, directory or shipped name); one with
                a different fingerprint is refused.
            embedder: The store's embedder (instance or id); a different one is refused.
            read_only: Open for reading only (no lock, no writes).
            check: ``True``: check every slot shard's size and header (cheap); ``"full"``:
                also their SHA-256 (reads every shard); ``False``: no check. A shard that
                fails does not stop the store: its chunks are served as text (counted in
                :attr:`integrity`) and a warning names it and ``memrag index verify --repair``.
            rebuild_index: When the index cannot be loaded, rebuild it from the database
                instead of raising (not for ``read_only``).
            lock_timeout: Seconds a write waits for the writer lock.
            device: Device for models loaded by the store.
            dtype: Dtype for a compressor loaded by the store.

        Raises:
            StoreNotFoundError: no store at ``path``.
            StoreVersionError: the store was written by a newer memrag.
            StoreCorruptError: a file is missing, truncated or corrupt (nothing is modified).
            CompressorMismatchError: ``compressor`` differs from the store's (names both
                fingerprints).
            EmbedderMismatchError: ``embedder`` differs from the store's.
        """
        root = Path(path)
        manifest = Manifest.load(root)
        if compressor is not None:
            compressor = resolve_compressor(compressor, device=device, dtype=dtype)
            check_compressor_matches(root, manifest, compressor)
        if embedder is not None:
            embedder = load_embedder(embedder, device=device)
            check_embedder_matches(root, manifest, embedder)
        database = Database(root / DATABASE_NAME, read_only=read_only)
        store = cls(
            root, manifest, database, compressor=compressor, embedder=embedder,
            read_only=read_only, lock_timeout=lock_timeout, device=device, dtype=dtype,
        )
        try:
            if check:
                store.reader.damaged_shards = store.reader.check_shards(full=check == "full")
            store.index_was_rebuilt = store.live_index.load_or_rebuild(
                store.writing if rebuild_index and not read_only else None
            )
        except BaseException:
            database.close()
            raise
        return store

    @classmethod
    def open_or_create(
        cls, path: str | Path, compressor: Any = None, embedder: Any = None, **options: Any
    ) -> "MemoryStore":
        """Opens the store at ``path`` if there is one (checking the compressor), else creates it.

        ``options`` are :meth:`create`'s keyword arguments; for an existing store only
        ``lock_timeout``, ``device`` and ``dtype`` apply.
        """
        root = Path(path)
        if (root / "manifest.json").is_file():
            keep = {k: v for k, v in options.items() if k in ("lock_timeout", "device", "dtype")}
            return cls.open(root, compressor, embedder, **keep)
        return cls.create(root, compressor, embedder, **options)

    # ------------------------------------------------------------------ properties
    @property
    def compressor(self) -> Any:
        """The store's compressor (loaded from the manifest's source on first use)."""
        if self._compressor is None:
            self._compressor = load_recorded_compressor(
                self.path, self.manifest, device=self._device, dtype=self._dtype
            )
        return self._compressor

    @property
    def embedder(self) -> Embedder:
        """The store's embedder (loaded from the manifest's id on first use)."""
        if self._embedder is None:
            embedder = load_embedder(self.manifest.embedder.id, device=self._device)
            check_embedder_matches(self.path, self.manifest, embedder)
            self._embedder = embedder
        return self._embedder

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the store's memory: its compressor's for embedding slots; for K/V
        memory, of the base model and the memory settings."""
        return self.manifest.memory_info.fingerprint

    def check_compressor(self, compressor: Any) -> None:
        """Raises ``CompressorMismatchError`` unless ``compressor`` can make and read this
        store's memory (the same compressor for embedding slots, the same base model for K/V)."""
        check_compressor_matches(self.path, self.manifest, compressor)

    @property
    def memory(self) -> MemoryInfo:
        """The kind of memory the store holds, and its settings."""
        return self.manifest.memory_info

    @property
    def dimension(self) -> int:
        """Width of the store's vectors."""
        return self.manifest.embedder.dimension

    @property
    def chunker(self) -> Chunker:
        """Sentence-aware chunker with the store's chunk length and overlap (a store made
        before chunk lengths were recorded: the compressor's segment length)."""
        if self._chunker is None:
            options = self.manifest.options
            size = options.chunk_tokens or self.manifest.compressor.segment_length
            tokenizer = self.compressor.tokenizer
            self._chunker = Chunker.with_overlap(tokenizer, size, options.chunk_overlap)
        return self._chunker

    @property
    def processor(self) -> ChunkProcessor:
        """The embed / compress / score step used by :meth:`add`
        (:func:`~memrag.store.processing.processor_for` this store)."""
        if self._processor is None:
            self._processor = processor_for(self.manifest, self.compressor, self.embedder)
        return self._processor

    def __len__(self) -> int:
        return self.db.counts()["chunks"]

    def __contains__(self, chunk_id: object) -> bool:
        return isinstance(chunk_id, str) and bool(self.db.content_hashes([chunk_id]))

    def __enter__(self) -> "MemoryStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = self.manifest.index.type
        return f"MemoryStore({str(self.path)!r}, index={kind!r}, read_only={self.read_only})"

    # ------------------------------------------------------------------ reading
    def get(self, ids: Sequence[str], with_slots: bool = True) -> list[ChunkRecord]:
        """The chunks with these ids, in the requested order; unknown ids are absent.

        A repeated id is returned once, at its first position.
        """
        ids = [ids] if isinstance(ids, str) else list(ids)
        with self.live_index.lock.read():
            rows = self.db.rows_by_ids(ids)
            ordered = [rows[i] for i in dict.fromkeys(ids) if i in rows]
            return self.reader.records(ordered, with_slots)

    def search(
        self, query: str, k: int = 4, filter: dict | None = None, with_slots: bool = True, *,
        mode: str | None = None, weights: Sequence[float] | str | None = None, rerank: int = 0,
    ) -> list[ChunkRecord]:
        """The ``k`` chunks that best match ``query``, best first.

        Args:
            query: The query text.
            k: Number of results.
            filter: Metadata filter (:mod:`memrag.store.metadata`), e.g. ``{"lang": "en"}``.
            with_slots: Also load each chunk's slots.
            mode: ``"hybrid"`` (default), ``"dense"`` or ``"lexical"``
                (:mod:`memrag.store.retrieval`); the filter applies to every mode.
            weights: ``(dense, lexical)`` weights of a hybrid search (default equal).
            rerank: Rerank this many first-stage candidates (at least ``k``) by the decoder's
                likelihood of the query given each one's memory (text without ``with_slots``),
                :class:`~memrag.store.rerank.MemoryReranker`. 0: none.

        Raises:
            ValueError: an unknown mode, weights out of range, or a negative ``rerank``.
        """
        settings = SearchSettings.parse(mode, weights)
        return search_store(self, query, k, filter, with_slots, settings, rerank)

    def search_by_vector(
        self,
        vector: Sequence[float] | np.ndarray,
        k: int = 4,
        filter: dict | None = None,
        with_slots: bool = True,
    ) -> list[ChunkRecord]:
        """The ``k`` chunks whose vectors are closest to a query vector of the store's
        dimension (a dense search; score: cosine similarity)."""
        return vector_search(self, vector, k, filter, with_slots)

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def writing(self) -> Iterator["MemoryStore"]:
        """Holds the writer lock for a series of writes (re-entrant). The first write of a
        process removes debris of killed writers; the end of a series checkpoints the index
        when due and saves the counts.

        Raises:
            StoreReadOnlyError: the store was opened read-only.
            StoreLockedError: another process holds the lock longer than ``lock_timeout``.
        """
        if self.read_only or self._writer is None:
            raise StoreReadOnlyError(f"{self.path} was opened read-only")
        with self._writer.hold(on_acquire=self._start_writes, on_release=self._end_writes):
            self._dirty = True
            yield self

    def _start_writes(self) -> None:
        if not self._cleaned:
            remove_debris(self)
            self._cleaned = True
        self.refresh()

    def _end_writes(self) -> None:
        self.live_index.maybe_checkpoint(final=True)
        self._save_counts()

    def add(
        self,
        texts_or_documents: Iterable[Any] | str,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        chunk: bool = False,
        batch_size: int = 64,
        show_progress: bool = False,
    ) -> list[str]:
        """Compresses, embeds and stores documents; re-adding an id replaces it.

        Args:
            texts_or_documents: Strings, or LangChain-style documents (``page_content``,
                ``metadata``, optional ``id``).
            ids: One id per document (default: the document's ``id``, else a new UUID).
            metadatas: One metadata dict per document (default: the document's metadata).
                Values must be JSON (str, int, float, bool, None, lists, dicts).
            chunk: Cut each document into token windows (ids ``<id>#<n>``, metadata with
                ``source_id`` and character offsets); a re-added document's old chunks go.
                Without it each document is stored as one chunk (several segments of slots
                if it is long).
            batch_size: Chunks per committed batch.
            show_progress: Show a progress bar.

        Returns:
            The ids of the stored chunks, in input order.

        Raises:
            InvalidDocumentsError: some documents are empty, not text, have duplicate ids or
                bad metadata; nothing is written and every problem is listed.
        """
        items = texts_or_documents
        items = [items] if isinstance(items, str) else list(items)
        inputs, sources = prepare_documents(items, ids, metadatas, self.chunker if chunk else None)
        if not inputs:
            return []
        with self.writing():  # a re-added document's chunks that are not cut again go
            keep = {c.id for c in inputs}
            stale = [i for i in self.db.ids_of_sources(sources) if i not in keep] if sources else []
            self.add_chunks(
                inputs, batch_size=batch_size, show_progress=show_progress, delete_ids=stale
            )
        return [c.id for c in inputs]

    def add_chunks(
        self,
        chunks: Sequence[ChunkInput],
        *,
        batch_size: int = 64,
        show_progress: bool = False,
        delete_ids: Sequence[str] = (),
        processor: ChunkProcessor | None = None,
    ) -> None:
        """Processes and writes prepared chunks, ``batch_size`` per committed batch.

        ``delete_ids`` go in the first batch's commit: a document added again in fewer chunks
        than before is replaced in one step when it fits one batch (readers never see it
        half-replaced). Compressing and embedding happen outside the commits, so searches
        go on meanwhile. ``processor`` replaces the store's own; it must make this store's
        memory (checked on write; see :func:`~memrag.store.processing.processor_for`).
        """
        from memrag.utils.progress import progress

        order = sorted(range(len(chunks)), key=lambda i: len(chunks[i].text), reverse=True)
        with self.writing(), progress(
            total=len(chunks), desc="adding", unit="chunk", disable=not show_progress
        ) as bar:
            if not chunks and delete_ids:
                self.delete(delete_ids)
            for start in range(0, len(order), batch_size):
                batch = [chunks[i] for i in order[start : start + batch_size]]
                processed = (processor or self.processor).process(batch)
                self.write(processed, delete_ids=delete_ids if not start else ())
                bar.update(len(batch))

    def write(self, batch: ProcessedBatch, *, delete_ids: Sequence[str] = ()) -> list[int]:
        """Writes a processed batch: one slot shard, one transaction; replaces existing ids.

        ``delete_ids`` are deleted in the same transaction (e.g. the old chunks of a document
        added again), so readers never see the document missing or doubled.

        Returns:
            The new vector ids of the chunks.

        Raises:
            CompressorMismatchError: the slots were made by another compressor.
            EmbedderMismatchError: the vectors were made by another embedder.
            ValueError: the batch is inconsistent with the store (shapes, dtype).
        """
        check_batch(self.path, self.manifest, batch)
        if not batch.chunks:
            return []
        with self.writing():
            vids = commit_batch(
                self.path, self.manifest, self.db, self.live_index, batch, delete_ids
            )
            self.live_index.maybe_checkpoint()
        return vids

    def delete(self, ids: Sequence[str] | None) -> int:
        """Deletes chunks by id; unknown ids are ignored. Returns how many were deleted."""
        if ids is None:
            return 0
        chosen = [ids] if isinstance(ids, str) else list(ids)
        with self.writing():
            return delete_chunks(self.db, self.live_index, chosen)

    def delete_sources(self, source_ids: Sequence[str]) -> int:
        """Deletes every chunk cut from the given documents. Returns how many were deleted."""
        return self.delete(self.db.ids_of_sources(list(source_ids)))

    def set_fidelity_threshold(self, threshold: float) -> int:
        """Re-flags every chunk against a new threshold. Returns how many are now ``use_text``."""
        changed = {**self.manifest.options.__dict__, "fidelity_threshold": float(threshold)}
        options = Options(**changed)
        with self.writing():
            reflag_use_text(self.db, options.fidelity_threshold)
            self.manifest.options = options
        return self.db.counts()["use_text"]

    # ------------------------------------------------------------------ index upkeep
    def refresh(self) -> None:
        """Brings the in-memory index up to date with other writers' committed changes."""
        self.live_index.refresh()

    def flush(self) -> None:
        """Writes an index checkpoint now if the journal has entries after the last one."""
        if not self.read_only:
            with self.writing():
                self.live_index.maybe_checkpoint(force=True)

    # ------------------------------------------------------------------ maintenance
    def compact(self, *, target_shard_slots: int = 65_536) -> CompactReport:
        """Rewrites slot shards without deleted slots, merges small shards, rebuilds the index.

        Rebuilding trains an ``ivf`` index on the current vectors and drops HNSW tombstones.
        Concurrent readers keep working: they re-read a chunk's location when its old shard
        has gone.
        """
        return compact(self, target_shard_slots=target_shard_slots)

    def _save_counts(self) -> None:
        self.manifest.counts = self.db.counts()
        self.manifest.save(self.path)

    def info(self) -> dict[str, Any]:
        """Manifest, live counts, memory bytes, index, fidelity statistics, disk usage and
        integrity (see :func:`memrag.store.describe.describe_store`)."""
        return describe_store(self)

    @property
    def integrity(self) -> IntegrityLog:
        """Chunks whose memory failed its integrity check on a read (served as text)."""
        return self.reader.integrity

    @property
    def verify_reads(self) -> bool:
        """Whether each chunk read is checked (checksum, finite values); off only to measure
        what the check costs."""
        return self.reader.verify

    @verify_reads.setter
    def verify_reads(self, value: bool) -> None:
        self.reader.verify = bool(value)

    def integrity_report(self) -> dict[str, Any]:
        """Damaged shards found on open and chunks that failed their check on a read since."""
        return self.reader.integrity_report()

    def verify(self, *, full: bool = True) -> Any:
        """Checks every file of the store; see :func:`memrag.store.verify.verify_store`."""
        from memrag.store.verify import verify_store

        return verify_store(self.path, full=full)

    def close(self) -> None:
        """Writes a pending index checkpoint (writers) and closes the database."""
        if self._closed:
            return
        try:
            if not self.read_only and self._dirty:
                with contextlib.suppress(StoreLockedError):
                    self.flush()
        finally:
            self.reader.shards.forget()
            self.db.close()
            self._closed = True


__all__ = [
    "CompactReport",
    "InvalidDocumentsError",
    "MemoryStore",
    "document_chunks",
    "RESERVED_KEYS",
]
