"""Tests for memrag.data.readers."""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import pytest

from memrag.data import (
    BadRowError,
    QARecord,
    ReadReport,
    TextRecord,
    iter_jsonl_records,
    iter_qa_records,
    iter_text_records,
    iter_unique_contexts,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_lines(path: Path, lines: list[bytes | str | dict[str, Any]]) -> Path:
    """Writes raw lines (bytes, str or dicts as JSON) to a plain or .gz file."""
    chunks = []
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        chunks.append(line if isinstance(line, bytes) else line.encode("utf-8"))
    data = b"\n".join(chunks) + b"\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def qa_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "q1",
        "title": "T",
        "context": "Paris is in France.",
        "question": "Where is Paris?",
        "answers": ["France", "in France"],
        "answer_starts": [12, 9],
    }
    row.update(overrides)
    return row


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.jsonl.gz"])
def test_jsonl_plain_and_gzip(tmp_path: Path, name: str) -> None:
    path = write_lines(tmp_path / name, [{"a": 1}, "", "   ", {"b": 2}])
    report = ReadReport()
    rows = list(iter_jsonl_records(path, report=report))
    assert rows == [(1, {"a": 1}), (4, {"b": 2})]  # blank lines skipped, lines kept
    assert (report.rows_read, report.rows_ok, report.rows_skipped) == (2, 2, 0)


def test_gzip_detected_by_magic_bytes(tmp_path: Path) -> None:
    path = tmp_path / "compressed_without_suffix.jsonl"
    path.write_bytes(gzip.compress(b'{"text": "hello"}\n'))
    assert [r.text for r in iter_text_records(path)] == ["hello"]


def test_crlf_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "win.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n{"text": "b"}\r\n')
    assert [r.text for r in iter_text_records(path)] == ["a", "b"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"text": "caf\xe9"}', "invalid UTF-8"),
        (b'{"text": "unterminated', "invalid JSON"),
        (b'["a", "list"]', "expected a JSON object, got array"),
        (b'"just a string"', "expected a JSON object, got string"),
    ],
)
def test_jsonl_bad_rows(tmp_path: Path, line: bytes, reason: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl.gz", [{"text": "ok"}, b"", line, {"text": "ok2"}])
    report = ReadReport()
    rows = list(iter_jsonl_records(path, report=report))
    assert [n for n, _ in rows] == [1, 4]
    assert (report.rows_read, report.rows_ok, report.rows_skipped) == (3, 2, 1)
    (bad,) = report.bad_rows
    assert bad.path == path and bad.line == 3 and bad.reason.startswith(reason)

    with pytest.raises(BadRowError) as info:
        list(iter_jsonl_records(path, on_error="raise"))
    assert info.value.line == 3 and info.value.path == path
    assert str(info.value).startswith(f"{path}:3: {reason}")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"body": "x"}, "missing field 'text'"),
        ({"text": 3}, "field 'text' must be a string, got number"),
        ({"text": None}, "field 'text' must be a string, got null"),
        ({"text": ""}, "empty field 'text'"),
        ({"text": " \n\t "}, "empty field 'text'"),
    ],
)
def test_text_bad_rows(tmp_path: Path, row: dict[str, Any], reason: str) -> None:
    path = write_lines(tmp_path / "t.jsonl", [{"text": "good"}, row])
    report = ReadReport()
    assert [r.text for r in iter_text_records(path, report=report)] == ["good"]
    assert [(b.line, b.reason) for b in report.bad_rows] == [(2, reason)]
    assert (report.rows_read, report.rows_ok, report.rows_skipped) == (2, 1, 1)
    with pytest.raises(BadRowError, match=f"^{re.escape(f'{path}:2: {reason}')}$"):
        list(iter_text_records(path, on_error="raise"))


def test_text_records_fields(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "articles.jsonl.gz",
        [{"id": "a1", "title": "A", "text": "First."}, {"title": "B", "body": "Second."}],
    )
    (first,) = iter_text_records(path)  # row 2 has no "text" field: skipped
    assert first == TextRecord("First.", "a1", {"title": "A"}, path, 1)
    records = list(iter_text_records(path, field="body"))
    assert len(records) == 1
    assert records[0].id == "articles.jsonl.gz:2"
    assert records[0].metadata == {"title": "B"}
    assert records[0].line == 2


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"context": None}, "field 'context' must be a string, got null"),
        ({"context": "  "}, "empty field 'context'"),
        ({"question": ""}, "empty field 'question'"),
        ({"question": ["?"]}, "field 'question' must be a string, got array"),
        ({"answers": []}, "empty field 'answers'"),
        ({"answers": "France"}, "field 'answers' must be a list of strings, got string"),
        ({"answers": ["France", 3]}, "field 'answers'[1] must be a string, got number"),
        ({"title": 7}, "field 'title' must be a string, got number"),
    ],
)
def test_qa_bad_rows(tmp_path: Path, overrides: dict[str, Any], reason: str) -> None:
    path = write_lines(tmp_path / "qa.jsonl.gz", [qa_row(), qa_row(id="q2", **overrides)])
    report = ReadReport()
    assert [r.id for r in iter_qa_records(path, report=report)] == ["q1"]
    assert [(b.path, b.line, b.reason) for b in report.bad_rows] == [(path, 2, reason)]
    with pytest.raises(BadRowError) as info:
        list(iter_qa_records(path, on_error="raise"))
    assert str(info.value) == f"{path}:2: {reason}"


@pytest.mark.parametrize("missing", ["context", "question", "answers"])
def test_qa_missing_field(tmp_path: Path, missing: str) -> None:
    row = qa_row()
    del row[missing]
    path = write_lines(tmp_path / "train.jsonl.gz", [row])
    with pytest.raises(BadRowError) as info:
        list(iter_qa_records(path, on_error="raise"))
    err = info.value
    assert (err.path, err.line, err.reason) == (path, 1, f"missing field {missing!r}")
    assert str(err) == f"{path}:1: missing field {missing!r}"


def test_bad_row_error_message_format() -> None:
    err = BadRowError("data/train.jsonl.gz", 17, "missing field 'context'")
    assert isinstance(err, ValueError)
    assert str(err) == "data/train.jsonl.gz:17: missing field 'context'"
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.path, clone.line, clone.reason) == (err.path, err.line, err.reason)


def test_qa_record_fields(tmp_path: Path) -> None:
    row = qa_row()
    del row["id"], row["title"]
    path = write_lines(tmp_path / "qa.jsonl", [qa_row(), row])
    first, second = iter_qa_records(path)
    assert first == QARecord(
        id="q1",
        context="Paris is in France.",
        question="Where is Paris?",
        answers=["France", "in France"],
        title="T",
        metadata={"answer_starts": [12, 9]},
        source=path,
        line=1,
    )
    assert second.id == "qa.jsonl:2" and second.title is None


def test_raise_mode_is_lazy(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "qa.jsonl", [qa_row(), b"{broken"])
    records = iter_qa_records(path, on_error="raise")
    assert next(records).id == "q1"  # the good first row comes before the error
    with pytest.raises(BadRowError):
        next(records)


def test_invalid_on_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "t.jsonl", [{"text": "x"}])
    with pytest.raises(ValueError, match="on_error"):
        list(iter_text_records(path, on_error="ignore"))  # type: ignore[arg-type]


def test_warning_cap_and_summary(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_lines(tmp_path / "t.jsonl", [{"text": "ok"}] + [b"nope"] * 5)
    report = ReadReport(max_logged=2)
    with caplog.at_level(logging.WARNING, logger="memrag.data.readers"):
        assert len(list(iter_text_records(path, report=report))) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert messages[0].startswith(f"skipping bad row {path}:2: invalid JSON")
    assert messages[2] == f"{path}: ... and 3 more bad rows skipped"
    assert report.rows_skipped == 5 and len(report.bad_rows) == 5
    assert report.summary().startswith("6 rows read, 1 ok, 5 skipped")


def test_report_shared_across_files(tmp_path: Path) -> None:
    a = write_lines(tmp_path / "a.jsonl", [{"text": "x"}, b"[]"])
    b = write_lines(tmp_path / "b.jsonl.gz", [{"text": "y"}, {"text": ""}])
    report = ReadReport()
    texts = [r.text for p in (a, b) for r in iter_text_records(p, report=report)]
    assert texts == ["x", "y"]
    assert (report.rows_read, report.rows_ok, report.rows_skipped) == (4, 2, 2)
    bad = [(br.path.name, br.line) for br in report.bad_rows]
    assert bad == [("a.jsonl", 2), ("b.jsonl.gz", 2)]


def test_unique_contexts(tmp_path: Path) -> None:
    rows = [
        qa_row(context="C1"),
        qa_row(context="C1", question="Other?"),
        qa_row(context="C2"),
        qa_row(context=""),  # bad row, skipped
        qa_row(context="C1"),
        qa_row(context="C3", answers=[]),  # context still counts as a passage
    ]
    path = write_lines(tmp_path / "squad.jsonl.gz", rows)
    report = ReadReport()
    assert list(iter_unique_contexts(path, report=report)) == ["C1", "C2", "C3"]
    assert report.rows_skipped == 1


def test_real_squad_dev() -> None:
    path = SHARED_DATA / "squad_v1.1" / "dev.jsonl.gz"
    if not path.exists():
        pytest.skip(f"real SQuAD data not found at {path} (the shared data folder is absent)")
    report = ReadReport()
    records = list(itertools.islice(iter_qa_records(path, on_error="raise", report=report), 50))
    assert len(records) == 50
    assert report.rows_skipped == 0
    for i, rec in enumerate(records, start=1):
        assert rec.line == i
        assert rec.id and rec.title and rec.context.strip() and rec.question.strip()
        assert rec.answers and all(isinstance(a, str) for a in rec.answers)
        assert rec.metadata["dataset"] == "squad_v1.1"
        assert rec.metadata["split"] == "dev"
        assert rec.metadata["is_impossible"] is False
        for answer, start in zip(rec.answers, rec.metadata["answer_starts"], strict=True):
            assert rec.context[start : start + len(answer)] == answer
    contexts = list(itertools.islice(iter_unique_contexts(path), 3))
    assert len(set(contexts)) == 3
    assert contexts[0] == records[0].context
