"""The benchmark loop: build the store, retrieve once, answer every question in every mode.

Fairness rules, as the issue fixes them: every mode uses the same frozen decoder, the same
retrieved chunks (retrieval runs once per question), the same prompt wording and greedy
decoding; warm-up answers are not counted; the modes are interleaved per question (question
``i`` starts with mode ``i mod M``) so that machine noise hits all of them alike.

What is timed for an answer (:class:`~memrag.bench.timing.AnswerTimer`): from the moment the
retrieved chunk ids are known, through loading the mode's stored payload (text rows, slot
shards or key/value files), assembling the prompt, prefill and the first decode step (time to
first token), to the decoded answer (latency). Retrieval itself (embedding the question and
searching the index) is the same for every mode; it is timed and reported separately.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memrag.bench.corpus import BenchCorpus, BuiltStore, build_store, select_corpus
from memrag.bench.modes import DEFAULT_MODES, ContextMode, OfflineCost, parse_mode
from memrag.bench.timing import AnswerTimer, Clock, percentile, timed
from memrag.eval.metrics import aggregate_squad, answer_scores
from memrag.generation import GenerationOptions, generate
from memrag.prompts import ANSWER_STOP, has_chat_template
from memrag.utils.progress import progress

logger = logging.getLogger(__name__)

#: Fields of each mode's entry in the JSON report (the issue's shape), in order.
RESULT_FIELDS: tuple[str, ...] = (
    "exact_match",
    "f1",
    "contains",
    "ttft_p50_s",
    "ttft_p90_s",
    "latency_p50_s",
    "context_positions",
    "bytes_per_chunk",
    "offline_s_per_chunk",
    "n",
)
#: What the retrieval store keeps when no mode reads the compressor's slots from it.
RETRIEVAL_STORE_MEMORY = "kv-exact:int8"
#: Name of the pseudo-mode that measures the limit when ``none`` is not among the modes.
LIMIT = "limit"


@dataclass
class BenchSettings:
    """What to run.

    Args:
        data: SQuAD-style JSONL(.gz) file.
        limit: Number of questions (a seeded sample).
        k: Chunks retrieved per question.
        corpus_size: Passages in the store (the questions' own plus distractors).
        modes: Modes to run (see :func:`~memrag.bench.modes.parse_mode`), in report order.
        seed: Seed of the question and distractor samples.
        max_new_tokens: Answer length limit.
        warmup: Warm-up rounds (every mode answers the first questions; not counted).
        embedder: Retrieval embedder id (``None``: all-MiniLM-L6-v2 from its pip package).
        on_bad_row: ``skip`` or ``raise`` on bad data rows.
        show_progress: Show progress bars.
    """

    data: Path
    limit: int
    k: int = 5
    corpus_size: int = 500
    modes: Sequence[str] = DEFAULT_MODES
    seed: int = 0
    max_new_tokens: int = 32
    warmup: int = 1
    embedder: str | None = None
    on_bad_row: str = "skip"
    show_progress: bool = False

    def __post_init__(self) -> None:
        if not self.modes:
            raise ValueError("no modes to run")
        for mode in self.modes:
            parse_mode(mode)
        self.modes = list(dict.fromkeys(self.modes))
        for name in ("limit", "k", "corpus_size", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "data": str(self.data),
            "limit": self.limit,
            "k": self.k,
            "corpus_size": self.corpus_size,
            "modes": list(self.modes),
            "seed": self.seed,
            "max_new_tokens": self.max_new_tokens,
            "warmup": self.warmup,
            "embedder": self.embedder or "sentence-transformers/all-MiniLM-L6-v2",
            "decoding": "greedy",
        }


@dataclass
class ModeSamples:
    """Everything measured for one mode, one entry per answer."""

    predictions: list[tuple[str, list[str]]] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    fetch: list[float] = field(default_factory=list)
    prefilled: list[int] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)

    def summary(self, cost: OfflineCost) -> dict[str, Any]:
        """The mode's figures: the issue's fields, then extra detail."""
        scores = aggregate_squad(self.predictions)
        count = max(len(self.ttft), 1)
        return {
            "exact_match": scores["exact_match"],
            "f1": scores["f1"],
            "contains": scores["contains"],
            "ttft_p50_s": percentile(self.ttft, 50),
            "ttft_p90_s": percentile(self.ttft, 90),
            "latency_p50_s": percentile(self.latency, 50),
            "context_positions": sum(self.prefilled) / count,
            "bytes_per_chunk": cost.bytes_per_chunk,
            "offline_s_per_chunk": cost.offline_s_per_chunk,
            "n": scores["n"],
            "fetch_p50_s": percentile(self.fetch, 50),
            "latency_p90_s": percentile(self.latency, 90),
            "cached_positions": sum(self.cached) / count,
        }


@dataclass
class BenchResult:
    """The benchmark's figures.

    Attributes:
        results: ``{mode: figures}`` (see :data:`RESULT_FIELDS`, plus extra detail and
            ``ratios_vs_text``).
        limit: ``{"ttft_p50_s", "ttft_p90_s", "source"}``: time to first token with only the
            question to prefill.
        unavailable: ``{mode: why}`` for requested modes that could not run.
        retrieval: Recall of the gold passage at k and retrieval time.
        offline: What building the store and the caches cost.
        settings: :meth:`BenchSettings.to_dict`.
        environment: Machine, threads, model, dtype, versions.
        timing: Wall-clock seconds of the phases, and per question.
        predictions: One dict per answer.
    """

    results: dict[str, dict[str, Any]]
    limit: dict[str, Any]
    unavailable: dict[str, str]
    retrieval: dict[str, Any]
    offline: dict[str, Any]
    settings: dict[str, Any]
    environment: dict[str, Any]
    timing: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The JSON report: ``{"results", "limit", "environment", ...}``."""
        return {
            "results": self.results,
            "limit": self.limit,
            "environment": self.environment,
            "unavailable": self.unavailable,
            "retrieval": self.retrieval,
            "offline": self.offline,
            "settings": self.settings,
            "timing": self.timing,
        }


def ratios_vs_text(results: dict[str, dict[str, Any]]) -> None:
    """Adds ``ratios_vs_text`` (each figure divided by the ``text`` mode's) to every mode."""
    base = results.get("text")
    if base is None:
        return
    # Offline cost and the answer count have no meaningful ratio (text costs 0 s offline).
    keys = [key for key in RESULT_FIELDS if key not in ("offline_s_per_chunk", "n")]
    for figures in results.values():
        figures["ratios_vs_text"] = {
            key: (figures[key] / base[key] if base[key] else None) for key in keys
        }


def _bytes_of_text(texts: Sequence[str]) -> float:
    return sum(len(t.encode("utf-8")) for t in texts) / max(len(texts), 1)


@dataclass
class _Setup:
    modes: dict[str, ContextMode]
    unavailable: dict[str, str]
    offline: dict[str, Any]
    stores: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for store in self.stores:
            store.close()


def _make_modes(
    compressor: Any,
    settings: BenchSettings,
    built: BuiltStore,
    used: Sequence[str],
    corpus: BenchCorpus,
    work_dir: Path,
    clock: Clock,
) -> _Setup:
    from memrag.contexts import truncated_context

    store = built.store
    modes: dict[str, ContextMode] = {}
    unavailable: dict[str, str] = {}
    offline: dict[str, Any] = {
        "store_chunks": built.chunks,
        "store_build_s": built.total_seconds,
        "compress_s": built.compress_seconds,
        "embed_and_write_s_per_chunk": (built.total_seconds - built.compress_seconds)
        / max(built.chunks, 1),
        "payload_chunks": len(used),
    }
    texts = [corpus.passages[i] for i in used]
    memory_stores: dict[str, tuple[Any, OfflineCost]] = {}
    from memrag.memory.builders import MemoryReuse

    reuse = MemoryReuse()  # each chunk's K/V and scores computed once for every K/V mode
    for name in settings.modes:
        mode = parse_mode(name)
        if name == "text":
            modes[name] = ContextMode(
                name,
                compressor,
                OfflineCost(_bytes_of_text(texts), 0.0),
                lambda ids: [r.text for r in store.get(ids, with_slots=False)],
            )
        elif name == "slots":
            records = store.get(list(used), with_slots=True)
            slot_bytes = [r.slots.float16_bytes for r in records if r.slots is not None]
            cost = OfflineCost(
                sum(slot_bytes) / max(len(slot_bytes), 1),
                built.compress_seconds / max(built.chunks, 1),
            )
            modes[name] = ContextMode(
                name,
                compressor,
                cost,
                lambda ids: [r.context() for r in store.get(ids, with_slots=True)],
            )
        elif mode.reads_memory:
            if has_chat_template(compressor.tokenizer):
                unavailable[name] = (
                    "not available: K/V memory is benchmarked with the plain QA prompt "
                    "(the tokenizer has a chat template)"
                )
                continue
            assert mode.memory is not None
            if mode.memory not in memory_stores:
                memory_stores[mode.memory] = _memory_store(
                    compressor, mode.memory, used, texts, work_dir, len(memory_stores), settings, clock, reuse
                )
                offline[f"{mode.memory}_build_s"] = memory_stores[mode.memory][1].offline_s_per_chunk * len(used)
            kv_store, cost = memory_stores[mode.memory]
            recovery = None
            if mode.recovery:
                from memrag.memory.recovery import RecoveryConfig

                recovery = RecoveryConfig.parse(mode.recovery)
            modes[name] = ContextMode(
                name,
                compressor,
                cost,
                lambda ids, s=kv_store: [r.context() for r in s.get(ids, with_slots=True)],
                recovery=recovery,
            )
        elif name == "truncated":
            cut, seconds = timed(
                clock, lambda: {i: truncated_context(compressor, corpus.passages[i]) for i in used}
            )
            modes[name] = ContextMode(
                name,
                compressor,
                OfflineCost(_bytes_of_text(list(cut.values())), seconds / max(len(used), 1)),
                lambda ids, cut=cut: [cut[i] for i in ids],
            )
        elif name == "none":
            modes[name] = ContextMode(name, compressor, OfflineCost(0.0, 0.0), lambda ids: [])
    return _Setup(
        modes=modes,
        unavailable=unavailable,
        offline=offline,
        stores=[kv_store for kv_store, _ in memory_stores.values()],
    )


def _memory_label(store: Any) -> str:
    """``kv-exact:int8``-style name of a K/V store's memory, as bench modes name it."""
    memory = store.memory
    dtype = memory.settings.get("kv_dtype", "float16")
    return memory.kind if dtype == "float16" else f"{memory.kind}:{dtype}"


def integrity_cost(store: Any, ids: Sequence[str], clock: Clock, rounds: int = 5) -> float:
    """Seconds per chunk the read-path integrity check (checksum, finite values) adds.

    Reads ``ids`` (with their memory) with the check on and off, interleaved, ``rounds`` times
    each, and takes the difference of the medians: measured side by side in one run.
    """
    chosen = list(ids)[:200]
    timings: dict[bool, list[float]] = {True: [], False: []}
    try:
        for _ in range(rounds):
            for verify in (True, False):
                store.verify_reads = verify
                started = clock()
                store.get(chosen, with_slots=True)
                timings[verify].append(clock() - started)
    finally:
        store.verify_reads = True
    on, off = (percentile(timings[v], 50) for v in (True, False))
    return max(on - off, 0.0) / max(len(chosen), 1)


def _memory_store(
    compressor: Any,
    memory: str,
    used: Sequence[str],
    texts: Sequence[str],
    work_dir: Path,
    number: int,
    settings: BenchSettings,
    clock: Clock,
    reuse: Any,
) -> tuple[Any, OfflineCost]:
    """A store of ``memory`` holding the retrieved chunks (read by id), and what it cost.

    Its vectors are never searched (retrieval runs on the main store), so a model-free
    embedder keeps them cheap; fidelity is not scored, so every chunk is read from its memory.
    The chunks' keys, values and selection scores are shared between the K/V stores
    (``reuse``); each store's offline cost counts its memory's computation all the same.
    """
    from memrag.memory.builders import computation_key
    from memrag.memory.spec import parse_memory_mode
    from memrag.store import MemoryStore
    from memrag.store.processing import ChunkInput, processor_for

    key = computation_key(parse_memory_mode(memory))
    computed_before = key in reuse.seconds
    started = clock()
    kv_store = MemoryStore.create(
        work_dir / f"memory-{number}",
        compressor=compressor,
        embedder="hashing:16",
        memory=memory,
        fidelity="none",
        device=str(compressor.device),
    )
    processor = processor_for(kv_store.manifest, compressor, kv_store.embedder, reuse=reuse)
    kv_store.add_chunks(
        [ChunkInput(i, text) for i, text in zip(used, texts)],
        show_progress=settings.show_progress,
        processor=processor,
    )
    per_chunk = (clock() - started) / max(len(used), 1)
    if computed_before:  # computed for an earlier store: count it here too
        per_chunk += reuse.seconds[key]
    info = kv_store.info()["memory"]
    return kv_store, OfflineCost(info["bytes_per_chunk"], per_chunk)


def run_benchmark(
    compressor: Any,
    settings: BenchSettings,
    work_dir: str | Path,
    *,
    environment: dict[str, Any] | None = None,
    clock: Clock = time.perf_counter,
) -> BenchResult:
    """Runs the whole benchmark.

    Args:
        compressor: The compressor under test; its frozen decoder answers in every mode.
        settings: What to run.
        work_dir: An empty or new directory for the store and the caches.
        environment: Recorded as is in the result (see :func:`memrag.bench.report.environment`).
        clock: The clock every duration is read from.
    """
    work = Path(work_dir)
    started = clock()
    corpus = select_corpus(
        settings.data,
        limit=settings.limit,
        corpus_size=settings.corpus_size,
        seed=settings.seed,
        on_error=settings.on_bad_row,  # type: ignore[arg-type]
    )
    if not corpus.questions:
        raise ValueError(f"no usable questions in {settings.data}")
    logger.info(
        "%d questions, %d passages (%d distractors)",
        len(corpus.questions),
        len(corpus.passages),
        corpus.distractors,
    )
    built = build_store(
        work / "store",
        compressor,
        corpus,
        embedder=settings.embedder,
        show_progress=settings.show_progress,
        clock=clock,
        # Only the "slots" mode reads the compressor's slots from this store.
        memory=None if "slots" in settings.modes else RETRIEVAL_STORE_MEMORY,
    )
    try:
        return _run(compressor, settings, corpus, built, work, environment, clock, started)
    finally:
        built.store.close()


def _run(
    compressor: Any,
    settings: BenchSettings,
    corpus: BenchCorpus,
    built: BuiltStore,
    work: Path,
    environment: dict[str, Any] | None,
    clock: Clock,
    started: float,
) -> BenchResult:
    retrieved: list[list[str]] = []
    search_s: list[float] = []
    for record in corpus.questions:
        hits, seconds = timed(
            clock, lambda q=record.question: built.store.search(q, k=settings.k, with_slots=False)
        )
        retrieved.append([hit.id for hit in hits])
        search_s.append(seconds)
    hit_rate = sum(corpus.gold_id(r) in ids for r, ids in zip(corpus.questions, retrieved)) / len(
        corpus.questions
    )
    used = list(dict.fromkeys(i for ids in retrieved for i in ids))
    setup = _make_modes(compressor, settings, built, used, corpus, work, clock)
    # The main store holds the compressor's slots (the "slots" mode); the others a K/V kind.
    main_label = "slots" if "slots" in settings.modes else _memory_label(built.store)
    setup.offline["integrity_check_s_per_chunk"] = {
        main_label: integrity_cost(built.store, used, clock),
        **{_memory_label(store): integrity_cost(store, used, clock) for store in setup.stores},
    }
    setup.offline["setup_s"] = clock() - started

    names = list(setup.modes)
    runs: dict[str, tuple[ContextMode, GenerationOptions]] = {
        name: (mode, GenerationOptions(max_new_tokens=settings.max_new_tokens, stop=ANSWER_STOP))
        for name, mode in setup.modes.items()
    }
    if "none" not in runs:
        limit_mode = ContextMode(LIMIT, compressor, OfflineCost(0.0, 0.0), lambda ids: [])
        runs[LIMIT] = (limit_mode, GenerationOptions(max_new_tokens=1, stop=ANSWER_STOP))
    samples = {name: ModeSamples() for name in runs}
    predictions: list[dict[str, Any]] = []
    order = list(runs)
    tokenizer = compressor.tokenizer

    def answer(decoder: Any, name: str, question: str, ids: Sequence[str]) -> tuple[Any, Any, Any]:
        mode, options = runs[name]
        timer = AnswerTimer(clock)
        timer.start()
        prepared = mode.prepare(decoder, question, ids, timer)
        generation = generate(decoder, tokenizer, prepared.batch, options, streamer=timer)[0]
        return generation, timer.stop(), prepared

    with compressor.decoder_mode() as decoder, torch.inference_mode():
        warm_started = clock()
        for round_ in range(settings.warmup):
            index = round_ % len(corpus.questions)
            for name in order:
                answer(decoder, name, corpus.questions[index].question, retrieved[index])
        measure_started = clock()
        with progress(
            total=len(corpus.questions), desc="bench", unit="q", disable=not settings.show_progress
        ) as bar:
            for index, (record, ids) in enumerate(zip(corpus.questions, retrieved)):
                shift = index % len(order)
                for name in order[shift:] + order[:shift]:
                    generation, timing, prepared = answer(decoder, name, record.question, ids)
                    text = generation.text.strip()
                    collected = samples[name]
                    collected.ttft.append(timing.ttft_s)
                    collected.latency.append(timing.latency_s)
                    collected.fetch.append(timing.fetch_s)
                    collected.prefilled.append(prepared.prefilled)
                    collected.cached.append(prepared.cached)
                    if name == LIMIT:
                        continue
                    collected.predictions.append((text, record.answers))
                    predictions.append(
                        {
                            "id": record.id,
                            "mode": name,
                            "prediction": text,
                            "answers": record.answers,
                            **answer_scores(text, record.answers),
                            "ttft_s": timing.ttft_s,
                            "latency_s": timing.latency_s,
                            "prefilled": prepared.prefilled,
                            "gold_retrieved": corpus.gold_id(record) in ids,
                        }
                    )
                bar.update(1)
        finished = clock()
    setup.close()

    results = {name: samples[name].summary(setup.modes[name].cost) for name in names}
    ratios_vs_text(results)
    checks = setup.offline["integrity_check_s_per_chunk"]
    for name, figures in results.items():
        label = "slots" if name == "slots" else name.partition("+")[0]
        if label in checks and figures["ttft_p50_s"]:
            # The check runs once per retrieved chunk of a request.
            figures["integrity_share_of_ttft"] = settings.k * checks[label] / figures["ttft_p50_s"]
    limit_source = "none" if "none" in samples else LIMIT
    return BenchResult(
        results=results,
        limit={
            "ttft_p50_s": percentile(samples[limit_source].ttft, 50),
            "ttft_p90_s": percentile(samples[limit_source].ttft, 90),
            "context_positions": sum(samples[limit_source].prefilled)
            / max(len(samples[limit_source].prefilled), 1),
            "source": "the none mode's prompt (question only)"
            if limit_source == "none"
            else "question-only prompt, 1 token",
        },
        unavailable=setup.unavailable,
        retrieval={
            "k": settings.k,
            "gold_passage_recall_at_k": hit_rate,
            "search_p50_s": percentile(search_s, 50),
            "search_p90_s": percentile(search_s, 90),
            "corpus_passages": len(corpus.passages),
            "distractor_passages": corpus.distractors,
        },
        offline=setup.offline,
        settings=settings.to_dict(),
        environment=dict(environment or {}),
        timing={
            "setup_s": setup.offline["setup_s"],
            "warmup_s": measure_started - warm_started,
            "measure_s": finished - measure_started,
            "s_per_question_all_modes": (finished - measure_started) / len(corpus.questions),
            "total_s": finished - started,
        },
        predictions=predictions,
    )
