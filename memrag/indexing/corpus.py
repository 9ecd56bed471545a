"""Reading a corpus for the indexing job: JSONL files, plain text files, or directories.

* **JSONL** (``.jsonl``, ``.ndjson``, optionally gzip-compressed, e.g. ``.jsonl.gz``): one
  document per line, ``{"id": ..., "text": ..., "metadata": {...}}``. ``id`` is a string or
  an integer (default ``<file>:<line>``); ``metadata`` is an optional JSON object; any other
  top-level field (e.g. ``title``) is kept as metadata too. Read line by line with
  :mod:`memrag.data.readers`.
* **Any other file** is one plain-text document whose id is its path relative to the corpus
  directory (its file name for a single file), with ``{"path": ...}`` as metadata.
* **A directory** is walked recursively in sorted order; hidden files and directories
  (names starting with ``.``) are ignored, and so is any memrag store inside it (a directory
  holding a store ``manifest.json``, e.g. the store being built into ``DIR/store``), so a
  store never indexes itself.

Bad input never stops the job. These are *skipped* and listed in the report with their
file (and line): lines that are not JSON or not valid UTF-8, rows without a usable
``text``, empty or whitespace-only documents, duplicate ids (the first occurrence wins),
ids that are not strings or integers, ``metadata`` that is not an object or uses a key
memrag reserves, binary files (a NUL byte in the first 8 KiB) and unreadable files. A
plain-text file with invalid UTF-8 bytes is *kept*, with the bad bytes replaced by U+FFFD,
and a warning naming the first bad byte offset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memrag.data.readers import BadRowError, OnError, ReadReport, iter_jsonl_records, open_binary
from memrag.store.metadata import MetadataError, check_metadata

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class Document:
    """A document of the corpus.

    Attributes:
        id: Unique id (chunks are ``<id>#<n>``).
        text: Non-empty text.
        metadata: JSON metadata.
        origin: ``file:line`` (JSONL) or the file path, for messages.
    """

    id: str
    text: str
    metadata: dict[str, Any]
    origin: str


@dataclass
class CorpusReport:
    """What reading the corpus skipped or warned about.

    Attributes:
        rows: Counts and bad rows (``path:line: reason``) of the JSONL files and documents.
        skipped_files: ``(path, reason)`` of files skipped whole.
        warnings: ``(where, message)`` of documents kept with a caveat.
        files: Files read.
        documents: Documents yielded.
    """

    rows: ReadReport = field(default_factory=ReadReport)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    files: int = 0
    documents: int = 0

    @property
    def skipped(self) -> int:
        """Documents or files skipped."""
        return self.rows.rows_skipped + len(self.skipped_files)

    def lines(self, limit: int = 20) -> list[str]:
        """Human-readable findings, at most ``limit`` of each kind."""
        out = [f"skipped {row}" for row in self.rows.bad_rows[:limit]]
        out += [f"skipped {path}: {reason}" for path, reason in self.skipped_files[:limit]]
        out += [f"warning {where}: {message}" for where, message in self.warnings[:limit]]
        hidden = max(0, len(self.rows.bad_rows) - limit) + max(0, len(self.skipped_files) - limit)
        hidden += max(0, len(self.warnings) - limit)
        if hidden:
            out.append(f"... and {hidden} more")
        return out


def is_jsonl(path: Path) -> bool:
    """True for the file names read as JSONL."""
    return path.name.lower().endswith(JSONL_SUFFIXES)


def corpus_files(corpus: str | os.PathLike[str]) -> tuple[Path, list[Path]]:
    """``(root, files)``: the corpus root directory and its files in sorted order.

    Raises:
        FileNotFoundError: the corpus path does not exist.
    """
    path = Path(corpus)
    if path.is_file():
        return path.parent, [path]
    if not path.is_dir():
        raise FileNotFoundError(f"corpus {path} does not exist")
    files: list[Path] = []
    for directory, subdirs, names in os.walk(path):
        if is_store(Path(directory)):
            logger.info("skipping %s: it is a memrag store, not corpus", directory)
            subdirs[:] = []
            continue
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        files += [Path(directory) / n for n in sorted(names) if not n.startswith(".")]
    return path, files


def is_store(directory: Path) -> bool:
    """Whether ``directory`` is a memrag store (its ``manifest.json`` says so)."""
    from memrag.store.manifest import MANIFEST_NAME, STORE_FORMAT

    manifest = directory / MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        return f'"{STORE_FORMAT}"' in manifest.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False


def count_documents(corpus: str | os.PathLike[str]) -> int:
    """A fast upper bound of the documents in a corpus (non-blank JSONL lines + other files)."""
    _, files = corpus_files(corpus)
    total = 0
    for file in files:
        if not is_jsonl(file):
            total += 1
            continue
        try:
            with open_binary(file) as handle:
                total += sum(1 for line in handle if line.strip())
        except OSError:
            continue
    return total


class CorpusReader:
    """Streams the documents of a corpus, skipping and reporting bad input.

    Args:
        corpus: A JSONL file, a text file, or a directory.
        on_error: ``"skip"`` (report and go on) or ``"raise"`` (:class:`BadRowError` at the
            first bad row or file).
        report: Where findings are collected (a new one when omitted).
    """

    def __init__(
        self,
        corpus: str | os.PathLike[str],
        *,
        on_error: OnError = "skip",
        report: CorpusReport | None = None,
    ) -> None:
        self.root, self.files = corpus_files(corpus)
        self.single = Path(corpus).is_file()
        self.on_error = on_error
        self.report = report if report is not None else CorpusReport()
        self._seen: dict[str, str] = {}

    def __iter__(self) -> Iterator[Document]:
        for file in self.files:
            self.report.files += 1
            if is_jsonl(file):
                yield from self._jsonl(file)
            else:
                document = self._text_file(file)
                if document is not None:
                    yield document

    def _bad(self, path: Path, line: int, reason: str) -> None:
        if self.on_error == "raise":
            raise BadRowError(path, line, reason)
        self.report.rows.add_bad_row(path, line, reason)

    def _skip_file(self, path: Path, reason: str) -> None:
        if self.on_error == "raise":
            raise BadRowError(path, 0, reason)
        logger.warning("skipping %s: %s", path, reason)
        self.report.skipped_files.append((str(path), reason))

    def _accept(self, doc_id: str, origin: str, path: Path, line: int) -> bool:
        first = self._seen.get(doc_id)
        if first is not None:
            self._bad(
                path, line, f"duplicate id {doc_id!r} (first seen at {first}); kept the first"
            )
            return False
        self._seen[doc_id] = origin
        return True

    def _jsonl(self, path: Path) -> Iterator[Document]:
        rows = self.report.rows
        try:
            for line, obj in iter_jsonl_records(path, on_error=self.on_error, report=rows):
                document = self._row(path, line, obj)
                if document is None:
                    rows.rows_ok -= 1
                    continue
                self.report.documents += 1
                yield document
        except OSError as err:
            self._skip_file(path, f"unreadable ({err})")

    def _row(self, path: Path, line: int, obj: dict[str, Any]) -> Document | None:
        text = obj.get("text")
        if "text" not in obj:
            return self._bad_row(path, line, "missing field 'text'")
        if not isinstance(text, str):
            return self._bad_row(
                path, line, f"field 'text' must be a string, got {type(text).__name__}"
            )
        if not text.strip():
            return self._bad_row(path, line, "empty or whitespace-only text")
        raw_id = obj.get("id")
        if raw_id is None:
            doc_id = f"{self._name(path)}:{line}"
        elif isinstance(raw_id, str) and raw_id.strip():
            doc_id = raw_id
        elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
            doc_id = str(raw_id)
        else:
            return self._bad_row(
                path, line, f"field 'id' must be a non-empty string or an integer, got {raw_id!r}"
            )
        nested = obj.get("metadata", {})
        if not isinstance(nested, dict):
            return self._bad_row(
                path, line, f"field 'metadata' must be a JSON object, got {type(nested).__name__}"
            )
        extra = {k: v for k, v in obj.items() if k not in ("id", "text", "metadata")}
        try:
            metadata = check_metadata({**extra, **nested}, reserved_ok=False)
        except MetadataError as err:
            return self._bad_row(path, line, str(err))
        origin = f"{path}:{line}"
        if not self._accept(doc_id, origin, path, line):
            return None
        return Document(doc_id, text, metadata, origin)

    def _bad_row(self, path: Path, line: int, reason: str) -> None:
        self._bad(path, line, reason)
        return None

    def _name(self, path: Path) -> str:
        return path.name if self.single else path.relative_to(self.root).as_posix()

    def _text_file(self, path: Path) -> Document | None:
        try:
            data = path.read_bytes()
        except OSError as err:
            self._skip_file(path, f"unreadable ({err})")
            return None
        if b"\x00" in data[:_SNIFF_BYTES]:
            self._skip_file(path, "binary file (NUL bytes), not text")
            return None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            text = data.decode("utf-8-sig", errors="replace")
            message = (
                f"invalid UTF-8 at byte {err.start} ({err.reason}); bad bytes replaced by U+FFFD"
            )
            logger.warning("%s: %s", path, message)
            self.report.warnings.append((str(path), message))
        if not text.strip():
            self._skip_file(path, "empty or whitespace-only file")
            return None
        doc_id = self._name(path)
        if not self._accept(doc_id, str(path), path, 0):
            return None
        self.report.documents += 1
        return Document(doc_id, text, {"path": doc_id}, str(path))
