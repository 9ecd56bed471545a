"""Question-free salience: the tokens a passage's factual answers are usually made of.

SQuAD-style answers are mostly names, dates and numbers. A position selection driven only by
attention (KVzip, H2O) keeps the positions the decoder attends to, which are often function
words and punctuation; forcing a chunk's *salient* tokens (those holding a digit, or starting
a capitalised word) into every layer keeps the facts available without looking at any
question (``benchmarks/answer_forcing.py`` measures what this changes).

:func:`forced_salient_rows` chooses those tokens within a slot budget; :func:`force_rows` makes a
position scorer keep them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def is_salient(piece: str, *, first: bool) -> bool:
    """Whether a decoded token holds a digit or starts a capitalised word.

    Args:
        piece: The token's text as the tokenizer decodes it alone (leading space kept).
        first: Whether the token is the first of its chunk (a word start without a space).
    """
    if any(char.isdigit() for char in piece):
        return True
    starts_word = first or piece[:1].isspace()
    return starts_word and piece.strip()[:1].isupper()


def salient_rows(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """Indices of the salient tokens (:func:`is_salient`) of one chunk's token ids, ascending."""
    return [i for i, token in enumerate(ids) if is_salient(tokenizer.decode([token]), first=i == 0)]


def capped_rows(scores: torch.Tensor, rows: Sequence[int], cap: int) -> list[int]:
    """At most ``cap`` of ``rows``: those with the highest mean score over layers, ascending.

    Args:
        scores: Per-layer position scores ``(n, layers)``, higher is kept first.
        rows: Candidate positions.
        cap: Most positions returned (``0`` returns none).
    """
    chosen = list(rows)
    if len(chosen) <= cap:
        return sorted(chosen)
    if cap <= 0:
        return []
    mean = scores[chosen].float().mean(dim=1)
    return sorted(chosen[i] for i in torch.topk(mean, cap).indices.tolist())


def forced_salient_rows(tokenizer: Any, ids: Sequence[int], scores: torch.Tensor, slots: int) -> list[int]:
    """The rows a ``*-salient`` selection forces into every layer of one chunk.

    Its salient tokens (:func:`salient_rows`), at most half of its ``slots`` (at least one):
    the best-scored of them when there are more (:func:`capped_rows`).
    """
    return capped_rows(scores, salient_rows(tokenizer, ids), max(1, slots // 2))


def force_rows(scores: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """Position scores ``(n, layers)`` with ``rows`` made the best at every layer.

    A top-``k`` selection with ``k >= len(rows)`` then keeps every one of them in every layer.

    Returns:
        A new tensor when a row is forced; ``scores`` itself is never modified.
    """
    if not rows:
        return scores
    forced = scores.clone()
    forced[list(rows)] = float("inf")
    return forced
