"""Resumable streams of training examples over JSONL(.gz) corpora.

Nothing here reads a corpus into memory: files are read line by line, and only the documents
being cut into examples at the moment are held (as text, plus one tokenized window of a few
thousand characters each). Every stream has a small JSON ``state_dict()`` (line numbers,
offsets and the RNG state) from which :meth:`load_state_dict` continues exactly where it was,
so a resumed training run sees the very examples an uninterrupted one would.

* :class:`PretrainStream`: autoencoding and continuation examples cut from plain text, with
  segment lengths drawn uniformly between a minimum and the compressor's segment length.
* :class:`QAStream`: SQuAD-style questions with their gold passage and 0..N distractor
  passages drawn from the other questions in a shuffle buffer.

A file's last ``holdout_fraction`` of lines can be kept out (see :func:`holdout_start_line`);
the held-out part feeds evaluation.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

from memrag.data.readers import (
    OnError,
    QARecord,
    ReadReport,
    TextRecord,
    iter_qa_records,
    iter_text_records,
    open_binary,
)

logger = logging.getLogger(__name__)

#: Characters tokenized at a time from a long document.
DEFAULT_WINDOW_CHARS = 4096


# --------------------------------------------------------------------------- examples
@dataclass
class PretrainExample:
    """One pretraining example.

    Attributes:
        kind: ``"ae"`` (reconstruct ``segment``) or ``"lm"`` (continue with ``continuation``).
        segment: Token ids that are compressed into slots.
        continuation: Token ids that follow the segment (``lm`` examples only).
    """

    kind: Literal["ae", "lm"]
    segment: list[int]
    continuation: list[int] = field(default_factory=list)


@dataclass
class QAExample:
    """One fine-tuning example: passages (gold among distractors), question and answer.

    Attributes:
        id: The question's id.
        question: The question.
        answers: Reference answers (the first is the training target).
        contexts: The passages, in the order the prompt shows them.
        gold_index: Position of the gold passage in ``contexts``.
    """

    id: str
    question: str
    answers: list[str]
    contexts: list[str]
    gold_index: int = 0


class ResumableStream(Protocol):
    """An endless iterator of examples whose position fits in a JSON object."""

    def __next__(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def take(stream: Iterator[Any], count: int) -> list[Any]:
    """The next ``count`` examples of ``stream`` (fewer if a finite stream ends)."""
    items = []
    for item in stream:
        items.append(item)
        if len(items) >= count:
            break
    return items


# --------------------------------------------------------------------------- helpers
def rng_state_to_json(rng: random.Random) -> list[Any]:
    """``random.Random`` state as JSON-able lists."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def rng_state_from_json(state: Sequence[Any]) -> tuple[Any, ...]:
    """Inverse of :func:`rng_state_to_json`, for ``random.Random.setstate``."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


@lru_cache(maxsize=64)
def _count_lines(path: str, size: int, mtime: float) -> int:
    del size, mtime  # part of the cache key only
    count = 0
    with open_binary(path) as handle:
        for _ in handle:
            count += 1
    return count


def holdout_start_line(path: str | Path, fraction: float) -> int | None:
    """First line (1-based) of the held-out tail of a JSONL file, or None if nothing is held out.

    Lines ``>=`` the returned number are the last ``fraction`` of the file's lines. Training
    streams read the lines before it; evaluation reads the lines from it on.
    """
    if fraction <= 0:
        return None
    stat = Path(path).stat()
    total = _count_lines(str(path), stat.st_size, stat.st_mtime)
    held = max(1, round(total * fraction))
    if held >= total:
        raise ValueError(f"holdout fraction {fraction} of {path} ({total} lines) leaves nothing to train on")
    return total - held + 1


R = TypeVar("R", TextRecord, QARecord)


class RecordCycler(Generic[R]):
    """Reads the records of one file between two line numbers, epoch after epoch.

    Args:
        read: Opens a fresh reader yielding records with a ``line`` attribute.
        start_line: First line to use (1-based).
        stop_line: Line to stop before (``None``: the end of the file).
        shard: This process's shard (records whose ``line % num_shards == shard``).
        num_shards: Number of processes sharing the file.
        cycle: Start over at the end (training); otherwise stop (evaluation).
        name: For error messages.
    """

    def __init__(
        self,
        read: Callable[[ReadReport], Iterator[R]],
        *,
        start_line: int = 1,
        stop_line: int | None = None,
        shard: int = 0,
        num_shards: int = 1,
        cycle: bool = True,
        name: str = "",
    ) -> None:
        self._read = read
        self.start_line = start_line
        self.stop_line = stop_line
        self.shard = shard
        self.num_shards = num_shards
        self.cycle = cycle
        self.name = name
        self.epoch = 0
        self.next_line = start_line
        self.report = ReadReport()
        self._iter: Iterator[R] | None = None

    def _mine(self, record: R) -> bool:
        return record.line >= self.start_line and (
            self.stop_line is None or record.line < self.stop_line
        ) and record.line % self.num_shards == self.shard

    def _records(self, report: ReadReport) -> Iterator[R]:
        for record in self._read(report):
            if self.stop_line is not None and record.line >= self.stop_line:
                return
            if record.line >= self.next_line and self._mine(record):
                yield record

    def __iter__(self) -> "RecordCycler[R]":
        return self

    def __next__(self) -> R:
        restarted = False
        while True:
            if self._iter is None:
                # Bad rows are reported in the first epoch only.
                self._iter = self._records(self.report if self.epoch == 0 else ReadReport(max_logged=0))
            record = next(self._iter, None)
            if record is not None:
                self.next_line = record.line + 1
                return record
            self._iter = None
            if not self.cycle:
                raise StopIteration
            if restarted:
                raise ValueError(
                    f"{self.name}: no usable records (lines {self.start_line}..{self.stop_line or 'end'})"
                )
            restarted = True
            self.epoch += 1
            self.next_line = self.start_line
            logger.info("%s: starting epoch %d", self.name, self.epoch)

    def fetch(self, lines: set[int]) -> dict[int, R]:
        """The records at ``lines`` (one pass over the file), to restore a saved state."""
        found: dict[int, R] = {}
        if not lines:
            return found
        last = max(lines)
        for record in self._read(ReadReport(max_logged=0)):
            if record.line in lines:
                found[record.line] = record
            if record.line >= last:
                break
        missing = sorted(lines - set(found))
        if missing:
            raise ValueError(f"{self.name}: cannot restore the data position, lines {missing[:5]} are gone")
        return found

    def state_dict(self) -> dict[str, Any]:
        """Epoch and the next line to read."""
        return {"epoch": self.epoch, "next_line": self.next_line}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from :meth:`state_dict` output."""
        self.epoch = int(state["epoch"])
        self.next_line = int(state["next_line"])
        self._iter = None


def _window_end(text: str, start: int, size: int) -> int:
    end = start + size
    if end >= len(text):
        return len(text)
    # End at whitespace so that no word is split between two windows.
    space = min((i for i in (text.find(c, end, end + 256) for c in (" ", "\n")) if i >= 0), default=-1)
    return space if space > start else end


# --------------------------------------------------------------------------- pretraining
@dataclass
class _OpenDocument:
    line: int
    text: str
    char_start: int
    pos: int = 0
    char_end: int = 0
    tokens: list[int] = field(default_factory=list)

    def state(self) -> dict[str, int]:
        return {"line": self.line, "char_start": self.char_start, "pos": self.pos}


class TextSource:
    """Cuts the documents of one text file into pretraining examples.

    ``open_records`` documents are read in parallel and examples are drawn from a random one
    of them, so consecutive examples rarely come from the same place.
    """

    def __init__(
        self,
        path: str | Path,
        tokenize: Callable[[str], list[int]],
        *,
        text_field: str = "text",
        on_error: OnError = "skip",
        start_line: int = 1,
        stop_line: int | None = None,
        open_records: int = 16,
        window_chars: int = DEFAULT_WINDOW_CHARS,
        shard: int = 0,
        num_shards: int = 1,
        cycle: bool = True,
    ) -> None:
        self.path = Path(path)
        self.tokenize = tokenize
        self.open_records = open_records
        self.window_chars = window_chars
        self.records: RecordCycler[TextRecord] = RecordCycler(
            lambda report: iter_text_records(self.path, text_field, on_error=on_error, report=report),
            start_line=start_line,
            stop_line=stop_line,
            shard=shard,
            num_shards=num_shards,
            cycle=cycle,
            name=str(self.path),
        )
        self.open: list[_OpenDocument] = []
        self.exhausted = False
        #: Documents closed before giving any example: too short for the length drawn (not
        #: part of the state: it counts what this object has read).
        self.short_documents = 0

    def _load_window(self, doc: _OpenDocument) -> None:
        doc.char_end = _window_end(doc.text, doc.char_start, self.window_chars)
        doc.tokens = self.tokenize(doc.text[doc.char_start : doc.char_end])

    def _fill(self) -> None:
        while len(self.open) < self.open_records and not self.exhausted:
            try:
                record = next(self.records)
            except StopIteration:
                self.exhausted = True
                return
            doc = _OpenDocument(line=record.line, text=record.text, char_start=0)
            self._load_window(doc)
            self.open.append(doc)

    def _advance(self, index: int) -> None:
        """Moves document ``index`` to its next window, or closes it at its end."""
        doc = self.open[index]
        if doc.char_end >= len(doc.text):
            self.open.pop(index)
            return
        doc.char_start, doc.pos = doc.char_end, 0
        self._load_window(doc)

    def next_example(
        self, rng: random.Random, *, min_length: int, max_length: int, continuation: int, ae_probability: float
    ) -> PretrainExample | None:
        """The next example, or None when a non-cycling source has run dry."""
        kind: Literal["ae", "lm"] = "ae" if rng.random() < ae_probability else "lm"
        length = rng.randint(min_length, max_length)
        while True:
            self._fill()
            if not self.open:
                return None
            index = rng.randrange(len(self.open))
            doc = self.open[index]
            available = len(doc.tokens) - doc.pos
            if kind == "ae" and min_length <= available < length:
                length = available  # a document's tail makes a short segment
            if available < length + (continuation if kind == "lm" else 0):
                if doc.pos == 0 and doc.char_start == 0 and doc.char_end >= len(doc.text):
                    self.short_documents += 1
                self._advance(index)
                continue
            segment = doc.tokens[doc.pos : doc.pos + length]
            follow = doc.tokens[doc.pos + length : doc.pos + length + continuation] if kind == "lm" else []
            doc.pos += length
            return PretrainExample(kind=kind, segment=segment, continuation=follow)

    def state_dict(self) -> dict[str, Any]:
        """Reader position and the open documents' offsets."""
        return {"records": self.records.state_dict(), "open": [d.state() for d in self.open], "exhausted": self.exhausted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from :meth:`state_dict` output (re-reads the open documents)."""
        self.records.load_state_dict(state["records"])
        self.exhausted = bool(state.get("exhausted", False))
        saved = state["open"]
        texts = self.records.fetch({int(d["line"]) for d in saved})
        self.open = []
        for item in saved:
            doc = _OpenDocument(line=int(item["line"]), text=texts[int(item["line"])].text, char_start=int(item["char_start"]))
            self._load_window(doc)
            doc.pos = int(item["pos"])
            self.open.append(doc)


class PretrainStream:
    """Autoencoding and continuation examples mixed from several text sources.

    Args:
        paths: JSONL(.gz) files with a text field; each is one source.
        tokenize: Text -> token ids (no special tokens).
        max_length: Longest segment (the compressor's ``segment_length``).
        min_length: Shortest segment; lengths are uniform in ``[min_length, max_length]``.
        continuation: Target tokens of a continuation example.
        ae_probability: Share of autoencoding examples.
        weights: Sampling weight of each source (default: equal).
        split: ``"train"`` reads each file but its held-out tail, cycling; ``"heldout"`` reads
            only the tail, once; ``"all"`` reads whole files, once.
        holdout_fraction: Size of each file's held-out tail (fraction of lines).
        seed: Seed of lengths, kinds and document choice.
        open_records: Documents read in parallel per source.
        text_field: Name of the text field.
        on_error: ``"skip"`` or ``"raise"`` for bad rows (see :mod:`memrag.data.readers`).
        shard: This process's shard of every file (distributed training).
        num_shards: Number of shards.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        tokenize: Callable[[str], list[int]],
        *,
        max_length: int,
        min_length: int = 16,
        continuation: int = 64,
        ae_probability: float = 0.5,
        weights: Sequence[float] | None = None,
        split: Literal["train", "heldout", "all"] = "train",
        holdout_fraction: float = 0.0,
        seed: int = 0,
        open_records: int = 16,
        text_field: str = "text",
        on_error: OnError = "skip",
        shard: int = 0,
        num_shards: int = 1,
    ) -> None:
        if not paths:
            raise ValueError("no pretraining data files given")
        if not 1 <= min_length <= max_length:
            raise ValueError(f"need 1 <= min_length ({min_length}) <= max_length ({max_length})")
        self.min_length, self.max_length = min_length, max_length
        self.continuation = continuation
        self.ae_probability = ae_probability
        self.weights = list(weights) if weights is not None else [1.0] * len(paths)
        self.rng = random.Random(seed)
        need = max_length + continuation
        self.sources = []
        if split not in ("train", "heldout", "all"):
            raise ValueError(f"split must be train, heldout or all, got {split!r}")
        for path in paths:
            cut = holdout_start_line(path, holdout_fraction) if split != "all" else None
            if split == "heldout" and cut is None:
                raise ValueError("a held-out split needs holdout_fraction > 0")
            self.sources.append(
                TextSource(
                    path,
                    tokenize,
                    text_field=text_field,
                    on_error=on_error,
                    start_line=cut if split == "heldout" else 1,
                    stop_line=cut if split == "train" else None,
                    open_records=open_records,
                    window_chars=max(DEFAULT_WINDOW_CHARS, 16 * need),
                    shard=shard,
                    num_shards=num_shards,
                    cycle=split == "train",
                )
            )

    def __iter__(self) -> Iterator[PretrainExample]:
        return self

    def __next__(self) -> PretrainExample:
        live = [i for i, source in enumerate(self.sources) if not (source.exhausted and not source.open)]
        while live:
            choice = self.rng.choices(live, weights=[self.weights[i] for i in live])[0]
            example = self.sources[choice].next_example(
                self.rng,
                min_length=self.min_length,
                max_length=self.max_length,
                continuation=self.continuation,
                ae_probability=self.ae_probability,
            )
            if example is not None:
                return example
            live.remove(choice)
        raise StopIteration

    @property
    def reports(self) -> list[ReadReport]:
        """Bad-row reports of the sources."""
        return [source.records.report for source in self.sources]

    @property
    def short_documents(self) -> int:
        """Documents read so far that were too short to give any example (skipped)."""
        return sum(source.short_documents for source in self.sources)

    def state_dict(self) -> dict[str, Any]:
        """The stream's position (JSON-serialisable)."""
        return {"rng": rng_state_to_json(self.rng), "sources": [s.state_dict() for s in self.sources]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from :meth:`state_dict` output."""
        if len(state["sources"]) != len(self.sources):
            raise ValueError(f"saved data position has {len(state['sources'])} sources, this stream {len(self.sources)}")
        self.rng.setstate(rng_state_from_json(state["rng"]))
        for source, saved in zip(self.sources, state["sources"]):
            source.load_state_dict(saved)


# --------------------------------------------------------------------------- fine-tuning
class QAStream:
    """Questions in shuffled order, each with its gold passage and 0..N distractors.

    Distractors are passages of other questions in the shuffle buffer; SQuAD files are ordered
    by article, so they are often about the same subject (like retrieved passages are).

    Args:
        path: SQuAD-style JSONL(.gz) file.
        max_distractors: Each example gets ``randint(0, max_distractors)`` distractors.
        shuffle_buffer: Questions held for shuffling and as the distractor pool.
        start_line: First line of the file to read (1-based); each epoch restarts there.
        seed: Seed of order, distractor count, choice and position.
        cycle: Start over at the end of the file (training) or stop (evaluation).
        on_error: ``"skip"`` or ``"raise"`` for bad rows.
        shard: This process's shard (distributed training).
        num_shards: Number of shards.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_distractors: int = 4,
        shuffle_buffer: int = 1024,
        start_line: int = 1,
        seed: int = 0,
        cycle: bool = True,
        on_error: OnError = "skip",
        shard: int = 0,
        num_shards: int = 1,
    ) -> None:
        self.path = Path(path)
        self.max_distractors = max_distractors
        self.shuffle_buffer = shuffle_buffer
        self.rng = random.Random(seed)
        self.records: RecordCycler[QARecord] = RecordCycler(
            lambda report: iter_qa_records(self.path, on_error=on_error, report=report),
            start_line=start_line,
            shard=shard,
            num_shards=num_shards,
            cycle=cycle,
            name=str(self.path),
        )
        self.buffer: list[QARecord] = []
        self.exhausted = False

    def __iter__(self) -> Iterator[QAExample]:
        return self

    def _fill(self) -> None:
        while len(self.buffer) < self.shuffle_buffer and not self.exhausted:
            try:
                self.buffer.append(next(self.records))
            except StopIteration:
                self.exhausted = True

    def __next__(self) -> QAExample:
        self._fill()
        if not self.buffer:
            raise StopIteration
        index = self.rng.randrange(len(self.buffer))
        self.buffer[index], self.buffer[-1] = self.buffer[-1], self.buffer[index]
        record = self.buffer.pop()
        pool = list(dict.fromkeys(r.context for r in self.buffer if r.context != record.context))
        count = min(self.rng.randint(0, self.max_distractors), len(pool))
        contexts = self.rng.sample(pool, count)
        gold = self.rng.randrange(count + 1)
        contexts.insert(gold, record.context)
        return QAExample(
            id=record.id, question=record.question, answers=record.answers, contexts=contexts, gold_index=gold
        )

    @property
    def reports(self) -> list[ReadReport]:
        """Bad-row report of the file."""
        return [self.records.report]

    def state_dict(self) -> dict[str, Any]:
        """The stream's position: reader, buffered lines and RNG (JSON-serialisable)."""
        return {
            "rng": rng_state_to_json(self.rng),
            "records": self.records.state_dict(),
            "buffer": [r.line for r in self.buffer],
            "exhausted": self.exhausted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from :meth:`state_dict` output (re-reads the buffered questions)."""
        self.rng.setstate(rng_state_from_json(state["rng"]))
        self.records.load_state_dict(state["records"])
        self.exhausted = bool(state.get("exhausted", False))
        lines = [int(line) for line in state["buffer"]]
        found = self.records.fetch(set(lines))
        self.buffer = [found[line] for line in lines]
