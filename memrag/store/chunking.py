"""Token-aware chunking that cuts between sentences, with overlap, using the model's tokenizer.

A document is tokenized once (with character offsets). A chunk holds at most
``chunk_tokens`` tokens and ends, when the document goes on, at the last sentence boundary
in its second half (a token cut only where no sentence ends there); the next chunk starts
at the earliest sentence boundary within ``overlap`` tokens of that end, so consecutive
chunks share whole sentences where they can. A chunk's text is the exact substring of the
document its tokens cover, so ``document[char_start:char_end] == chunk.text``.

Sizes are chosen for the memory, not for a compressor's segment: a chunk spans as many
segments as it needs (:data:`DEFAULT_CHUNK_TOKENS`).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

#: Tokens per chunk of a new store. Measured on the default path (docs/RESULTS.md, "The
#: default path"): whole SQuAD/Amazon passages (about 160 tokens, a few over 400) stay one
#: chunk, so a retrieved chunk answers the way the question's own passage does.
DEFAULT_CHUNK_TOKENS = 512
#: Tokens shared by consecutive chunks of a new store (whole sentences where they fit).
DEFAULT_CHUNK_OVERLAP = 64

#: Where a sentence ends: terminal punctuation (and closing quotes or brackets) before
#: whitespace, or a line break. The match's end is where the next sentence starts.
_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f][\"'\u201d\u2019)\]]*\s+|\n\s*")


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
    """Cuts documents into overlapping chunks of whole sentences, at most ``chunk_tokens`` each.

    Args:
        tokenizer: A Hugging Face fast tokenizer (it must return offset mappings).
        chunk_tokens: Tokens per chunk at most.
        overlap: Tokens shared by consecutive chunks at most.
        sentence_aware: Cut between sentences where one ends in a chunk's second half
            (``False``: fixed windows of tokens).
    """

    def __init__(
        self, tokenizer: Any, chunk_tokens: int, overlap: int = 0, *, sentence_aware: bool = True
    ) -> None:
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
        self.sentence_aware = sentence_aware

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

    def sentence_starts(self, text: str, offsets: list[tuple[int, int]]) -> list[int]:
        """Indices of the tokens that begin a sentence (after the first), ascending."""
        if not self.sentence_aware:
            return []
        ends = [end for _, end in offsets]
        starts: set[int] = set()
        for match in _SENTENCE_END.finditer(text):
            token = bisect.bisect_right(ends, match.end())
            if 0 < token < len(offsets):
                starts.add(token)
        return sorted(starts)

    def chunk(self, text: str) -> list[TextChunk]:
        """The chunks of ``text`` (none for empty or whitespace-only text).

        A chunk's text re-tokenized on its own can take a token or two more than its tokens
        (merges at its edges); such a chunk is shortened until its text fits
        ``chunk_tokens``, so every chunk's memory covers exactly its text.
        """
        if not text or not text.strip():
            return []
        offsets = self._offsets(text)
        boundaries = self.sentence_starts(text, offsets)
        chunks: list[TextChunk] = []
        start = 0
        while start < len(offsets):
            end = min(start + self.chunk_tokens, len(offsets))
            if end < len(offsets):
                end = self._sentence_end(boundaries, start, end)
            chunk = self._make(len(chunks), text, offsets[start][0], offsets[end - 1][1])
            while end - start > 1 and self.count(chunk.text) > self.chunk_tokens:
                end -= 1
                chunk = self._make(len(chunks), text, offsets[start][0], offsets[end - 1][1])
            if chunk.text:
                chunks.append(chunk)
            if end >= len(offsets):
                break
            start = max(start + 1, self._next_start(boundaries, end))
        return chunks

    def _sentence_end(self, boundaries: list[int], start: int, end: int) -> int:
        """``end`` moved back to the last sentence start in the window's second half."""
        position = bisect.bisect_right(boundaries, end) - 1
        if position >= 0 and boundaries[position] > start + self.chunk_tokens // 2:
            return boundaries[position]
        return end

    def _next_start(self, boundaries: list[int], end: int) -> int:
        """Where the chunk after one ending at ``end`` starts: the earliest sentence start
        within ``overlap`` tokens before ``end``, else ``end - overlap``."""
        earliest = end - self.overlap
        position = bisect.bisect_left(boundaries, earliest)
        if position < len(boundaries) and boundaries[position] <= end:
            return boundaries[position]
        return earliest

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
