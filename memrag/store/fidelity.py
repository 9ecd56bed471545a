"""Fidelity: how well a chunk survives compression, measured once at index time.

The score is the frozen decoder's geometric-mean per-token probability of reconstructing
the chunk from ``[slots, Task.RECONSTRUCT]``: ``exp(-mean token NLL)``, in ``(0, 1]``, higher
is better. It costs one decoder forward pass per chunk, batched. Chunks that compress badly
(numbers, code, tables, or any chunk under an untrained compressor) score low, and a store
flags those below its threshold with ``use_text`` so query-time consumers splice their text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from memrag.slots import Slots
from memrag.splice import IGNORE_INDEX, Task


class FidelityScorer:
    """Scores chunks by reconstruction likelihood under the frozen decoder.

    Args:
        compressor: The compressor whose decoder reads the slots.
        max_tokens: Score at most this many target tokens per chunk (EOS included).
        logits_budget: Largest ``rows x positions x vocabulary`` logits tensor computed at
            once; batches are split to stay under it (the vocabulary can be 262k).
    """

    def __init__(
        self, compressor: Any, *, max_tokens: int = 512, logits_budget: int = 1 << 26
    ) -> None:
        self.compressor = compressor
        self.max_tokens = max_tokens
        self.logits_budget = logits_budget

    def _vocab_size(self) -> int:
        return int(self.compressor.causal_lm.get_output_embeddings().weight.shape[0])

    def score(self, texts: Sequence[str], slots: Sequence[Slots]) -> list[float]:
        """Fidelity of each ``(text, slots)`` pair, in input order."""
        if len(texts) != len(slots):
            raise ValueError(f"{len(texts)} texts but {len(slots)} slot sets")
        if not texts:
            return []
        splicer = self.compressor.splicer
        lengths = [min(len(splicer.tokenize(t)) + 1, self.max_tokens) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i], reverse=True)
        vocab = self._vocab_size()
        scores: dict[int, float] = {}
        start = 0
        while start < len(order):
            longest = lengths[order[start]] + 1
            rows = max(1, self.logits_budget // (longest * vocab))
            batch = order[start : start + rows]
            for index, value in zip(
                batch, self._score_batch([texts[i] for i in batch], [slots[i] for i in batch])
            ):
                scores[index] = value
            start += len(batch)
        return [scores[i] for i in range(len(texts))]

    def _score_batch(self, texts: list[str], slots: list[Slots]) -> list[float]:
        compressor = self.compressor
        with torch.inference_mode():
            batch = compressor.build(
                [[memory, Task.RECONSTRUCT] for memory in slots],
                texts,
                max_target_tokens=self.max_tokens,
            )
            labels = batch.labels
            targets = int((labels != IGNORE_INDEX).sum(dim=1).max())
            keep = targets + 1
            kwargs = dict(
                inputs_embeds=batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
            )
            with compressor.decoder_mode() as decoder:
                try:
                    logits = decoder(**kwargs, logits_to_keep=keep).logits
                except TypeError:  # a model without logits_to_keep
                    logits = decoder(**kwargs).logits
            logits = logits[:, -keep:-1].float()
            gold = labels[:, -targets:]
            nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                gold.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="none",
            ).view(gold.shape)
            counts = (gold != IGNORE_INDEX).sum(dim=1).clamp(min=1)
            mean = (nll.sum(dim=1) / counts).tolist()
        return [math.exp(-value) for value in mean]
