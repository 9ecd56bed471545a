"""The decoding state of a batch whose rows come and go: cache, padding mask, next positions.

Rows are left-padded: every row's cache entries end at the last column, and each decoding
step appends one column for every row. Rows joining a running batch (their prompts prefilled
on their own) are merged in by left-padding whichever part is shorter; rows that finish are
selected out; columns that have become padding for every row are trimmed. Each row keeps its
own next rotary position (pruned K/V memory leaves gaps, so positions are not column
indices); the cache holds plain full-length layers (``DynamicCache()``), and sliding-window
layers are masked by cache entries, as ``generate`` masks them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from memrag.generation import cache_argument, prefill_ahead
from memrag.splice import SpliceBatch


def _layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(keys, values)`` of every layer, ``(batch, heads, columns, head_dim)`` each."""
    layers = []
    for index, layer in enumerate(cache.layers):
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor) or keys.dim() != 4:
            raise TypeError(
                f"cache layer {index} ({type(layer).__name__}) is not a plain key/value layer; "
                "the batched decoder needs DynamicCache() layers"
            )
        layers.append((keys, values))
    return layers


def _cache_of(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    cache = DynamicCache()
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache


def _pad_left(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    missing = columns - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


@dataclass
class DecodeState:
    """Cache and bookkeeping of the rows being decoded together.

    Attributes:
        cache: ``DynamicCache`` with one column per position seen (padding included).
        attention_mask: ``(rows, columns)``, 0 on padding.
        next_positions: ``(rows,)`` rotary position of each row's next token.
        next_tokens: ``(rows,)`` the token each row feeds to the next step.
    """

    cache: Any
    attention_mask: torch.Tensor
    next_positions: torch.Tensor
    next_tokens: torch.Tensor

    def __post_init__(self) -> None:
        columns = self.attention_mask.shape[1]
        for keys, _ in _layers(self.cache):
            if keys.shape[0] != self.rows or keys.shape[2] != columns:
                raise ValueError(
                    f"cache layer of shape {tuple(keys.shape)} does not match {self.rows} rows "
                    f"of {columns} columns"
                )

    @property
    def rows(self) -> int:
        """Rows in the batch."""
        return int(self.attention_mask.shape[0])

    @property
    def columns(self) -> int:
        """Cache columns (the longest row's context, padding included)."""
        return int(self.attention_mask.shape[1])

    def merge(self, other: DecodeState) -> DecodeState:
        """This batch's rows followed by ``other``'s, left-padded to one length."""
        columns = max(self.columns, other.columns)
        layers = [
            (
                torch.cat([_pad_left(k1, columns, 2), _pad_left(k2, columns, 2)]),
                torch.cat([_pad_left(v1, columns, 2), _pad_left(v2, columns, 2)]),
            )
            for (k1, v1), (k2, v2) in zip(_layers(self.cache), _layers(other.cache), strict=True)
        ]
        return DecodeState(
            cache=_cache_of(layers),
            attention_mask=torch.cat(
                [_pad_left(self.attention_mask, columns, 1), _pad_left(other.attention_mask, columns, 1)]
            ),
            next_positions=torch.cat([self.next_positions, other.next_positions]),
            next_tokens=torch.cat([self.next_tokens, other.next_tokens]),
        )

    def select(self, rows: list[int]) -> DecodeState | None:
        """The batch of ``rows`` only (``None`` when none is left), padding-only columns trimmed."""
        if not rows:
            return None
        index = torch.tensor(rows, dtype=torch.long, device=self.attention_mask.device)
        mask = self.attention_mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        layers = [
            (keys.index_select(0, index)[:, :, start:], values.index_select(0, index)[:, :, start:])
            for keys, values in _layers(self.cache)
        ]
        return DecodeState(
            cache=_cache_of(layers),
            attention_mask=mask[:, start:],
            next_positions=self.next_positions.index_select(0, index),
            next_tokens=self.next_tokens.index_select(0, index),
        )

    def step(self, decoder: Any) -> torch.Tensor:
        """Feeds every row its next token; returns the logits of the step ``(rows, vocab)``, float32.

        The state advances in place (one more column, next positions + 1); set
        :attr:`next_tokens` before the following step.
        """
        ones = self.attention_mask.new_ones((self.rows, 1))
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
        output = decoder(
            input_ids=self.next_tokens.unsqueeze(1),
            attention_mask=self.attention_mask,
            position_ids=self.next_positions.unsqueeze(1),
            use_cache=True,
            logits_to_keep=1,
            **{cache_argument(decoder): self.cache},
        )
        self.next_positions = self.next_positions + 1
        return output.logits[:, -1, :].float()

    @classmethod
    def prefill(
        cls, decoder: Any, batch: SpliceBatch, should_stop: Callable[[], bool] | None = None
    ) -> tuple[DecodeState, torch.Tensor]:
        """Runs the prompts of ``batch`` (from :meth:`memrag.compressor.Compressor.build`).

        A batch with a cache (K/V memory) computes only the positions the cache lacks, at
        their explicit positions; a long prompt is computed in pieces, asking ``should_stop``
        in between (:func:`~memrag.generation.prefill_ahead`, as the one-at-a-time path
        does). Returns the state (its :attr:`next_tokens` still to be set) and the logits of
        each row's last position ``(rows, vocab)``, float32.

        Raises:
            memrag.generation.PrefillStoppedError: ``should_stop`` returned ``True``.
        """
        batch = prefill_ahead(decoder, batch, should_stop=should_stop)
        cache = batch.cache if batch.cache is not None else DynamicCache()
        cached = cache.get_seq_length() if batch.cache is not None else 0
        output = decoder(
            inputs_embeds=batch.inputs_embeds[:, cached:],
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids[:, cached:],
            use_cache=True,
            logits_to_keep=1,
            **{cache_argument(decoder): cache},
        )
        rows = batch.inputs_embeds.shape[0]
        state = cls(
            cache=cache,
            attention_mask=batch.attention_mask.long(),
            next_positions=batch.position_ids[:, -1].long() + 1,
            next_tokens=torch.zeros(rows, dtype=torch.long, device=batch.attention_mask.device),
        )
        return state, output.logits[:, -1, :].float()
