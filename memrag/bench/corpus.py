"""The benchmark's questions, its passage corpus and the memory store built from it.

The corpus is the selected questions' own passages plus distractor passages of the same file
(a seeded sample of its other distinct passages) up to ``corpus_size`` passages. Each passage
is one chunk of a :class:`~memrag.store.MemoryStore` (its id is a hash of its text), compressed
by the compressor under test and embedded for retrieval.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memrag.bench.timing import Clock
from memrag.data.readers import OnError, QARecord, ReadReport, iter_unique_contexts
from memrag.eval.qa import sample_qa_records

logger = logging.getLogger(__name__)


def passage_id(text: str) -> str:
    """The chunk id of a passage: a hash of its text (SQuAD repeats passages per question)."""
    return "p-" + hashlib.blake2b(text.encode("utf-8"), digest_size=10).hexdigest()


@dataclass
class BenchCorpus:
    """Questions and the passages retrieval searches.

    Attributes:
        questions: The sampled questions (in file order).
        passages: ``{chunk id: text}``: the questions' passages and the distractors.
        distractors: How many passages are distractors.
    """

    questions: list[QARecord]
    passages: dict[str, str]
    distractors: int

    def gold_id(self, record: QARecord) -> str:
        """The chunk id of a question's own passage."""
        return passage_id(record.context)


def select_corpus(
    path: str | Path,
    *,
    limit: int,
    corpus_size: int,
    seed: int = 0,
    on_error: OnError = "skip",
    report: ReadReport | None = None,
) -> BenchCorpus:
    """Samples ``limit`` questions and builds the passage corpus around them.

    Args:
        path: A SQuAD-style JSONL(.gz) file.
        limit: Number of questions (a seeded uniform sample).
        corpus_size: Total passages; when the questions' own passages are more, all of those
            are used and no distractor.
        seed: Seed of both samples.
        on_error: Bad rows: ``"skip"`` or ``"raise"``.
        report: Collects skipped rows.
    """
    questions = sample_qa_records(path, limit=limit, seed=seed, on_error=on_error, report=report)
    own = {passage_id(r.context): r.context for r in questions}
    wanted = max(corpus_size - len(own), 0)
    if len(own) > corpus_size:
        logger.warning(
            "%d questions have %d passages, more than --corpus-size %d: no distractors",
            len(questions),
            len(own),
            corpus_size,
        )
    rng = random.Random(seed + 1)
    candidates = (
        (rng.random(), text)
        for text in iter_unique_contexts(path, on_error=on_error)
        if passage_id(text) not in own
    )
    chosen = heapq.nsmallest(wanted, candidates, key=lambda item: item[0]) if wanted else []
    passages = dict(own)
    passages.update((passage_id(text), text) for _, text in chosen)
    return BenchCorpus(questions=questions, passages=passages, distractors=len(chosen))


class TimedCompressor:
    """Delegates to a compressor, adding up the seconds its :meth:`compress` calls take.

    The store calls ``compress`` while it also embeds and writes; this separates the cost of
    compression (the ``slots`` mode's offline cost) from the rest.

    Args:
        inner: The compressor.
        clock: The clock to time with.
    """

    def __init__(self, inner: Any, clock: Clock = time.perf_counter) -> None:
        self._inner = inner
        self._clock = clock
        self.seconds = 0.0
        self.texts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def compress(self, texts: Sequence[str] | str, **kwargs: Any) -> Any:
        """:meth:`memrag.compressor.Compressor.compress`, timed."""
        started = self._clock()
        try:
            return self._inner.compress(texts, **kwargs)
        finally:
            self.seconds += self._clock() - started
            self.texts += 1 if isinstance(texts, str) else len(texts)


@dataclass
class BuiltStore:
    """A bench store and what building it cost.

    Attributes:
        store: The open store.
        compress_seconds: Seconds spent compressing.
        total_seconds: Seconds for the whole build (embedding, compressing, writing).
        chunks: Number of chunks.
    """

    store: Any
    compress_seconds: float
    total_seconds: float
    chunks: int


def build_store(
    directory: str | Path,
    compressor: Any,
    corpus: BenchCorpus,
    *,
    embedder: Any = None,
    batch_size: int = 64,
    show_progress: bool = False,
    clock: Clock = time.perf_counter,
    memory: str | None = None,
) -> BuiltStore:
    """Creates a store at ``directory`` holding every passage of ``corpus`` as one chunk.

    The store keeps the compressor's slots, embedding or trained ``kv`` (the ``slots`` mode
    measures the compressor; the K/V modes of the frozen decoder read stores of their own),
    or ``memory`` when given (a bench without the ``slots`` mode needs the store only for
    retrieval and text: the frozen decoder's memory is far cheaper to make than trained slots).
    Fidelity scoring is off: every chunk is answered from its slots (the ``slots`` mode
    measures the compressor, not the text fallback).
    """
    from memrag.store import MemoryStore

    timed = TimedCompressor(compressor, clock)
    started = clock()
    store = MemoryStore.create(
        directory,
        compressor=timed,
        embedder=embedder,
        memory=memory or compressor.config.slot_kind,  # "embedding" or trained "kv" slots
        fidelity="none",
        device=str(compressor.device),
    )
    ids = list(corpus.passages)
    store.add(
        [corpus.passages[i] for i in ids],
        ids=ids,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    return BuiltStore(
        store=store,
        compress_seconds=timed.seconds,
        total_seconds=clock() - started,
        chunks=len(ids),
    )
