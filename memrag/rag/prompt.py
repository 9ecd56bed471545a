"""A parsed prompt: turns of literal text and references to stored documents."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memrag.prompts import DocumentText, render_chat
from memrag.rag.markers import DocumentReference, Piece
from memrag.splice import PromptPart
from memrag.store.records import ChunkRecord

#: What joins consecutive messages of one role (chat templates such as Gemma's need
#: alternating roles).
TURN_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class PromptSpec:
    """A parsed prompt: turns of literal text and document references.

    Attributes:
        turns: ``(role, pieces)`` pairs; a single turn with role ``None`` is a raw completion
            prompt (no chat template).
    """

    turns: tuple[tuple[str | None, tuple[Piece, ...]], ...]

    @property
    def document_ids(self) -> list[str]:
        """Referenced document ids, unique, in order of first reference."""
        ids = (p.id for _, pieces in self.turns for p in pieces if isinstance(p, DocumentReference))
        return list(dict.fromkeys(ids))

    def materialize(self, records: dict[str, ChunkRecord], tokenizer: Any) -> list[PromptPart]:
        """Prompt parts with each reference replaced by its document's memory (or text)."""

        def document(reference: DocumentReference) -> Any:
            context = records[reference.id].context()
            return DocumentText(context) if isinstance(context, str) else context

        def resolve(pieces: Sequence[Piece]) -> list[str | Any]:
            return [document(p) if isinstance(p, DocumentReference) else p for p in pieces]

        if len(self.turns) == 1 and self.turns[0][0] is None:
            return resolve(self.turns[0][1])
        messages = [{"role": role, "content": resolve(pieces)} for role, pieces in self.turns]
        return render_chat(tokenizer, messages)


def completion_spec(pieces: Sequence[Piece]) -> PromptSpec:
    """A raw completion prompt (no chat template)."""
    return PromptSpec(((None, tuple(pieces)),))


def chat_spec(turns: Sequence[tuple[str, Sequence[Piece]]]) -> PromptSpec:
    """A chat prompt from ``(role, pieces)`` messages; consecutive messages of one role are
    merged, separated by :data:`TURN_SEPARATOR`.

    Raises:
        ValueError: no messages.
    """
    if not turns:
        raise ValueError("a chat prompt needs at least one message")
    merged: list[tuple[str, list[Piece]]] = []
    for role, pieces in turns:
        if merged and merged[-1][0] == role:
            merged[-1][1].extend([TURN_SEPARATOR, *pieces])
        else:
            merged.append((role, list(pieces)))
    return PromptSpec(tuple((role, tuple(pieces)) for role, pieces in merged))
