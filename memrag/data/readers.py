"""Streaming readers for JSONL corpora, plain or gzip-compressed.

Every reader works line by line and never loads a whole file into memory.
Gzip compression is detected from the file's magic bytes (``1f 8b``), so a
compressed file without a ``.gz`` suffix is read correctly too.

Rows that cannot be used ("bad rows": invalid UTF-8, invalid JSON, a JSON
value that is not an object, or a record that fails the schema of the reader)
are handled according to ``on_error``:

* ``"skip"`` (default): the row is recorded in a :class:`ReadReport`, a warning
  is logged (at most :attr:`ReadReport.max_logged` warnings, then a single
  "... and N more" line), and reading continues.
* ``"raise"``: a :class:`BadRowError` is raised at the first bad row.

Blank (whitespace-only) lines are ignored and not counted as rows.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

OnError = Literal["skip", "raise"]
PathLike = str | os.PathLike[str]

_GZIP_MAGIC = b"\x1f\x8b"


class BadRowError(ValueError):
    """A row of a JSONL file could not be used.

    Attributes:
        path: The file the row came from.
        line: The 1-based line number of the row.
        reason: Why the row is bad, e.g. ``"missing field 'context'"``.
    """

    def __init__(self, path: PathLike, line: int, reason: str) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = reason
        super().__init__(f"{self.path}:{line}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.line, self.reason))


@dataclass(frozen=True)
class BadRow:
    """One bad row recorded by a :class:`ReadReport`.

    Attributes:
        path: The file the row came from.
        line: The 1-based line number of the row.
        reason: Why the row is bad.
    """

    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class ReadReport:
    """Counts and bad rows collected while reading one or more files.

    A report may be shared by several reader calls (e.g. over several files);
    the counts then accumulate. For a fully consumed reader,
    ``rows_read == rows_ok + rows_skipped``.

    Attributes:
        rows_read: Non-blank lines read.
        rows_ok: Rows yielded to the caller.
        rows_skipped: Bad rows skipped.
        bad_rows: The bad rows, in the order they were met.
        max_logged: How many bad rows to log a warning for; beyond that, one
            summary warning per file says how many more were skipped.
    """

    rows_read: int = 0
    rows_ok: int = 0
    rows_skipped: int = 0
    bad_rows: list[BadRow] = dataclasses.field(default_factory=list)
    max_logged: int = 20
    _unlogged: int = dataclasses.field(default=0, init=False, repr=False, compare=False)

    def add_bad_row(self, path: PathLike, line: int, reason: str) -> None:
        """Records a skipped bad row and logs a warning, within the cap.

        Args:
            path: The file the row came from.
            line: The 1-based line number of the row.
            reason: Why the row is bad.
        """
        row = BadRow(Path(path), line, reason)
        self.rows_skipped += 1
        self.bad_rows.append(row)
        if len(self.bad_rows) <= self.max_logged:
            logger.warning("skipping bad row %s", row)
        else:
            self._unlogged += 1

    def flush_warnings(self, path: PathLike) -> None:
        """Logs one "... and N more" warning for bad rows not logged yet.

        Args:
            path: The file just finished, named in the warning.
        """
        if self._unlogged:
            logger.warning("%s: ... and %d more bad rows skipped", path, self._unlogged)
            self._unlogged = 0

    def summary(self) -> str:
        """Returns a one-line human-readable summary of the counts."""
        text = f"{self.rows_read} rows read, {self.rows_ok} ok, {self.rows_skipped} skipped"
        if self.bad_rows:
            text += f" (first bad row: {self.bad_rows[0]})"
        return text


@dataclass(frozen=True)
class TextRecord:
    """A text document read from a JSONL file.

    Attributes:
        text: The document text.
        id: The record's ``id`` field if present, else ``"<file name>:<line>"``.
        metadata: The record's other fields (all but the text field and ``id``).
        source: The file the record came from.
        line: The 1-based line number of the record.
    """

    text: str
    id: str | None
    metadata: dict[str, Any]
    source: Path
    line: int


@dataclass(frozen=True)
class QARecord:
    """A SQuAD-style extractive QA example.

    Attributes:
        id: The record's ``id`` field if present, else ``"<file name>:<line>"``.
        context: The passage containing the answer.
        question: The question.
        answers: The reference answers (at least one).
        title: The article title, if present.
        metadata: The record's other fields (e.g. ``answer_starts``).
        source: The file the record came from.
        line: The 1-based line number of the record.
    """

    id: str
    context: str
    question: str
    answers: list[str]
    title: str | None
    metadata: dict[str, Any]
    source: Path
    line: int


def open_binary(path: PathLike) -> io.BufferedIOBase:
    """Opens a file for binary reading, decompressing it if it is gzip.

    Compression is detected from the magic bytes, not the file name.

    Args:
        path: The file to open.

    Returns:
        A binary file object; the caller must close it.
    """
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")
    return open(path, "rb")


def _check_on_error(on_error: str) -> None:
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")


def _bad_row(path: Path, line: int, reason: str, on_error: OnError, report: ReadReport) -> None:
    """Raises or records a bad row according to ``on_error``."""
    if on_error == "raise":
        raise BadRowError(path, line, reason)
    report.add_bad_row(path, line, reason)


def _iter_objects(
    path: Path, on_error: OnError, report: ReadReport
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (line, object) for each JSON object row; counts reads and skips.

    Does not count ``rows_ok``: the public readers count the rows they yield.
    """
    with open_binary(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            report.rows_read += 1
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                _bad_row(path, line_no, f"invalid UTF-8 ({exc.reason})", on_error, report)
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                _bad_row(path, line_no, f"invalid JSON ({exc.msg})", on_error, report)
                continue
            if not isinstance(obj, dict):
                reason = f"expected a JSON object, got {_json_type(obj)}"
                _bad_row(path, line_no, reason, on_error, report)
                continue
            yield line_no, obj
    report.flush_warnings(path)


def _json_type(value: Any) -> str:
    """Names the JSON type of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _record_id(obj: dict[str, Any], path: Path, line: int) -> str:
    """Returns the record's ``id`` as a string, or ``"<file name>:<line>"``."""
    value = obj.get("id")
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{path.name}:{line}"


def _check_string(obj: dict[str, Any], name: str) -> str | None:
    """Returns why ``obj[name]`` is not a non-blank string, or None if it is."""
    if name not in obj:
        return f"missing field {name!r}"
    value = obj[name]
    if not isinstance(value, str):
        return f"field {name!r} must be a string, got {_json_type(value)}"
    if not value.strip():
        return f"empty field {name!r}"
    return None


def iter_jsonl_records(
    path: PathLike,
    *,
    on_error: OnError = "skip",
    report: ReadReport | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Streams the JSON objects of a JSONL file (plain or gzip).

    Args:
        path: The file to read.
        on_error: ``"skip"`` to record and skip bad rows, ``"raise"`` to raise
            :class:`BadRowError` at the first one.
        report: A report to update; a private one is used if None.

    Yields:
        ``(line_number, record)`` pairs, line numbers 1-based.

    Raises:
        BadRowError: On a bad row (invalid UTF-8, invalid JSON, or a value
            that is not an object) when ``on_error="raise"``.
        ValueError: If ``on_error`` is not ``"skip"`` or ``"raise"``.
        OSError: If the file cannot be opened or its compression is corrupt.
    """
    _check_on_error(on_error)
    report = report if report is not None else ReadReport()
    for line_no, obj in _iter_objects(Path(path), on_error, report):
        report.rows_ok += 1
        yield line_no, obj


def iter_text_records(
    path: PathLike,
    field: str = "text",
    *,
    on_error: OnError = "skip",
    report: ReadReport | None = None,
) -> Iterator[TextRecord]:
    """Streams text documents from a JSONL file (plain or gzip).

    Besides the row-level errors of :func:`iter_jsonl_records`, a row is bad if
    ``field`` is missing, is not a string, or is empty or whitespace-only.

    Args:
        path: The file to read.
        field: The name of the field holding the text.
        on_error: ``"skip"`` or ``"raise"``, see :func:`iter_jsonl_records`.
        report: A report to update; a private one is used if None.

    Yields:
        One :class:`TextRecord` per good row, in file order.

    Raises:
        BadRowError: On a bad row when ``on_error="raise"``.
        ValueError: If ``on_error`` is not ``"skip"`` or ``"raise"``.
    """
    _check_on_error(on_error)
    report = report if report is not None else ReadReport()
    source = Path(path)
    for line_no, obj in _iter_objects(source, on_error, report):
        reason = _check_string(obj, field)
        if reason is not None:
            _bad_row(source, line_no, reason, on_error, report)
            continue
        metadata = {k: v for k, v in obj.items() if k not in (field, "id")}
        report.rows_ok += 1
        yield TextRecord(
            text=obj[field],
            id=_record_id(obj, source, line_no),
            metadata=metadata,
            source=source,
            line=line_no,
        )


def _check_qa(obj: dict[str, Any]) -> str | None:
    """Returns why ``obj`` is not a valid SQuAD-style row, or None if it is."""
    for name in ("context", "question"):
        reason = _check_string(obj, name)
        if reason is not None:
            return reason
    if "answers" not in obj:
        return "missing field 'answers'"
    answers = obj["answers"]
    if not isinstance(answers, list):
        return f"field 'answers' must be a list of strings, got {_json_type(answers)}"
    if not answers:
        return "empty field 'answers'"
    for i, answer in enumerate(answers):
        if not isinstance(answer, str):
            return f"field 'answers'[{i}] must be a string, got {_json_type(answer)}"
    title = obj.get("title")
    if title is not None and not isinstance(title, str):
        return f"field 'title' must be a string, got {_json_type(title)}"
    return None


def iter_qa_records(
    path: PathLike,
    *,
    on_error: OnError = "skip",
    report: ReadReport | None = None,
) -> Iterator[QARecord]:
    """Streams SQuAD-style QA examples from a JSONL file (plain or gzip).

    Required fields: ``context`` (non-blank string), ``question`` (non-blank
    string) and ``answers`` (non-empty list of strings). Optional: ``id`` and
    ``title`` (string or null). Other fields go to ``metadata``.

    Args:
        path: The file to read.
        on_error: ``"skip"`` or ``"raise"``, see :func:`iter_jsonl_records`.
        report: A report to update; a private one is used if None.

    Yields:
        One :class:`QARecord` per good row, in file order.

    Raises:
        BadRowError: On a bad row when ``on_error="raise"``.
        ValueError: If ``on_error`` is not ``"skip"`` or ``"raise"``.
    """
    _check_on_error(on_error)
    report = report if report is not None else ReadReport()
    source = Path(path)
    known = ("id", "title", "context", "question", "answers")
    for line_no, obj in _iter_objects(source, on_error, report):
        reason = _check_qa(obj)
        if reason is not None:
            _bad_row(source, line_no, reason, on_error, report)
            continue
        report.rows_ok += 1
        yield QARecord(
            id=_record_id(obj, source, line_no),
            context=obj["context"],
            question=obj["question"],
            answers=list(obj["answers"]),
            title=obj.get("title"),
            metadata={k: v for k, v in obj.items() if k not in known},
            source=source,
            line=line_no,
        )


def iter_unique_contexts(
    path: PathLike,
    field: str = "context",
    *,
    on_error: OnError = "skip",
    report: ReadReport | None = None,
) -> Iterator[str]:
    """Yields each distinct context of a QA file once, in file order.

    SQuAD repeats a paragraph's context on every question about it; this
    rebuilds the list of paragraphs. Only the context field is validated (as in
    :func:`iter_text_records`), so a row with a good context but, say, no
    answers still contributes its context. Contexts are compared exactly; only
    a 16-byte digest of each is kept in memory.

    Args:
        path: The file to read.
        field: The name of the field holding the context.
        on_error: ``"skip"`` or ``"raise"``, see :func:`iter_jsonl_records`.
        report: A report to update (counts rows, not contexts); a private one
            is used if None.

    Yields:
        Each distinct context string, at its first occurrence.

    Raises:
        BadRowError: On a bad row when ``on_error="raise"``.
        ValueError: If ``on_error`` is not ``"skip"`` or ``"raise"``.
    """
    seen: set[bytes] = set()
    for record in iter_text_records(path, field, on_error=on_error, report=report):
        digest = hashlib.blake2b(record.text.encode("utf-8"), digest_size=16).digest()
        if digest in seen:
            continue
        seen.add(digest)
        yield record.text
