"""The context modes the benchmark compares: how the retrieved chunks reach the decoder.

Every mode turns (question, retrieved chunk ids) into a :class:`~memrag.splice.SpliceBatch`
for the same frozen decoder, with the same prompt wording (:func:`memrag.prompts.qa_parts`,
through :func:`memrag.training.objectives.qa_prompt` as fine-tuning and ``memrag eval qa``
use it); the runner decodes it greedily. A mode's :meth:`ContextMode.prepare` is part of the
measured time: it loads the mode's stored payload of the chunks (and marks that moment on the
timer), then assembles the prompt.

* ``text``: the chunks' text (classic RAG, the baseline);
* ``slots`` / ``kv-slots``: the chunks' memory slots from the store (embedding or K/V slots,
  as the compressor under test makes; only one of the two exists per compressor);
* ``full-kv``: the chunks' pre-computed key/value caches (:mod:`memrag.bench.full_kv`);
* ``truncated``: each chunk's text cut to as many tokens as it has slots
  (:func:`memrag.eval.qa.truncated_context`), computed offline;
* ``none``: no context.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from memrag.bench.full_kv import FullKVStore, KeyRotation, Positions, prefix_cache
from memrag.bench.timing import AnswerTimer
from memrag.prompts import qa_parts
from memrag.slots import Slots
from memrag.splice import SpliceBatch

logger = logging.getLogger(__name__)

#: Every mode, in report order.
MODES: tuple[str, ...] = ("text", "slots", "kv-slots", "full-kv", "truncated", "none")


@dataclass
class Prepared:
    """A mode's decoder input for one question.

    Attributes:
        batch: The one-row spliced prompt (all positions, cached ones included).
        past_key_values: A cache holding the first positions of the prompt, or ``None``.
        prefilled: Decoder context positions the decoder has to prefill.
        cached: Positions loaded from a pre-computed cache instead of prefilled.
    """

    batch: SpliceBatch
    past_key_values: Any = None
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


class ContextMode:
    """One way of giving the retrieved chunks to the decoder.

    Args:
        name: The mode's name (one of :data:`MODES`).
        compressor: The compressor under test (its frozen decoder answers in every mode).
        cost: The mode's storage and pre-computation cost.
    """

    def __init__(self, name: str, compressor: Any, cost: OfflineCost) -> None:
        self.name = name
        self.compressor = compressor
        self.cost = cost

    def prepare(
        self, decoder: Any, question: str, chunk_ids: Sequence[str], timer: AnswerTimer
    ) -> Prepared:
        """Loads the chunks' payload (then calls ``timer.fetched()``) and builds the prompt."""
        raise NotImplementedError


class SplicedMode(ContextMode):
    """A mode whose contexts are text or slots, spliced through ``inputs_embeds``.

    Args:
        name: The mode's name.
        compressor: The compressor under test.
        cost: The mode's storage and pre-computation cost.
        fetch: Returns the contexts (text or :class:`~memrag.slots.Slots`) of chunk ids.
    """

    def __init__(
        self,
        name: str,
        compressor: Any,
        cost: OfflineCost,
        fetch: Callable[[Sequence[str]], list[str | Slots]],
    ) -> None:
        super().__init__(name, compressor, cost)
        self.fetch = fetch

    def prepare(
        self, decoder: Any, question: str, chunk_ids: Sequence[str], timer: AnswerTimer
    ) -> Prepared:
        from memrag.training.objectives import qa_prompt

        contexts = self.fetch(chunk_ids)
        timer.fetched()
        batch = self.compressor.build([qa_prompt(self.compressor.tokenizer, contexts, question)])
        return Prepared(batch=batch, prefilled=batch.prompt_lengths[0])


class FullKVMode(ContextMode):
    """The ``full-kv`` mode: the chunks' stored caches as a ``past_key_values`` prefix.

    Args:
        compressor: The compressor under test (its decoder computed the caches).
        cost: The mode's storage and pre-computation cost.
        store: The pre-computed caches.
        positions: ``"reorder"`` or ``"composite"`` rotary positions.
        decoder: The decoder (to check that its keys can be re-rotated).
    """

    def __init__(
        self,
        compressor: Any,
        cost: OfflineCost,
        store: FullKVStore,
        *,
        positions: Positions,
        decoder: Any,
    ) -> None:
        super().__init__("full-kv", compressor, cost)
        self.store = store
        self.rotation = KeyRotation(decoder)
        if positions == "reorder" and not self.rotation.available:
            logger.warning(
                "cannot re-rotate %s keys; full-kv uses composite positions", type(decoder).__name__
            )
            positions = "composite"
        self.positions: Positions = positions
        # The BOS token's cache is the same for every prompt: held in memory like a system prompt.
        bos = store.load_bos()
        self.head = [bos] if bos is not None else []

    def prepare(
        self, decoder: Any, question: str, chunk_ids: Sequence[str], timer: AnswerTimer
    ) -> Prepared:
        chunks = self.store.load(chunk_ids)
        timer.fetched()
        cache, prefix_ids = prefix_cache(
            decoder, self.head + chunks, positions=self.positions, rotation=self.rotation
        )
        splicer = self.compressor.splicer
        embeddings = splicer.token_embeddings
        with torch.inference_mode():
            prefix = embeddings(prefix_ids.to(embeddings.weight.device))
            tail = splicer.embed_prompt(qa_parts([], question), add_bos=False)
        inputs = torch.cat([prefix, tail], dim=0).unsqueeze(0)
        length = inputs.shape[1]
        mask = torch.ones((1, length), dtype=torch.long, device=inputs.device)
        batch = SpliceBatch(
            inputs_embeds=inputs,
            attention_mask=mask,
            position_ids=torch.arange(length, device=inputs.device).unsqueeze(0),
            labels=None,
            prompt_lengths=[length],
        )
        return Prepared(
            batch=batch, past_key_values=cache, prefilled=tail.shape[0], cached=prefix.shape[0]
        )
