"""What a store hands to query-time consumers: a chunk with its text, metadata and slots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memrag.memory.protocol import Memory


@dataclass
class ChunkRecord:
    """One stored chunk.

    Attributes:
        id: The chunk's id (unique in its store).
        text: The chunk's text (always kept, for display and for the text fallback).
        metadata: User metadata plus memrag's own keys (``source_id``, ``char_start``, ...).
        slots: The chunk's memory, embedding slots or K/V memory (``None`` when not requested /
            not available).
        use_text: ``True`` when the chunk compressed badly (low fidelity): consumers splice its
            text instead of its slots.
        fidelity: The fidelity score measured at index time (``None`` if not measured).
        score: Similarity to the query, for search results (higher is closer).
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    slots: Memory | None = None
    use_text: bool = False
    fidelity: float | None = None
    score: float | None = None

    def context(self) -> str | Memory:
        """What to splice for this chunk: its memory, or its text when flagged or memory-less."""
        if self.use_text or self.slots is None:
            return self.text
        return self.slots
