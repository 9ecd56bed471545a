"""The memory store: chunks, FAISS vectors and pre-computed memory slots in one directory.

Layout of a store directory::

    manifest.json        what made the store (format version, memory kind and settings,
                         compressor and memory fingerprints, embedder id and dimension,
                         index type, slot dtype, counts)
    store.sqlite         chunk text, metadata, fidelity, vectors, slot locations (WAL mode)
    index/index-<seq>.faiss + .json
                         FAISS index checkpoint after journal entry <seq>, with its SHA-256
    shards/shard-<uuid>.safetensors
                         memory of many chunks (memory-mapped on read): embedding slots, or
                         K/V memory packed by memrag.memory.codec
    .write.lock          the writer lock

Consistency: a write (one batch of chunks) writes its slot shard atomically, then commits
one SQLite transaction that inserts the chunks and journals their vector ids. The FAISS
index on disk is a checkpoint plus that journal, so it can always be brought up to date;
killing a writer at any point (even ``kill -9``) loses at most the uncommitted batch, and
the files it leaves behind (temporary files, an unreferenced shard) are removed by the next
writer. One writer at a time holds the file lock; any number of readers in other threads or
processes search concurrently and catch up with the journal before each search.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memrag.compressor.resolve import resolve_compressor
from memrag.memory.kinds import MemoryKind, check_compressor_kind
from memrag.memory.kv import KVSlots
from memrag.memory.spec import resolve_memory_spec
from memrag.slots import Slots
from memrag.store.chunking import Chunker
from memrag.store.database import ChunkRow, Database, NewChunk
from memrag.store.documents import InvalidDocumentsError, document_chunks, prepare_documents
from memrag.store.embedder import Embedder, load_embedder
from memrag.store.errors import (
    EmbedderMismatchError,
    StoreCorruptError,
    StoreExistsError,
    StoreLockedError,
    StoreReadOnlyError,
    compressor_mismatch,
)
from memrag.store.index import (
    IndexSpec,
    VectorIndex,
    list_checkpoints,
    read_checkpoint,
    remove_checkpoint,
    write_checkpoint,
)
from memrag.store.maintenance import CompactReport, compact, remove_debris
from memrag.store.integrity import (
    REPAIR_HINT,
    IntegrityFailure,
    IntegrityLog,
    finite,
    rows_checksum,
)
from memrag.store.manifest import (
    DATABASE_NAME,
    MANIFEST_NAME,
    DEFAULT_FIDELITY_THRESHOLDS,
    INDEX_DIR,
    LOCK_NAME,
    SHARDS_DIR,
    CompressorInfo,
    EmbedderInfo,
    Manifest,
    MemoryInfo,
    Options,
    resolve_fidelity,
)
from memrag.store.metadata import RESERVED_KEYS, dumps
from memrag.store.processing import ChunkInput, ChunkProcessor, ProcessedBatch
from memrag.store.records import ChunkRecord
from memrag.store.shards import ShardLayoutError, ShardReader, check_shard, write_shard
from memrag.utils.atomic import atomic_directory
from memrag.utils.rwlock import ReadWriteLock
from memrag.utils.torch_utils import dtype_name, resolve_dtype

logger = logging.getLogger(__name__)

#: Filtered searches on HNSW / IVF with at most this many candidates are done exactly.
EXACT_FILTER_LIMIT = 20_000
#: Index checkpoints are always written when the index is at most this big.
_SMALL_INDEX_BYTES = 8 << 20
_INDEX_LOAD_ATTEMPTS = 5  # re-reads when writers keep superseding the checkpoint being read


def memory_info(compressor: Any, memory: Any) -> MemoryInfo:
    """The manifest's description of ``memory`` (a spec, its JSON form, a mode string such as
    ``"kv-pruned:0.5"``, or ``None`` for :func:`~memrag.memory.spec.default_memory`) made with
    ``compressor``."""
    from memrag.memory.builders import codec_for

    config = compressor.config
    spec = resolve_memory_spec(memory, config.slot_kind)
    check_compressor_kind(spec.memory_kind, config.slot_kind)
    if not spec.is_kv:
        return MemoryInfo(
            kind=spec.kind,
            settings=spec.to_dict(),
            fingerprint=compressor.fingerprint,
            base_model=config.base_model,
            base_model_signature=dict(config.base_model_signature),
        )
    with compressor.decoder_mode() as decoder:
        codec = codec_for(decoder, spec)
    return MemoryInfo(
        kind=spec.kind,
        settings=spec.to_dict(),
        fingerprint=spec.fingerprint_for(compressor),
        base_model=config.base_model,
        base_model_signature=dict(config.base_model_signature),
        layers=codec.layers,
        kv_heads=codec.kv_heads,
        head_dim=codec.head_dim,
        row_bytes=codec.row_bytes,
    )


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
        import filelock

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
        self._shards = ShardReader(self.path / SHARDS_DIR)
        #: Chunks whose memory failed its integrity check on a read (served as text).
        self.integrity = IntegrityLog(str(self.path))
        #: Check each chunk read (checksum, finite values); off only to measure what it costs.
        self.verify_reads = True
        self._damaged_shards: dict[str, str] = {}
        self._file_lock = filelock.FileLock(str(self.path / LOCK_NAME)) if not read_only else None
        self._write_lock = threading.RLock()
        self._write_depth = 0
        self._cleaned = False
        # Shared by searches and reads, exclusive for commits and index changes.
        self._index_lock = ReadWriteLock()
        self._index: VectorIndex
        self._applied_seq = 0
        self._closed = False
        self._dirty = False
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
            chunk_tokens: Chunk length for documents added with ``chunk=True`` and by the
                indexing job (default: the compressor's segment length).
            chunk_overlap: Tokens shared by consecutive chunks (default: an eighth of a chunk).
            lock_timeout: Seconds to wait for the writer lock before raising.
            device: Device for models loaded here.
            dtype: Dtype for a compressor loaded here.

        Raises:
            StoreExistsError: ``path`` exists and is not an empty directory.
        """
        target = Path(path)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise StoreExistsError(
                f"cannot create a store at {target}: it exists and is not an empty directory"
            )
        compressor = resolve_compressor(
            compressor, memory_kind=resolve_memory_spec(memory).kind, device=device, dtype=dtype
        )
        embedder = load_embedder(embedder, device=device)
        spec = (
            index
            if isinstance(index, IndexSpec)
            else IndexSpec(type=index, **dict(index_options or {}))
        )
        memory_description = memory_info(compressor, memory)
        fidelity = resolve_fidelity(fidelity, memory_description.kind)
        if fidelity_threshold is None:
            fidelity_threshold = DEFAULT_FIDELITY_THRESHOLDS.get(fidelity, 0.5)
        options = Options(
            slot_dtype=slot_dtype,
            fidelity=fidelity,
            fidelity_threshold=fidelity_threshold,
            fidelity_max_tokens=fidelity_max_tokens,
            fidelity_sample_tokens=fidelity_sample_tokens,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
        )
        config = compressor.config
        manifest = Manifest(
            memory=memory_description,
            compressor=CompressorInfo(
                fingerprint=compressor.fingerprint,
                base_model=config.base_model,
                source=getattr(compressor, "source", None),
                slot_kind=config.slot_kind,
                segment_length=config.segment_length,
                compression_rate=config.compression_rate,
                hidden_size=compressor.hidden_size,
            ),
            embedder=EmbedderInfo(id=embedder.model_id, dimension=int(embedder.dimension)),
            index=spec,
            options=options,
        )
        if target.is_dir():
            target.rmdir()  # empty: replaced atomically below
        with atomic_directory(target) as tmp:
            (tmp / SHARDS_DIR).mkdir()
            Database(tmp / DATABASE_NAME, create=True).close()
            write_checkpoint(tmp / INDEX_DIR, 0, VectorIndex(spec, manifest.embedder.dimension))
            manifest.counts = {"chunks": 0, "slots": 0, "use_text": 0, "tokens": 0, "shards": 0}
            manifest.save(tmp)
        logger.info(
            "created store %s (%s memory %s, compressor %s, embedder %s)",
            target,
            manifest.memory_info.kind,
            manifest.memory_info.fingerprint,
            compressor.fingerprint,
            embedder.model_id,
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
            _check_compressor(root, manifest, compressor)
        if embedder is not None:
            embedder = load_embedder(embedder, device=device)
            _check_embedder(root, manifest, embedder)
        database = Database(root / DATABASE_NAME, read_only=read_only)
        store = cls(
            root,
            manifest,
            database,
            compressor=compressor,
            embedder=embedder,
            read_only=read_only,
            lock_timeout=lock_timeout,
            device=device,
            dtype=dtype,
        )
        try:
            if check:
                store._damaged_shards = store._check_shards(full=check == "full")
            try:
                store._index, store._applied_seq = store._load_index()
            except StoreCorruptError as err:
                if not rebuild_index or read_only:
                    raise
                logger.warning("%s; rebuilding the index from the database", err)
                store._index, store._applied_seq = (
                    VectorIndex(manifest.index, manifest.embedder.dimension),
                    0,
                )
                store._applied_seq = database.journal_head()
                with store.writing():
                    store._rebuild_index()
                store.index_was_rebuilt = True
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
            self._compressor = self._load_manifest_compressor()
        return self._compressor

    @property
    def embedder(self) -> Embedder:
        """The store's embedder (loaded from the manifest's id on first use)."""
        if self._embedder is None:
            embedder = load_embedder(self.manifest.embedder.id, device=self._device)
            _check_embedder(self.path, self.manifest, embedder)
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
        _check_compressor(self.path, self.manifest, compressor)

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
        """Token-aware chunker with the store's chunk length and overlap."""
        if self._chunker is None:
            options = self.manifest.options
            size = options.chunk_tokens or self.manifest.compressor.segment_length
            overlap = (
                size // 8 if options.chunk_overlap is None else min(options.chunk_overlap, size - 1)
            )
            self._chunker = Chunker(self.compressor.tokenizer, size, overlap)
        return self._chunker

    @property
    def processor(self) -> ChunkProcessor:
        """The embed / compress / score step used by :meth:`add`."""
        if self._processor is None:
            self._processor = self.make_processor(self.compressor, self.embedder)
        return self._processor

    def make_processor(
        self,
        compressor: Any,
        embedder: Embedder,
        *,
        compress_batch_size: int = 16,
        reuse: Any = None,
    ) -> ChunkProcessor:
        """A :class:`ChunkProcessor` with this store's memory, slot dtype and fidelity settings.

        ``reuse`` (a :class:`~memrag.memory.builders.MemoryReuse`) shares computed K/V memory
        and selection scores with other processors of the same texts (several stores of one
        corpus in different K/V settings).
        """
        return ChunkProcessor(
            compressor,
            embedder,
            compress_batch_size=compress_batch_size,
            reuse=reuse,
            **self.processor_kwargs(),
        )

    def processor_kwargs(self) -> dict[str, Any]:
        """The :class:`ChunkProcessor` settings this store's manifest fixes (memory, dtype, fidelity)."""
        return {"memory": dict(self.memory.settings), **self.manifest.options.processor_kwargs()}

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
        with self._index_lock.read():
            rows = self.db.rows_by_ids(ids)
            ordered = [rows[i] for i in dict.fromkeys(ids) if i in rows]
            return self._records(ordered, with_slots)

    def search(
        self, query: str, k: int = 4, filter: dict | None = None, with_slots: bool = True
    ) -> list[ChunkRecord]:
        """The ``k`` chunks closest to ``query`` (score: cosine similarity, higher is closer).

        Args:
            query: The query text (embedded with the store's embedder).
            k: Number of results.
            filter: Metadata filter (see :mod:`memrag.store.metadata`), e.g. ``{"lang": "en"}``.
            with_slots: Also load each chunk's slots.
        """
        return self.search_by_vector(self.embedder.embed_query(query), k, filter, with_slots)

    def search_by_vector(
        self,
        vector: Sequence[float] | np.ndarray,
        k: int = 4,
        filter: dict | None = None,
        with_slots: bool = True,
    ) -> list[ChunkRecord]:
        """Like :meth:`search`, for a query vector of the store's dimension."""
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.dimension:
            raise ValueError(
                f"query vector has dimension {query.shape[1]}, the store's vectors {self.dimension}"
            )
        if k <= 0:
            return []
        self.refresh()
        allowed = None
        if filter:
            allowed = self.db.filter_vids(filter)
            if len(allowed) == 0:
                return []
        with self._index_lock.read():
            index = self._index
            if (
                allowed is not None
                and index.structure != "flat"
                and len(allowed) <= EXACT_FILTER_LIMIT
            ):
                scores, vids = self._exact_search(query[0], allowed, k)
            else:
                scores, vids = index.search(query, k, allowed=allowed)
                scores, vids = scores[0], vids[0]
            hits = [(int(v), float(s)) for v, s in zip(vids, scores) if v >= 0]
            rows = self.db.rows_by_vids([v for v, _ in hits])
            found = [(rows[v], s) for v, s in hits if v in rows]
            records = self._records([row for row, _ in found], with_slots)
        for record, (_, score) in zip(records, found):
            record.score = score
        return records

    def _exact_search(
        self, query: np.ndarray, allowed: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        from memrag.store.index import normalize

        vids, vectors = self.db.vectors(allowed.tolist(), self.dimension)
        scores = (
            normalize(vectors) @ normalize(query)[0] if len(vids) else np.zeros(0, dtype=np.float32)
        )
        top = np.argsort(-scores, kind="stable")[:k]
        return scores[top], vids[top]

    def _records(self, rows: list[ChunkRow], with_slots: bool) -> list[ChunkRecord]:
        slots = self._read_slots(rows) if with_slots else {}
        return [
            ChunkRecord(
                id=row.id,
                text=row.text,
                metadata=row.metadata,
                slots=slots.get(row.vid),
                # A chunk whose memory failed its check is served as text.
                use_text=row.use_text or (with_slots and bool(row.slot_count) and row.vid not in slots),
                fidelity=row.fidelity,
            )
            for row in rows
        ]

    def _read_slots(
        self, rows: list[ChunkRow], *, retry: bool = True
    ) -> dict[int, Slots | KVSlots]:
        """The memory of each row that has some and passes its integrity check.

        A row whose shard is missing or unreadable, whose bytes do not match their checksum,
        or whose decoded memory is not finite is left out (its chunk is served as text) and
        recorded in :attr:`integrity`.
        """
        codec = self.memory.codec() if self.memory.is_kv else None
        result: dict[int, Slots | KVSlots] = {}
        for row in rows:
            if row.shard_file is None or not row.slot_count:
                continue
            if row.shard_file in self._damaged_shards:
                self._fail(row, f"damaged shard: {self._damaged_shards[row.shard_file]}")
                continue
            try:
                tensor = self._shards.read(
                    row.shard_file, int(row.slot_start or 0), int(row.slot_count)
                )
            except FileNotFoundError:
                if retry:
                    # A concurrent compaction moved the slots: read the rows' new locations.
                    self._shards.forget()
                    fresh = self.db.rows_by_vids([r.vid for r in rows])
                    return self._read_slots(
                        [fresh[r.vid] for r in rows if r.vid in fresh], retry=False
                    )
                self._fail(row, "missing shard")
                continue
            except StoreCorruptError as err:
                self._fail(row, f"unreadable shard: {err}")
                continue
            memory = self._decode(row, tensor, codec)
            if memory is not None:
                result[row.vid] = memory
        return result

    def _decode(self, row: ChunkRow, tensor: torch.Tensor, codec: Any) -> Slots | KVSlots | None:
        """One row's memory from its stored rows, or ``None`` (recorded) when it fails a check."""
        verify = self.verify_reads
        if verify and row.slot_crc32 is not None and rows_checksum(tensor) != row.slot_crc32:
            self._fail(row, "checksum mismatch")
            return None
        memory = self.memory
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

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def writing(self) -> Iterator["MemoryStore"]:
        """Holds the writer lock for a series of writes (re-entrant).

        Raises:
            StoreReadOnlyError: the store was opened read-only.
            StoreLockedError: another process holds the lock longer than ``lock_timeout``.
        """
        import filelock

        if self.read_only or self._file_lock is None:
            raise StoreReadOnlyError(f"{self.path} was opened read-only")
        with self._write_lock:
            if self._write_depth == 0:
                try:
                    self._file_lock.acquire(timeout=self.lock_timeout)
                except filelock.Timeout:
                    raise StoreLockedError(
                        f"{self.path} is being written by another process (lock "
                        f"{self._file_lock.lock_file}); "
                        f"waited {self.lock_timeout:.0f}s"
                    ) from None
                try:
                    if not self._cleaned:
                        remove_debris(self)
                        self._cleaned = True
                    self.refresh()
                except BaseException:
                    self._file_lock.release()
                    raise
            self._write_depth += 1
            self._dirty = True
            try:
                yield self
            finally:
                self._write_depth -= 1
                if self._write_depth == 0:
                    try:
                        self._maybe_checkpoint(final=True)
                        self._save_counts()
                    finally:
                        self._file_lock.release()

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
        if isinstance(texts_or_documents, str):
            texts_or_documents = [texts_or_documents]
        items = list(texts_or_documents)
        inputs, sources = prepare_documents(items, ids, metadatas, self.chunker if chunk else None)
        if not inputs:
            return []
        with self.writing():
            stale = []
            if sources:
                keep = {c.id for c in inputs}
                stale = [i for i in self.db.ids_of_sources(sources) if i not in keep]
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
        go on meanwhile. ``processor`` replaces the store's own (see :meth:`make_processor`);
        it must make this store's memory (checked on write).
        """
        from memrag.utils.progress import progress

        order = sorted(range(len(chunks)), key=lambda i: len(chunks[i].text), reverse=True)
        with (
            self.writing(),
            progress(
                total=len(chunks), desc="adding", unit="chunk", disable=not show_progress
            ) as bar,
        ):
            if not chunks and delete_ids:
                self.delete(delete_ids)
            for start in range(0, len(order), batch_size):
                batch = [chunks[i] for i in order[start : start + batch_size]]
                self.write(
                    (processor or self.processor).process(batch),
                    delete_ids=delete_ids if not start else (),
                )
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
        self._check_batch(batch)
        if not batch.chunks:
            return []
        threshold = self.manifest.options.fidelity_threshold
        with self.writing():
            shard = None
            if batch.slots.shape[0]:
                shard = write_shard(
                    self.path / SHARDS_DIR,
                    batch.slots,
                    fingerprint=batch.fingerprint,
                    slot_kind=batch.slot_kind,
                )
            try:
                offsets = np.concatenate([[0], np.cumsum(batch.slot_counts)]).tolist()
                new = [
                    NewChunk(
                        id=c.id,
                        source_id=c.source_id,
                        text=c.text,
                        metadata_json=dumps(c.metadata),
                        content_hash=c.content_hash,
                        num_tokens=batch.num_tokens[i],
                        text_tokens=batch.text_tokens[i],
                        fidelity=batch.fidelity[i],
                        use_text=batch.fidelity[i] is not None and batch.fidelity[i] < threshold,
                        vector=batch.vectors[i],
                        slot_start=int(offsets[i]) if shard else None,
                        slot_count=int(batch.slot_counts[i]) if shard else None,
                        segment_slot_counts=list(batch.segment_slot_counts[i]),
                        slot_crc32=rows_checksum(batch.slots[offsets[i] : offsets[i + 1]])
                        if shard
                        else None,
                    )
                    for i, c in enumerate(batch.chunks)
                ]
                # Readers see the batch all at once: the commit and the index update
                # happen while they wait.
                with self._index_lock.write():
                    with self.db.transaction() as conn:
                        if shard is not None:
                            shard_id = Database.insert_shard(
                                conn, shard.file, shard.num_slots, shard.bytes, shard.sha256
                            )
                            for chunk in new:
                                chunk.shard_id = shard_id
                        stale = Database.delete_ids(conn, list(delete_ids))
                        removed = Database.delete_ids(conn, [c.id for c in new])
                        vids = Database.insert_chunks(conn, new)
                    self._index.remove(np.asarray(stale + removed, dtype=np.int64))
                    self._index.add(np.asarray(vids, dtype=np.int64), batch.vectors)
                    self._applied_seq = self.db.journal_head()
            except BaseException:
                if shard is not None:
                    (self.path / SHARDS_DIR / shard.file).unlink(missing_ok=True)
                raise
            self._maybe_checkpoint()
        return vids

    def _check_batch(self, batch: ProcessedBatch) -> None:
        memory = self.memory
        if batch.slot_kind != memory.kind:
            raise ValueError(
                f"{batch.slot_kind} memory cannot go into {self.path}, which holds "
                f"{memory.kind} memory"
            )
        if batch.fingerprint != self.fingerprint:
            raise compressor_mismatch(
                f"{memory.kind} memory made by {batch.fingerprint} cannot go into {self.path}, "
                f"which holds {memory.kind} memory of {self.fingerprint}"
            )
        if batch.embedder_id != self.manifest.embedder.id:
            raise EmbedderMismatchError(
                f"vectors made by embedder {batch.embedder_id!r} cannot go into {self.path}, "
                f"whose embedder is {self.manifest.embedder.id!r}"
            )
        n = len(batch.chunks)
        if batch.vectors.shape != (n, self.dimension):
            raise ValueError(
                f"expected vectors of shape ({n}, {self.dimension}), got "
                f"{tuple(batch.vectors.shape)}"
            )
        if memory.is_kv:
            if batch.slots.dtype != torch.uint8 or batch.slots.shape[-1] != memory.row_bytes:
                raise ValueError(
                    f"K/V rows are {dtype_name(batch.slots.dtype)} of width {batch.slots.shape[-1]}, "
                    f"the store keeps uint8 rows of {memory.row_bytes} bytes"
                )
        elif dtype_name(batch.slots.dtype) != self.manifest.options.slot_dtype:
            raise ValueError(
                f"slots are {dtype_name(batch.slots.dtype)}, the store keeps "
                f"{self.manifest.options.slot_dtype}"
            )
        if n and not memory.is_kv and batch.slots.shape[-1] != self.manifest.compressor.hidden_size:
            raise ValueError(
                f"slots have width {batch.slots.shape[-1]}, expected "
                f"{self.manifest.compressor.hidden_size}"
            )
        if sum(batch.slot_counts) != batch.slots.shape[0] or not (
            len(batch.slot_counts) == len(batch.fidelity) == len(batch.num_tokens)
            == len(batch.text_tokens) == n
        ):
            raise ValueError(
                "inconsistent batch: slot counts, fidelity or token counts do not match the chunks"
            )

    def delete(self, ids: Sequence[str] | None) -> int:
        """Deletes chunks by id; unknown ids are ignored. Returns how many were deleted."""
        if ids is None:
            return 0
        if isinstance(ids, str):
            ids = [ids]
        with self.writing(), self._index_lock.write():
            with self.db.transaction() as conn:
                vids = Database.delete_ids(conn, list(ids))
            self._index.remove(np.asarray(vids, dtype=np.int64))
            self._applied_seq = self.db.journal_head()
        return len(vids)

    def delete_sources(self, source_ids: Sequence[str]) -> int:
        """Deletes every chunk cut from the given documents. Returns how many were deleted."""
        return self.delete(self.db.ids_of_sources(list(source_ids)))

    def set_fidelity_threshold(self, threshold: float) -> int:
        """Re-flags every chunk against a new threshold. Returns how many are now ``use_text``."""
        options = Options(
            **{**self.manifest.options.__dict__, "fidelity_threshold": float(threshold)}
        )
        with self.writing():
            with self.db.transaction() as conn:
                conn.execute(
                    "UPDATE chunks SET use_text = (fidelity IS NOT NULL AND fidelity < ?)",
                    (options.fidelity_threshold,),
                )
            self.manifest.options = options
        return self.db.counts()["use_text"]

    # ------------------------------------------------------------------ index upkeep
    def refresh(self) -> None:
        """Brings the in-memory index up to date with other writers' committed changes."""
        if self.db.journal_head() <= self._applied_seq:
            return  # nothing new (this process's own writes update the index as they commit)
        with self._index_lock.write():
            try:
                head, entries = self.db.journal_since(self._applied_seq)
            except LookupError:  # folded into a newer checkpoint (e.g. after a compaction)
                self._index, self._applied_seq = self._load_index()
                return
            if entries:
                self._replay(self._index, entries)
            self._applied_seq = max(self._applied_seq, head)

    def _replay(self, index: VectorIndex, entries: list[tuple[int, str, int]]) -> None:
        added = {vid for _, op, vid in entries if op == "add"}
        deleted = {vid for _, op, vid in entries if op == "del"}
        index.remove(np.fromiter(deleted - added, dtype=np.int64))
        vids, vectors = self.db.vectors(sorted(added - deleted), self.dimension)
        index.add(vids, vectors)

    def _load_index(self) -> tuple[VectorIndex, int]:
        """The newest index checkpoint with the journal after it replayed.

        A writer in another process may supersede the checkpoint while it is read (it
        writes a newer one, deletes the old one and folds the journal into it): the read
        then starts over from the newer checkpoint.
        """
        directory = self.path / INDEX_DIR
        attempts_left = _INDEX_LOAD_ATTEMPTS
        while True:
            attempts_left -= 1
            required = self.db.checkpoint_seq()
            usable = [c for c in list_checkpoints(directory) if c.seq >= required]
            if not usable:
                raise StoreCorruptError(
                    f"{directory}: no index checkpoint at or after journal entry {required}; "
                    "`memrag index verify --repair` rebuilds the index from the database"
                )
            newest = usable[-1]
            try:
                index = read_checkpoint(newest, self.manifest.index, self.dimension)
                head, entries = self.db.journal_since(newest.seq)
            except (StoreCorruptError, LookupError):
                superseded = not newest.sidecar.exists() or self.db.checkpoint_seq() > newest.seq
                if superseded and attempts_left > 0:
                    continue
                raise
            if entries:
                self._replay(index, entries)
            return index, max(newest.seq, head)

    def _maybe_checkpoint(self, *, force: bool = False, final: bool = False) -> None:
        """Checkpoints the index when the journal since the last checkpoint is long enough.

        During a series of writes, a checkpoint is due when the pending journal holds a
        quarter of the index (at least 10,000 entries), so a growing store rewrites its
        index a bounded number of times; at the end of a series (``final``), a small index
        is always checkpointed. An ``ivf`` index that has become large enough is trained.
        """
        if self.read_only:
            return
        with self._index_lock.write():
            pending = self._applied_seq - self.db.checkpoint_seq()
            train = self._index.wants_training()
            if pending <= 0 and not train:
                return
            small = self._index.ntotal * self.dimension * 4 <= _SMALL_INDEX_BYTES
            due = (
                force
                or pending >= max(10_000, self._index.ntotal // 4)
                or (final and (small or train))
            )
            if not due:
                return
            if train:
                self._rebuild_index()
            else:
                self._write_checkpoint()

    def _write_checkpoint(self) -> None:
        directory = self.path / INDEX_DIR
        seq = self._applied_seq
        checkpoint = write_checkpoint(directory, seq, self._index)
        with self.db.transaction() as conn:
            Database.set_meta(conn, "index_checkpoint_seq", str(seq))
            conn.execute("DELETE FROM journal WHERE seq <= ?", (seq,))
        for old in list_checkpoints(directory):
            if old.seq < checkpoint.seq:
                remove_checkpoint(old)
        logger.info("index checkpoint %s (%d vectors)", checkpoint.file.name, checkpoint.ntotal)

    def _rebuild_index(self) -> None:
        """Rebuilds the FAISS index from the database's vectors and checkpoints it."""
        with self._index_lock.write():
            self._applied_seq = self.db.journal_head()
            vids, vectors = self.db.all_vectors(self.dimension)
            self._index = VectorIndex.build(self.manifest.index, self.dimension, vids, vectors)
            self._write_checkpoint()

    def flush(self) -> None:
        """Writes an index checkpoint now if the journal has entries after the last one."""
        if not self.read_only:
            with self.writing():
                self._maybe_checkpoint(force=True)

    # ------------------------------------------------------------------ maintenance
    def compact(self, *, target_shard_slots: int = 65_536) -> CompactReport:
        """Rewrites slot shards without deleted slots, merges small shards, rebuilds the index.

        Rebuilding trains an ``ivf`` index on the current vectors and drops HNSW tombstones.
        Concurrent readers keep working: they re-read a chunk's location when its old shard
        has gone.
        """
        return compact(self, target_shard_slots=target_shard_slots)

    def _check_shards(self, *, full: bool = False) -> dict[str, str]:
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
                    fingerprint=self.fingerprint,
                    layout=layout,
                )
                if full and sha256_file(path) != shard.sha256:
                    raise StoreCorruptError(f"slot shard {path} does not match its checksum (corrupt)")
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

    def _save_counts(self) -> None:
        self.manifest.counts = self.db.counts()
        self.manifest.save(self.path)

    def _load_manifest_compressor(self) -> Any:
        info = self.manifest.compressor
        try:
            compressor = resolve_compressor(
                info.source or None,
                untrained_base=None if info.source else info.base_model,
                # K/V memory needs only the base model: any compressor over it reads the store.
                fallback_base=self.memory.base_model if self.memory.is_kv else None,
                on_fallback=logger.info,
                device=self._device,
                dtype=self._dtype,
            )
        except FileNotFoundError as err:
            raise compressor_mismatch(
                f"cannot load the compressor of {self.path} ({info.source}): {err}; pass "
                "compressor="
            ) from err
        except (OSError, ValueError) as err:
            raise compressor_mismatch(
                f"cannot load the compressor of {self.path} (fingerprint {info.fingerprint}, "
                f"source {info.source or 'untrained over ' + info.base_model}): {err}; pass "
                "compressor="
            ) from err
        _check_compressor(self.path, self.manifest, compressor)
        return compressor

    def info(self) -> dict[str, Any]:
        """Manifest, live counts, fidelity statistics and disk usage."""
        counts = self.db.counts()
        fidelity = self.db.fidelity_values()
        quantiles = (
            dict(
                zip(
                    ("min", "p10", "p50", "p90", "max"),
                    np.quantile(fidelity, [0, 0.1, 0.5, 0.9, 1]).round(4).tolist(),
                )
            )
            if len(fidelity)
            else {}
        )
        shard_bytes = sum(p.stat().st_size for p in (self.path / SHARDS_DIR).glob("*.safetensors"))
        memory = self.memory
        stored = {
            "kind": memory.kind,
            "settings": memory.settings,
            "fingerprint": memory.fingerprint,
            # Live rows only (deleted chunks' rows stay in shards until a compaction).
            "bytes_per_chunk": counts["slots"] * self._row_bytes() / max(counts["chunks"], 1),
            # Per token of the chunks' text (not per position the memory keeps).
            "bytes_per_token": counts["slots"] * self._row_bytes() / max(counts["tokens"], 1),
            "positions_per_chunk": counts["positions"] / max(counts["chunks"], 1),
        }
        disk = {
            "shards": shard_bytes,
            "index": sum(p.stat().st_size for p in (self.path / INDEX_DIR).glob("*.faiss")),
            "database": sum(p.stat().st_size for p in self.path.glob(DATABASE_NAME + "*")),
        }
        with self._index_lock.read():
            index = {
                "structure": self._index.structure,
                "vectors": self._index.live_count,
                "tombstones": len(self._index.tombstones),
                "journal_pending": self._applied_seq - self.db.checkpoint_seq(),
            }
        return {
            "path": str(self.path),
            "manifest": self.manifest.to_dict(),
            "memory": stored,
            "counts": counts,
            "index": index,
            "fidelity": quantiles,
            "disk_bytes": disk,
            "integrity": self.integrity_report(),
        }

    def integrity_report(self) -> dict[str, Any]:
        """Damaged shards found on open and chunks that failed their check on a read since."""
        return {"damaged_shards": dict(self._damaged_shards), **self.integrity.stats()}

    def _row_bytes(self) -> int:
        """Bytes of one stored row (a slot, or a packed K/V position)."""
        if self.memory.is_kv:
            return self.memory.row_bytes
        width = self.manifest.compressor.hidden_size
        return width * torch.tensor([], dtype=resolve_dtype(self.manifest.options.slot_dtype)).element_size()

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
            self._shards.forget()
            self.db.close()
            self._closed = True


def _check_compressor(path: Path, manifest: Manifest, compressor: Any) -> None:
    memory = manifest.memory_info
    if memory.is_kv and not MemoryKind.parse(memory.kind).needs_training:
        # K/V memory is the base model's own: any compressor over that base model reads it.
        signature = dict(compressor.config.base_model_signature)
        if signature != memory.base_model_signature:
            raise compressor_mismatch(
                f"{path} holds {memory.kind} memory of base model {memory.base_model!r} "
                f"{_describe_signature(memory.base_model_signature)}; the compressor given is "
                f"over {compressor.config.base_model!r} {_describe_signature(signature)}. K/V "
                "memory of one model cannot be read by another."
            )
        return
    if compressor.fingerprint != manifest.compressor.fingerprint:
        raise compressor_mismatch(
            f"{path} holds slots of compressor {manifest.compressor.fingerprint} "
            f"({manifest.compressor.source or manifest.compressor.base_model}); the compressor "
            "given has "
            f"fingerprint {compressor.fingerprint}. Slots of one compressor cannot be read by "
            "another."
        )


def _describe_signature(signature: Mapping[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in sorted(signature.items())) + ")"


def _check_embedder(path: Path, manifest: Manifest, embedder: Embedder) -> None:
    info = manifest.embedder
    if embedder.model_id != info.id or int(embedder.dimension) != info.dimension:
        raise EmbedderMismatchError(
            f"{path} was indexed with embedder {info.id!r} (dimension {info.dimension}); "
            f"the embedder given is {embedder.model_id!r} (dimension {embedder.dimension})"
        )


__all__ = [
    "CompactReport",
    "InvalidDocumentsError",
    "MemoryStore",
    "document_chunks",
    "RESERVED_KEYS",
]
