"""Streaming readers for the JSONL corpora used by memrag (plain or gzip)."""

from memrag.data.readers import (
    BadRow,
    BadRowError,
    QARecord,
    ReadReport,
    TextRecord,
    iter_jsonl_records,
    iter_qa_records,
    iter_text_records,
    iter_unique_contexts,
    open_binary,
)

__all__ = [
    "BadRow",
    "BadRowError",
    "QARecord",
    "ReadReport",
    "TextRecord",
    "iter_jsonl_records",
    "iter_qa_records",
    "iter_text_records",
    "iter_unique_contexts",
    "open_binary",
]
