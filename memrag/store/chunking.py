"""Token-aware chunking with overlap, using the compressor's own tokenizer.

A document is tokenized once (with character offsets); windows of ``chunk_tokens`` tokens,
``chunk_tokens - overlap`` apart, become chunks. A chunk's text is the exact substring of
the document its tokens cover, so ``document[char_start:char_end] == chunk.text``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TextChunk:
    """A piece of a document.

    Attributes:
        index: Position of the chunk in its document (0-based).
        text: The chunk's text, ``document[char_start:char_end]``.
        char_start: Offset of its first character in the document.
        char_end: Offset one past its last character.
        num_tokens: Tokens of ``text`` tokenized on its own (at most the chunk length).
    """

    index: int
    text: str
    char_start: int
    char_end: int
    num_tokens: int


class Chunker:
    """Cuts documents into overlapping windows of tokens.

    Args:
        tokenizer: A Hugging Face fast tokenizer (it must return offset mappings).
        chunk_tokens: Tokens per chunk.
        overlap: Tokens shared by consecutive chunks.
    """

    def __init__(self, tokenizer: Any, chunk_tokens: int, overlap: int = 0) -> None:
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        if not 0 <= overlap < chunk_tokens:
            raise ValueError(
                f"overlap must be in [0, chunk_tokens), got {overlap} (chunk_tokens={chunk_tokens})"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("chunking needs a fast tokenizer (one that returns character offsets)")
        self.tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.overlap = overlap

    @classmethod
    def with_overlap(cls, tokenizer: Any, chunk_tokens: int, overlap: int | None = None) -> Chunker:
        """A chunker whose overlap defaults to an eighth of a chunk (and is kept below it)."""
        chosen = chunk_tokens // 8 if overlap is None else min(overlap, chunk_tokens - 1)
        return cls(tokenizer, chunk_tokens, chosen)

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in encoded["offset_mapping"]]

    def count(self, text: str) -> int:
        """Tokens of ``text`` on its own."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chunk(self, text: str) -> list[TextChunk]:
        """The chunks of ``text`` (none for empty or whitespace-only text).

        A window's text re-tokenized on its own can take a token or two more than the window
        (merges at its edges); such a window is shortened until its text fits
        ``chunk_tokens``, so every chunk compresses into whole segments without a spill-over.
        """
        if not text or not text.strip():
            return []
        offsets = self._offsets(text)
        chunks: list[TextChunk] = []
        start = 0
        while start < len(offsets):
            end = min(start + self.chunk_tokens, len(offsets))
            chunk = self._make(len(chunks), text, offsets[start][0], offsets[end - 1][1])
            while end - start > 1 and self.count(chunk.text) > self.chunk_tokens:
                end -= 1
                chunk = self._make(len(chunks), text, offsets[start][0], offsets[end - 1][1])
            if chunk.text:
                chunks.append(chunk)
            if end >= len(offsets):
                break
            start = max(start + 1, end - self.overlap)
        return chunks

    def _make(self, index: int, text: str, char_start: int, char_end: int) -> TextChunk:
        # Tokenizers fold leading spaces into tokens; keep offsets exact but trim the edges.
        piece = text[char_start:char_end]
        stripped = piece.strip()
        if stripped != piece:
            char_start += len(piece) - len(piece.lstrip())
            char_end = char_start + len(stripped)
        return TextChunk(
            index, stripped, char_start, char_end, self.count(stripped) if stripped else 0
        )
