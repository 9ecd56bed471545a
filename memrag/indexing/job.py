"""The offline corpus-compression job: corpus -> chunks -> vectors + slots + fidelity -> store.

The job is a loop of three parts:

* the **planner** (in this process) reads the corpus, cuts each document into chunks with
  the store's chunker, skips chunks already stored with the same content hash, removes
  chunks of a document that no longer exist (the document got shorter), and cuts the rest
  into length-sorted batches;
* an **executor** turns batches into :class:`~memrag.store.processing.ProcessedBatch` es:
  :class:`LocalExecutor` here, or :class:`~memrag.indexing.ray_backend.RayExecutor` on Ray
  workers;
* the **writer** (in this process, holding the store's lock) commits each processed batch
  as one shard + one SQLite transaction.

Because every committed batch is durable and finished chunks are recognised by id and
content hash, an interrupted job (Ctrl-C, ``kill -9``, a crash) is resumed by running it
again: finished work is skipped and nothing is corrupted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from memrag.compressor.resolve import resolve_compressor
from memrag.indexing.corpus import CorpusReader, CorpusReport, count_documents
from memrag.store.fidelity import SET_THRESHOLD_HINT, mostly_text
from memrag.store.memory_store import MemoryStore, document_chunks
from memrag.store.processing import ChunkInput, ChunkProcessor, ProcessedBatch, processor_for
from memrag.utils.progress import progress

logger = logging.getLogger(__name__)

BACKENDS = ("local", "ray")


@dataclass
class BuildOptions:
    """How the job runs.

    Args:
        batch_chunks: Chunks per committed batch (one slot shard each).
        compress_batch_size: Segments per encoder forward pass.
        window_batches: Batches read ahead and sorted by length together.
        on_error: ``"skip"`` bad input and report it, or ``"raise"`` at the first.
        show_progress: Show a progress bar counting chunks (the total estimated from the
            documents read so far, exact once all are read), with an ETA, the documents read,
            tokens per second and the projected size of the store's memory.
    """

    batch_chunks: int = 64
    compress_batch_size: int = 16
    window_batches: int = 8
    on_error: str = "skip"
    show_progress: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_chunks", "compress_batch_size", "window_batches"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {self.on_error!r}")


@dataclass
class BuildReport:
    """What a build did.

    Attributes:
        store: The store directory.
        backend: ``local`` or ``ray``.
        corpus: Reading findings (skipped rows / files, warnings).
        documents: Documents read.
        chunks_total: Chunks the documents were cut into.
        chunks_written: Chunks compressed and written by this run.
        chunks_unchanged: Chunks already in the store with the same content (not redone).
        chunks_removed: Stale chunks removed (a document got shorter).
        tokens_written: Text tokens (compressor tokenizer) of the chunks written.
        flagged_use_text: Written chunks whose fidelity fell below the threshold.
        clamped: Written chunks whose slots overflowed the slot dtype.
        seconds: Wall time.
        compute_seconds: Time spent embedding / compressing / scoring (summed over workers).
    """

    store: str
    backend: str
    corpus: CorpusReport = field(default_factory=CorpusReport)
    documents: int = 0
    chunks_total: int = 0
    chunks_written: int = 0
    chunks_unchanged: int = 0
    chunks_removed: int = 0
    tokens_written: int = 0
    flagged_use_text: int = 0
    clamped: int = 0
    seconds: float = 0.0
    compute_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        """Compressed tokens per wall-clock second."""
        return self.tokens_written / self.seconds if self.seconds > 0 else 0.0

    def fidelity_warning(self) -> str | None:
        """What to tell the user when most chunks will be served as text, else ``None``."""
        if not mostly_text(self.flagged_use_text, self.chunks_written):
            return None
        return (
            f"{self.flagged_use_text} of the {self.chunks_written} chunks written scored below "
            "the store's fidelity threshold, so they will be served as text, not slots: the "
            "compressor reconstructs them poorly (see its model card). To serve slots anyway: "
            f"{SET_THRESHOLD_HINT}."
        )

    def summary(self) -> str:
        """A multi-line summary for people (bad input listed at the end)."""
        lines = [
            f"store {self.store} ({self.backend} backend): {self.documents} documents -> "
            f"{self.chunks_total} chunks",
            f"  written {self.chunks_written} chunks ({self.tokens_written:,} text tokens) in "
            f"{self.seconds:.1f}s "
            f"= {self.tokens_per_second:,.0f} tokens/s",
            f"  unchanged (already stored, skipped) {self.chunks_unchanged}; stale chunks "
            f"removed {self.chunks_removed}",
            f"  low fidelity (served as text) {self.flagged_use_text}; slots clamped to the slot "
            f"dtype {self.clamped}",
            f"  bad input skipped {self.corpus.skipped}; warnings {len(self.corpus.warnings)}",
        ]
        lines += [f"    {line}" for line in self.corpus.lines()]
        warning = self.fidelity_warning()
        if warning:
            lines.append(f"  warning: {warning}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "store": self.store,
            "backend": self.backend,
            "documents": self.documents,
            "chunks_total": self.chunks_total,
            "chunks_written": self.chunks_written,
            "chunks_unchanged": self.chunks_unchanged,
            "chunks_removed": self.chunks_removed,
            "tokens_written": self.tokens_written,
            "tokens_per_second": self.tokens_per_second,
            "flagged_use_text": self.flagged_use_text,
            "fidelity_warning": self.fidelity_warning(),
            "clamped": self.clamped,
            "seconds": self.seconds,
            "compute_seconds": self.compute_seconds,
            "skipped": [str(r) for r in self.corpus.rows.bad_rows]
            + [f"{p}: {r}" for p, r in self.corpus.skipped_files],
            "warnings": [f"{w}: {m}" for w, m in self.corpus.warnings],
        }


class Executor(Protocol):
    """Turns batches of chunks into processed batches (in any order)."""

    def map(self, batches: Iterable[list[ChunkInput]]) -> Iterator[ProcessedBatch]:
        """Processes every batch, yielding results as they are ready."""

    def close(self) -> None:
        """Releases workers."""


class LocalExecutor:
    """Processes batches in this process, one after the other."""

    def __init__(self, processor: ChunkProcessor) -> None:
        self.processor = processor

    def map(self, batches: Iterable[list[ChunkInput]]) -> Iterator[ProcessedBatch]:
        for batch in batches:
            yield self.processor.process(batch)

    def close(self) -> None:
        """Nothing to release."""


class _Planner:
    """Reads documents, chunks them, skips finished chunks, yields length-sorted batches."""

    def __init__(
        self, store: MemoryStore, reader: CorpusReader, options: BuildOptions, report: BuildReport
    ) -> None:
        self.store = store
        self.reader = reader
        self.options = options
        self.report = report

    def batches(self) -> Iterator[list[ChunkInput]]:
        window: list[ChunkInput] = []
        limit = self.options.batch_chunks * self.options.window_batches
        for document in self.reader:
            self.report.documents += 1
            window.extend(self._plan(document.id, document.text, document.metadata))
            if len(window) >= limit:
                yield from self._cut(window)
                window = []
        yield from self._cut(window)

    def _plan(self, doc_id: str, text: str, metadata: dict[str, Any]) -> list[ChunkInput]:
        chunks = document_chunks(self.store.chunker, doc_id, text, metadata)
        stored = self.store.db.hashes_of_source(doc_id)
        wanted = {c.id for c in chunks}
        stale = [chunk_id for chunk_id in stored if chunk_id not in wanted]
        if stale:
            self.report.chunks_removed += self.store.delete(stale)
        todo = [c for c in chunks if stored.get(c.id) != c.content_hash]
        self.report.chunks_total += len(chunks)
        self.report.chunks_unchanged += len(chunks) - len(todo)
        return todo

    def _cut(self, window: list[ChunkInput]) -> Iterator[list[ChunkInput]]:
        window.sort(key=lambda c: len(c.text), reverse=True)
        size = self.options.batch_chunks
        for start in range(0, len(window), size):
            yield window[start : start + size]

def _resolve_compressor(compressor: Any, device: str, dtype: Any) -> Any:
    """An instance from an instance, a factory, a directory / shipped name; ``None`` stays
    ``None`` (the store chooses the default for its memory)."""
    if compressor is None:
        return None
    return resolve_compressor(compressor, device=device, dtype=dtype)


def build_index(
    corpus: str | os.PathLike[str],
    store: str | os.PathLike[str] | MemoryStore,
    *,
    compressor: Any = None,
    embedder: Any = None,
    backend: str = "local",
    options: BuildOptions | None = None,
    ray_options: Any = None,
    device: str = "cpu",
    dtype: Any = None,
    create_options: dict[str, Any] | None = None,
) -> BuildReport:
    """Indexes a corpus into a store (created if missing), resuming any earlier run.

    Args:
        corpus: A JSONL file, a text file or a directory (see :mod:`memrag.indexing.corpus`).
        store: The store directory, or an open :class:`MemoryStore`.
        compressor: A :class:`Compressor`, a directory or shipped name, a zero-argument
            factory returning one (what Ray workers call), or ``None`` (an existing store's
            own compressor, else the shipped default).
        embedder: An embedder or embedder id (``None``: the store's, else all-MiniLM-L6-v2).
        backend: ``"local"`` or ``"ray"``.
        options: Batching, error handling and progress options.
        ray_options: :class:`~memrag.indexing.ray_backend.RayOptions` for ``backend="ray"``.
        device: Device for models loaded here (and on Ray workers).
        dtype: Dtype for a compressor loaded here.
        create_options: :meth:`MemoryStore.create` options for a new store (index type,
            slot dtype, fidelity threshold, chunk length, ...).

    Returns:
        What was done, including the bad input that was skipped.

    Raises:
        CompressorMismatchError: the store holds slots of another compressor.
        BadRowError: bad input with ``on_error="raise"``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    options = options or BuildOptions()
    started = time.perf_counter()
    spec = compressor
    instance = _resolve_compressor(compressor, device, dtype)
    if isinstance(store, MemoryStore):
        opened, owned = store, False
        if instance is not None:
            opened.check_compressor(instance)
    else:
        opened = MemoryStore.open_or_create(
            store, instance, embedder, device=device, dtype=dtype, **dict(create_options or {})
        )
        owned = True
    report = BuildReport(store=str(opened.path), backend=backend)
    try:
        reader = CorpusReader(corpus, on_error=options.on_error, report=report.corpus)  # type: ignore[arg-type]
        total = count_documents(corpus)
        with opened.writing():
            executor = _executor(backend, opened, spec, options, ray_options, device, dtype)
            try:
                _run(opened, reader, executor, options, report, total)
            finally:
                executor.close()
            opened.flush()
    finally:
        report.seconds = time.perf_counter() - started
        if owned:
            opened.close()
    logger.info("build finished: %s", report.summary())
    warning = report.fidelity_warning()
    if warning:
        logger.warning("%s: %s", report.store, warning)
    return report


def _executor(
    backend: str,
    store: MemoryStore,
    spec: Any,
    options: BuildOptions,
    ray_options: Any,
    device: str,
    dtype: Any,
) -> Executor:
    if backend == "local":
        return LocalExecutor(
            processor_for(
                store.manifest,
                store.compressor,
                store.embedder,
                compress_batch_size=options.compress_batch_size,
            )
        )
    from memrag.indexing.ray_backend import RayExecutor, RayOptions, worker_compressor_factory

    ray_options = ray_options or RayOptions()
    worker_device = "cuda" if ray_options.num_gpus_per_worker > 0 else device
    factory: Callable[[], Any] = worker_compressor_factory(spec, store, worker_device, dtype)
    return RayExecutor(store, factory, options, ray_options, device=device)


def _run(
    store: MemoryStore,
    reader: CorpusReader,
    executor: Executor,
    options: BuildOptions,
    report: BuildReport,
    total: int,
) -> None:
    planner = _Planner(store, reader, options, report)
    started = time.perf_counter()
    threshold = store.manifest.options.fidelity_threshold
    memory_bytes = 0
    with progress(total=None, desc="indexing", unit="chunk", disable=not options.show_progress) as bar:
        for batch in executor.map(planner.batches()):
            store.write(batch)
            report.chunks_written += len(batch.chunks)
            report.tokens_written += batch.tokens
            report.compute_seconds += batch.seconds
            report.clamped += len(batch.clamped)
            report.flagged_use_text += sum(
                1 for f in batch.fidelity if f is not None and f < threshold
            )
            memory_bytes += int(batch.slots.numel() * batch.slots.element_size())
            expected = estimated_chunks(report, total)
            bar.total = max(expected, report.chunks_written + report.chunks_unchanged)
            bar.update(report.chunks_written + report.chunks_unchanged - bar.n)
            rate = report.tokens_written / max(time.perf_counter() - started, 1e-9)
            projected = memory_bytes / max(report.chunks_written, 1) * expected
            bar.set_postfix(
                docs=f"{report.documents}/{total}",
                tok_s=f"{rate:,.0f}",
                memory=f"~{projected / 1e6:,.0f} MB",
                refresh=False,
            )
        # Unchanged documents and skipped rows count as done: close the bar at 100 %.
        bar.total = bar.n
        bar.refresh()


def estimated_chunks(report: BuildReport, documents: int) -> int:
    """The chunks the whole build will hold: those planned so far, plus the documents not read
    yet at the chunks-per-document seen so far (exact once every document is read)."""
    seen = max(report.documents, 1)
    remaining = max(documents - report.documents, 0)
    return int(report.chunks_total + remaining * report.chunks_total / seen)


__all__ = ["BuildOptions", "BuildReport", "Executor", "LocalExecutor", "build_index"]
