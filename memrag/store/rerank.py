"""Reranking by the stored memory: candidates ordered by how likely the frozen decoder finds
the question after reading each one (UPR, Sachan et al., arXiv 2204.07496).

A chunk's K/V memory is the cache prefix the decoder reads it from, so scoring a candidate
costs one short prefill (the instruction and the question, a few dozen tokens) against that
prefix, not a pass over the chunk's text; all candidates go through the one splice path
(:func:`memrag.scoring.target_logits`) in one batch. A chunk without memory (or flagged to be
served as text) is scored from its text, as it would be answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from memrag.store.lexical import STOP_WORDS
from memrag.store.records import ChunkRecord

if TYPE_CHECKING:
    from memrag.protocols import DecodingModel

#: Question tokens scored at most (the first ones): a question is a few dozen tokens; a longer
#: query (a pasted document) would otherwise cost a prefill of all of it per candidate.
MAX_SCORED_TOKENS = 64


class MemoryReranker:
    """Scores and orders candidate chunks by the decoder's log-likelihood of the question.

    Args:
        compressor: The compressor whose frozen decoder reads the store's memory.
        batch_size: Candidates scored per decoder pass.
        content_only: Score only the question's content tokens (:meth:`content_offsets`).
    """

    def __init__(
        self, compressor: DecodingModel, *, batch_size: int = 8, content_only: bool = False
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.compressor = compressor
        self.batch_size = batch_size
        self.content_only = content_only

    def content_offsets(self, target: Sequence[int]) -> list[int]:
        """Offsets of the question tokens scored: all of them, or with ``content_only`` those
        that say what it is about (not stop words or punctuation; all when there are none),
        so the vocabulary projection runs on fewer positions (measured: a fifth faster, a
        little less often right; docs/RESULTS.md, "The default path")."""
        if not self.content_only:
            return list(range(len(target)))
        tokenizer = self.compressor.tokenizer
        kept = []
        for offset, token in enumerate(target):
            word = tokenizer.decode([token]).strip().lower()
            if any(ch.isalnum() for ch in word) and word not in STOP_WORDS:
                kept.append(offset)
        return kept or list(range(len(target)))

    def scores(self, question: str, records: Sequence[ChunkRecord]) -> list[float]:
        """Mean log-probability per scored question token (:meth:`content_offsets`; the first
        :data:`MAX_SCORED_TOKENS`) given each record (higher: the record is more likely what the
        question asks about), in input order."""
        from memrag.prompts import question_likelihood_prompt, question_target_ids
        from memrag.scoring import target_logits, token_losses

        if not records:
            return []
        target = question_target_ids(self.compressor.tokenizer, question)[:MAX_SCORED_TOKENS]
        if not target:
            raise ValueError("cannot rerank for an empty question")
        offsets = self.content_offsets(target)
        found: list[float] = []
        for start in range(0, len(records), self.batch_size):
            batch = records[start : start + self.batch_size]
            prompts = [question_likelihood_prompt(r.context()) for r in batch]
            with torch.inference_mode():
                logits = target_logits(
                    self.compressor, prompts, [target] * len(batch), target_offsets=offsets
                )
            losses, counts = token_losses(logits)
            found.extend(-float(loss) / max(count, 1) for loss, count in zip(losses, counts))
        return found

    def rerank(self, question: str, records: Sequence[ChunkRecord], k: int) -> list[ChunkRecord]:
        """The ``k`` best ``records`` by :meth:`scores`, best first (ties keep the first-stage
        order); each one's ``score`` becomes its reranking score."""
        scored = self.scores(question, records)
        order = sorted(range(len(records)), key=lambda i: -scored[i])[:k]
        chosen: list[ChunkRecord] = []
        for i in order:
            record: Any = records[i]
            record.score = scored[i]
            chosen.append(record)
        return chosen
