"""Where the models find the documents a prompt references.

A *document source* is anything with ``get(ids, with_slots=True) -> list[ChunkRecord]`` that
leaves unknown ids out of its answer: :class:`memrag.store.MemoryStore` is one, and
:class:`InMemoryDocumentSource` (documents compressed in memory, for tests and small apps) is
another.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from memrag.store.records import ChunkRecord

if TYPE_CHECKING:
    from memrag.compressor.model import Compressor

logger = logging.getLogger(__name__)


class TextDocument(Protocol):
    """A document with text, metadata and maybe an id (a LangChain ``Document`` is one)."""

    page_content: str
    metadata: dict[str, Any]
    id: str | None


@runtime_checkable
class DocumentSource(Protocol):
    """Anything that hands out stored chunks by id."""

    def get(self, ids: Sequence[str], with_slots: bool = True) -> list[ChunkRecord]:
        """The records of ``ids`` that exist (unknown ids are left out)."""
        ...


class DocumentNotFoundError(LookupError):
    """A prompt referenced documents that its model's document source does not hold.

    Attributes:
        missing: The ids that were not found, in order of first reference.
    """

    def __init__(self, missing: Sequence[str], *, source: Any = None) -> None:
        self.missing = list(missing)
        shown = ", ".join(repr(i) for i in self.missing[:10])
        more = f" and {len(self.missing) - 10} more" if len(self.missing) > 10 else ""
        where = f" in {type(source).__name__}" if source is not None else ""
        super().__init__(f"prompt references unknown document id(s){where}: {shown}{more}")


def fetch_records(source: DocumentSource | None, ids: Sequence[str]) -> dict[str, ChunkRecord]:
    """Fetches every record of ``ids`` (with slots) in one call.

    Raises:
        DocumentNotFoundError: Some ids are unknown to ``source`` (or there is no source).
    """
    unique = list(dict.fromkeys(ids))
    if not unique:
        return {}
    if source is None:
        raise DocumentNotFoundError(unique)
    records = {record.id: record for record in source.get(unique, with_slots=True)}
    missing = [doc_id for doc_id in unique if doc_id not in records]
    if missing:
        raise DocumentNotFoundError(missing, source=source)
    return records


class InMemoryDocumentSource:
    """Documents compressed into slots and kept in memory.

    Adding a document compresses it with ``compressor`` at once. Ids are upserted: adding an
    id again replaces its record.

    Args:
        compressor: The compressor that makes (and later reads) the slots.
        batch_size: Segments per encoder pass when compressing.
        memory: What to keep for each document (a :class:`~memrag.memory.spec.MemorySpec` or a
            mode string: ``"embedding"`` slots by default, or ``"kv-exact"``, ``"kv-pruned"``
            ...: K/V memory made by the compressor's frozen decoder).
    """

    def __init__(self, compressor: Compressor, *, batch_size: int = 16, memory: Any = "embedding") -> None:
        from memrag.memory.spec import resolve_memory_spec

        self.memory = resolve_memory_spec(memory)
        self.compressor = compressor
        self.batch_size = batch_size
        self._records: dict[str, ChunkRecord] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        compressor: Compressor,
        metadatas: Sequence[dict[str, Any]] | None = None,
        *,
        ids: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> InMemoryDocumentSource:
        """A source holding ``texts`` (see :meth:`add_texts`)."""
        source = cls(compressor, **kwargs)
        source.add_texts(texts, metadatas, ids=ids)
        return source

    def add_texts(
        self,
        texts: Sequence[str],
        metadatas: Sequence[dict[str, Any]] | None = None,
        *,
        ids: Sequence[str | None] | None = None,
        use_text: bool | Sequence[bool] = False,
    ) -> list[str]:
        """Compresses and stores ``texts``.

        Args:
            texts: Document texts (non-empty).
            metadatas: One metadata dict per text.
            ids: One id per text (``None`` entries, or no ``ids``, get a random UUID).
            use_text: Mark texts to be spliced as text instead of slots (one flag for all, or
                one per text), like low-fidelity chunks of a store. Such texts are not
                compressed.

        Returns:
            The ids of the stored texts.
        """
        count = len(texts)
        metadatas = list(metadatas) if metadatas is not None else [{} for _ in range(count)]
        chosen = list(ids) if ids is not None else [None] * count
        flags = [use_text] * count if isinstance(use_text, bool) else list(use_text)
        for name, values in (("metadatas", metadatas), ("ids", chosen), ("use_text", flags)):
            if len(values) != count:
                raise ValueError(f"{count} texts but {len(values)} {name}")
        final_ids = [doc_id if doc_id else str(uuid.uuid4()) for doc_id in chosen]
        to_compress = [i for i in range(count) if not flags[i]]
        from memrag.memory.builders import build_memory

        slots = build_memory(
            self.compressor, self.memory, [texts[i] for i in to_compress], batch_size=self.batch_size
        ) if to_compress else []
        slots_by_index = dict(zip(to_compress, slots))
        records = [
            ChunkRecord(
                id=final_ids[i],
                text=texts[i],
                metadata=dict(metadatas[i]),
                slots=slots_by_index.get(i),
                use_text=flags[i],
            )
            for i in range(count)
        ]
        with self._lock:
            self._records.update((record.id, record) for record in records)
        logger.debug("stored %d documents (%d compressed)", count, len(to_compress))
        return final_ids

    def add_documents(
        self, documents: Sequence[TextDocument], *, use_text: bool | Sequence[bool] = False
    ) -> list[str]:
        """Stores documents (LangChain ``Document``\\ s ...), keeping their ``id`` when they have one."""
        return self.add_texts(
            [doc.page_content for doc in documents],
            [doc.metadata for doc in documents],
            ids=[doc.id for doc in documents],
            use_text=use_text,
        )

    def get(self, ids: Sequence[str], with_slots: bool = True) -> list[ChunkRecord]:
        """Records of the known ``ids``, in the order asked (unknown ids are left out)."""
        with self._lock:
            found = [self._records[doc_id] for doc_id in ids if doc_id in self._records]
        if with_slots:
            return found
        return [
            dataclasses.replace(record, metadata=dict(record.metadata), slots=None)
            for record in found
        ]

    def delete(self, ids: Iterable[str]) -> None:
        """Removes ``ids`` (unknown ids are ignored)."""
        with self._lock:
            for doc_id in ids:
                self._records.pop(doc_id, None)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._records
