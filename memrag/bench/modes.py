"""The context modes the benchmark compares: how the retrieved chunks reach the decoder.

Every mode turns (question, retrieved chunk ids) into a :class:`~memrag.splice.SpliceBatch`
through :meth:`memrag.compressor.Compressor.build` (the one splice path), for the same frozen
decoder, with the same prompt wording (:func:`memrag.prompts.qa_prompt`, as
fine-tuning and ``memrag eval qa`` use it); the runner decodes it greedily. A mode's
:meth:`ContextMode.prepare` is part of the measured time: it loads the mode's stored payload
of the chunks (and marks that moment on the timer), then assembles the prompt (for K/V memory:
rotating the cached keys into place and prefilling the text around them).

* ``text``: the chunks' text (classic RAG, the baseline);
* ``slots``: the chunks' memory slots from the store, as the compressor under test makes them;
* ``kv-exact[:settings]`` / ``kv-pruned[:settings]``: the chunks' K/V memory read from a store
  of that kind (e.g. ``kv-exact:int8``, ``kv-pruned:0.5``; see
  :func:`memrag.memory.spec.parse_memory_mode`), optionally with cross-chunk recovery
  (``kv-exact+cacheblend``, ``kv-exact+cacheblend:0.1``; see
  :class:`memrag.memory.recovery.RecoveryConfig`);
* ``truncated``: each chunk's text cut to as many tokens as it has slots
  (:func:`memrag.contexts.truncated_context`), computed offline;
* ``none``: no context.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from memrag.bench.timing import AnswerTimer
from memrag.contexts import ModeName, parse_context_mode
from memrag.memory.kv import KVSlots
from memrag.memory.slots import Slots
from memrag.splice import SpliceBatch

logger = logging.getLogger(__name__)

#: The modes without settings, in report order (K/V modes come after ``slots``).
MODES: tuple[str, ...] = ("text", "slots", "kv-exact", "kv-pruned", "truncated", "none")
#: What ``memrag bench`` runs by default.
DEFAULT_MODES: tuple[str, ...] = (
    "text",
    "slots",
    "kv-exact",
    "kv-exact+cacheblend",
    "kv-pruned",
    "truncated",
    "none",
)


def parse_mode(name: str) -> ModeName:
    """Checks and splits a bench mode name (:func:`memrag.contexts.parse_context_mode`, K/V
    memory and cross-chunk recovery allowed).

    Raises:
        ValueError: naming the mode and what is wrong with it.
    """
    return parse_context_mode(name, memory=True, recovery=True)


@dataclass
class Prepared:
    """A mode's decoder input for one question.

    Attributes:
        batch: The one-row spliced prompt (with a cache holding its K/V memory, if any).
        prefilled: Decoder context positions the decoder computed for this question.
        cached: Positions read from stored K/V memory instead of computed.
    """

    batch: SpliceBatch
    prefilled: int = 0
    cached: int = 0


@dataclass
class OfflineCost:
    """What a mode stores and pre-computes per chunk.

    Attributes:
        bytes_per_chunk: Mean bytes of the mode's payload per chunk (0 for ``none``).
        offline_s_per_chunk: Mean seconds to pre-compute one chunk's payload.
    """

    bytes_per_chunk: float
    offline_s_per_chunk: float


Context = str | Slots | KVSlots


class ContextMode:
    """One way of giving the retrieved chunks to the decoder.

    Args:
        name: The mode's name.
        compressor: The compressor under test (its frozen decoder answers in every mode).
        cost: The mode's storage and pre-computation cost.
        fetch: Returns the contexts (text, slots or K/V memory) of chunk ids.
        recovery: Cross-chunk recovery for K/V memory (a ``RecoveryConfig``), or ``None``.
    """

    def __init__(
        self,
        name: str,
        compressor: Any,
        cost: OfflineCost,
        fetch: Callable[[Sequence[str]], list[Context]],
        *,
        recovery: Any = None,
    ) -> None:
        self.name = name
        self.compressor = compressor
        self.cost = cost
        self.fetch = fetch
        self.recovery = recovery

    def prepare(
        self, decoder: Any, question: str, chunk_ids: Sequence[str], timer: AnswerTimer
    ) -> Prepared:
        """Loads the chunks' payload (then calls ``timer.fetched()``) and builds the prompt."""
        from memrag.prompts import qa_prompt

        contexts = self.fetch(chunk_ids)
        timer.fetched()
        prompt = qa_prompt(self.compressor.tokenizer, contexts, question)
        if any(getattr(c, "packed_kv", False) for c in contexts):
            batch = self.compressor.build([prompt], recovery=self.recovery)
        else:
            batch = self.compressor.build([prompt])
        computed = batch.prefilled_lengths[0]
        return Prepared(batch=batch, prefilled=computed, cached=batch.prompt_lengths[0] - computed)
