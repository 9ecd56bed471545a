"""Turning what users add (strings, LangChain documents, ids, metadata) into chunks to store."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from memrag.store.chunking import Chunker
from memrag.store.metadata import MetadataError, check_metadata
from memrag.store.processing import ChunkInput


class InvalidDocumentsError(ValueError):
    """Some documents given to :meth:`MemoryStore.add` cannot be stored (nothing was written).

    Attributes:
        problems: ``(position, id, reason)`` for each bad document.
    """

    def __init__(self, problems: list[tuple[int, str | None, str]]) -> None:
        self.problems = problems
        shown = "; ".join(
            f"#{pos} (id {doc_id!r}): {reason}" for pos, doc_id, reason in problems[:10]
        )
        more = f"; ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        super().__init__(
            f"cannot add {len(problems)} document(s), nothing was written: {shown}{more}"
        )


def document_fields(item: Any) -> tuple[Any, Any, Any]:
    """``(text, metadata, id)`` of a string or a LangChain-style Document."""
    if isinstance(item, str):
        return item, None, None
    if hasattr(item, "page_content"):
        return item.page_content, getattr(item, "metadata", None), getattr(item, "id", None)
    return item, None, None


def document_chunks(
    chunker: Chunker, doc_id: str, text: str, metadata: dict[str, Any]
) -> list[ChunkInput]:
    """Cuts one document into :class:`ChunkInput` s (ids ``<doc_id>#<n>``, offsets in metadata)."""
    chunks = []
    for piece in chunker.chunk(text):
        meta = {
            **metadata,
            "source_id": doc_id,
            "chunk_index": piece.index,
            "char_start": piece.char_start,
            "char_end": piece.char_end,
        }
        chunks.append(ChunkInput(f"{doc_id}#{piece.index}", piece.text, meta, source_id=doc_id))
    return chunks


def prepare_documents(
    items: list[Any],
    ids: Sequence[str] | None,
    metadatas: Sequence[Mapping[str, Any] | None] | None,
    chunker: Chunker | None,
) -> tuple[list[ChunkInput], list[str]]:
    """Validates documents and turns them into chunks.

    Args:
        items: Strings or LangChain-style documents.
        ids: One id per document, or ``None`` (the document's ``id``, else a new UUID).
        metadatas: One metadata dict per document, or ``None`` (the document's metadata).
        chunker: Cut documents into chunks with it (``None``: one chunk per document).

    Returns:
        ``(chunks, source ids)``; the source ids are those of chunked documents.

    Raises:
        InvalidDocumentsError: listing every bad document.
        ValueError: ``ids`` or ``metadatas`` have the wrong length.
    """
    if ids is not None and len(ids) != len(items):
        raise ValueError(f"got {len(items)} documents but {len(ids)} ids")
    if metadatas is not None and len(metadatas) != len(items):
        raise ValueError(f"got {len(items)} documents but {len(metadatas)} metadatas")
    problems: list[tuple[int, str | None, str]] = []
    inputs: list[ChunkInput] = []
    sources: list[str] = []
    seen: dict[str, int] = {}
    for pos, item in enumerate(items):
        text, doc_metadata, doc_id = document_fields(item)
        if ids is not None:
            doc_id = ids[pos]
        doc_id = doc_id if doc_id is not None else uuid.uuid4().hex
        if not isinstance(doc_id, str) or not doc_id:
            problems.append((pos, None, f"id must be a non-empty string, got {doc_id!r}"))
            continue
        if doc_id in seen:
            problems.append((pos, doc_id, f"duplicate id (also at #{seen[doc_id]})"))
            continue
        seen[doc_id] = pos
        if not isinstance(text, str):
            problems.append((pos, doc_id, f"text must be a string, got {type(text).__name__}"))
            continue
        if not text.strip():
            problems.append((pos, doc_id, "empty or whitespace-only text"))
            continue
        try:
            metadata = check_metadata(
                metadatas[pos] if metadatas is not None else doc_metadata,
                reserved_ok=chunker is None,
            )
        except MetadataError as err:
            problems.append((pos, doc_id, str(err)))
            continue
        if chunker is not None:
            inputs.extend(document_chunks(chunker, doc_id, text, metadata))
            sources.append(doc_id)
        else:
            inputs.append(ChunkInput(doc_id, text, metadata))
    if problems:
        raise InvalidDocumentsError(problems)
    return inputs, sources
