"""How a store finds chunks for a query: dense (the embedder's vectors in FAISS), lexical
(BM25 over the chunks' text, :mod:`memrag.store.lexical`) or hybrid (both, fused by
weighted reciprocal rank, the default of Weaviate, Qdrant, Elasticsearch and LangChain's
``EnsembleRetriever``).

Reciprocal-rank fusion (Cormack et al., 2009) scores a chunk ``sum_i w_i / (60 + rank_i)``
over the lists it is in (ranks from 1): it needs no calibration between cosine similarities
and BM25 scores, and a chunk found by both lists rises above one found by either alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Search modes, in the order ``--help`` lists them.
SEARCH_MODES = ("hybrid", "dense", "lexical")
#: The mode of a search that names none. Measured on every SQuAD dev passage (docs/RESULTS.md,
#: "The default path"): the right passage first for more questions than either list alone.
DEFAULT_SEARCH_MODE = "hybrid"
#: Reciprocal-rank fusion's constant (the paper's, and every engine's default).
RRF_CONSTANT = 60
#: Candidates each list contributes to a fusion, at least (and four times ``k``).
MIN_FUSION_CANDIDATES = 20


@dataclass(frozen=True)
class SearchSettings:
    """How to search.

    Attributes:
        mode: ``"hybrid"``, ``"dense"`` or ``"lexical"``.
        dense_weight: Weight of the dense list in a hybrid fusion.
        lexical_weight: Weight of the lexical list in a hybrid fusion.
    """

    mode: str = DEFAULT_SEARCH_MODE
    dense_weight: float = 1.0
    lexical_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in SEARCH_MODES:
            raise ValueError(
                f"unknown search mode {self.mode!r}: use one of {', '.join(SEARCH_MODES)}"
            )
        for name in ("dense_weight", "lexical_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.mode == "hybrid" and self.dense_weight + self.lexical_weight <= 0:
            raise ValueError("a hybrid search needs a weight above 0 for at least one list")

    @classmethod
    def parse(
        cls, mode: str | None = None, weights: Sequence[float] | str | None = None
    ) -> SearchSettings:
        """Settings from a mode name (``None``: the default) and ``(dense, lexical)`` weights
        (a pair, ``"1,0.5"``, or ``None``: equal).

        Raises:
            ValueError: an unknown mode, or weights that are not two numbers >= 0.
        """
        if weights is None:
            return cls(mode or DEFAULT_SEARCH_MODE)
        if isinstance(weights, str):
            try:
                pair = [float(w) for w in weights.split(",")]
            except ValueError:
                raise ValueError(
                    f"search weights must be two numbers 'DENSE,LEXICAL', got {weights!r}"
                ) from None
        else:
            pair = list(weights)
        if len(pair) != 2:
            raise ValueError(f"search weights are two numbers (dense, lexical), got {weights!r}")
        return cls(mode or DEFAULT_SEARCH_MODE, pair[0], pair[1])

    @property
    def weights(self) -> tuple[float, float]:
        """``(dense, lexical)`` weights."""
        return (float(self.dense_weight), float(self.lexical_weight))

    def candidates(self, k: int) -> int:
        """Chunks each list contributes to a fusion for ``k`` results."""
        return max(4 * k, MIN_FUSION_CANDIDATES)


def check_rerank(rerank: object) -> int:
    """``rerank`` (candidates reranked by memory, 0: none) when it is a whole number >= 0.

    Raises:
        ValueError: anything else.
    """
    if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
        raise ValueError(f"rerank must be a whole number of candidates >= 0, got {rerank!r}")
    return rerank


def reciprocal_rank_fusion(
    lists: Sequence[Sequence[tuple[int, float]]], weights: Sequence[float], k: int
) -> list[tuple[int, float]]:
    """The ``k`` best ``(id, fused score)`` of ranked ``(id, score)`` lists, best first.

    Ties keep the order of first appearance (the first list's best first).
    """
    fused: dict[int, float] = {}
    for ranked, weight in zip(lists, weights):
        if weight <= 0:
            continue
        for rank, (item, _) in enumerate(ranked, start=1):
            fused[item] = fused.get(item, 0.0) + weight / (RRF_CONSTANT + rank)
    order = sorted(fused.items(), key=lambda pair: -pair[1])
    return order[:k]
