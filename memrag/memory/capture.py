"""Computing K/V memory with the frozen decoder: pre-rotary keys and values of token runs.

:func:`capture_kv` runs the decoder over batches of token sequences (each after an optional
shared context, such as the BOS token) and returns, for every position of each sequence, the
keys *before* the rotary embedding and the values, per layer. Keys are read from each
layer's key projection (and key norm) through forward hooks; on the first batch for a model
they are checked against the cache the model itself wrote (rotated to the same positions they
must be equal), so a model whose attention does something else is refused instead of served
wrong memory.

Attention weights, when asked for, are reduced layer by layer as they are produced (the full
``heads x n x n`` tensors are never kept): this is what query-agnostic pruning scores need
(:mod:`memrag.memory.pruning`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from memrag.memory.anatomy import DecoderAnatomy, UnsupportedModelError, decoder_anatomy

#: ``reduce(layer, weights)`` gets one layer's attention ``(batch, heads, q, k)`` in float32.
AttentionReducer = Callable[[int, torch.Tensor], None]


@dataclass
class CapturedKV:
    """Keys and values of one sequence's positions.

    Attributes:
        keys: ``(n, layers, kv_heads, head_dim)`` before the rotary embedding.
        values: ``(n, layers, kv_heads, head_dim)``.
    """

    keys: torch.Tensor
    values: torch.Tensor


@contextlib.contextmanager
def eager_attention(decoder: Any) -> Iterator[None]:
    """Switches ``decoder`` to eager attention (which returns its weights) for the block."""
    previous = decoder.config._attn_implementation
    if previous == "eager":
        yield
        return
    decoder.set_attn_implementation("eager")
    try:
        yield
    finally:
        decoder.set_attn_implementation(previous)


@contextlib.contextmanager
def _hooks(
    anatomy: DecoderAnatomy, keys: list[torch.Tensor | None], reducer: AttentionReducer | None
) -> Iterator[None]:
    handles = []

    def key_hook(layer: int) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: torch.Tensor) -> None:
            keys[layer] = output

        return hook

    def attention_hook(layer: int) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError("attention weights requested but the layer returned none")
            reducer(layer, weights.float())  # type: ignore[misc]

        return hook

    try:
        for layer, attention in enumerate(anatomy.attentions):
            handles.append(attention.k_proj.register_forward_hook(key_hook(layer)))
            if reducer is not None:
                handles.append(attention.register_forward_hook(attention_hook(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _pre_rotary(anatomy: DecoderAnatomy, layer: int, projected: torch.Tensor) -> torch.Tensor:
    """``k_proj`` output ``(b, t, kv_heads * head_dim)`` -> ``(b, t, kv_heads, head_dim)`` pre-rotary keys."""
    batch, length = projected.shape[:2]
    keys = projected.view(batch, length, anatomy.num_kv_heads, anatomy.head_dim)
    norm = getattr(anatomy.attentions[layer], "k_norm", None)
    return norm(keys) if norm is not None else keys


def forward_capture(
    decoder: Any,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor,
    *,
    reducer: AttentionReducer | None = None,
    start: int = 0,
    inputs_embeds: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One backbone pass over a padded batch; returns per-layer pre-rotary keys and values.

    Both are ``(batch, length, kv_heads, head_dim)``. With ``reducer`` the attention weights of
    each layer are passed to it (the caller must have switched to eager attention). Gradients
    flow when the caller has them enabled (a K/V compressor's encoder trains through this).

    Args:
        decoder: The causal LM (frozen decoder, or a compressor's encoder with its adapter).
        input_ids: Right-padded token ids (``None`` when ``inputs_embeds`` are given).
        attention_mask: ``(batch, length)`` 1 on real positions.
        reducer: Receives each layer's attention weights.
        start: Rotary position of the first column (when ``position_ids`` are not given).
        inputs_embeds: Input embeddings instead of ``input_ids`` (any padding side).
        position_ids: ``(batch, length)`` positions (default: ``start ..`` on every row).
    """
    from transformers import DynamicCache

    anatomy = decoder_anatomy(decoder)
    raw: list[torch.Tensor | None] = [None] * anatomy.num_layers
    cache = DynamicCache()
    reference = input_ids if input_ids is not None else inputs_embeds
    assert reference is not None, "input_ids or inputs_embeds is required"
    if position_ids is None:
        positions = torch.arange(start, start + reference.shape[1], device=reference.device)
        position_ids = positions.unsqueeze(0).expand(reference.shape[0], -1)
    with _hooks(anatomy, raw, reducer):
        anatomy.backbone(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
    keys = [_pre_rotary(anatomy, layer, tensor) for layer, tensor in enumerate(raw)]  # type: ignore[arg-type]
    values = [layer.values.transpose(1, 2) for layer in cache.layers]
    if not anatomy.verified:
        with torch.no_grad():
            _verify_rotation(anatomy, keys, cache, position_ids[0], attention_mask)
        anatomy.verified = True
    return keys, values


def _verify_rotation(
    anatomy: DecoderAnatomy,
    keys: list[torch.Tensor],
    cache: Any,
    positions: torch.Tensor,
    attention_mask: torch.Tensor,
) -> None:
    real = attention_mask[0].bool()
    for layer in range(anatomy.num_layers):
        cached = cache.layers[layer].keys[0][:, real]  # (kv_heads, n, head_dim)
        mine = anatomy.rotate(keys[layer][0].transpose(0, 1)[:, real], positions[real], layer)
        scale = cached.float().abs().max().clamp(min=1e-6)
        error = float((mine.float() - cached.float()).abs().max() / scale)
        if error > 1e-2:
            raise UnsupportedModelError(
                f"{type(anatomy.backbone).__name__}: keys re-rotated from the key projection "
                f"differ from the cached keys at layer {layer} (relative error {error:.3g}); "
                "this model's attention cannot hold K/V memory"
            )


def right_padded(
    sequences: Sequence[Sequence[int]], context: Sequence[int], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``context + sequence`` per row, right-padded: ``(input_ids, attention_mask)``."""
    width = len(context) + max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tokens = list(context) + list(sequence)
        input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return input_ids, mask


def capture_kv(
    decoder: Any,
    sequences: Sequence[Sequence[int]],
    *,
    context: Sequence[int] = (),
    batch_size: int = 8,
    pad_token_id: int = 0,
    start: int = 0,
) -> list[CapturedKV]:
    """Pre-rotary keys and values of every position of each sequence, computed after ``context``.

    Sequences are length-sorted and run in right-padded batches (a causal model's real
    positions never see the padding after them). Results are on the CPU in the decoder's dtype.

    Args:
        decoder: The frozen causal LM (in decoder mode).
        sequences: Token ids; each must be non-empty.
        context: Tokens before every sequence (e.g. ``[bos]``), at positions ``0 ..``; their
            own keys and values are not returned.
        batch_size: Sequences per forward pass.
        pad_token_id: Id used for right padding.
        start: Rotary position of the first context token (pre-rotary keys do not depend
            on it: rotary attention sees only distances).
    """
    if any(len(s) == 0 for s in sequences):
        raise ValueError("cannot compute the K/V of an empty token sequence")
    device = decoder.get_input_embeddings().weight.device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
    head = list(context)
    results: dict[int, CapturedKV] = {}
    with torch.inference_mode():
        for begin in range(0, len(order), batch_size):
            batch = order[begin : begin + batch_size]
            input_ids, mask = right_padded([sequences[i] for i in batch], head, pad_token_id)
            keys, values = forward_capture(
                decoder, input_ids.to(device), mask.to(device), start=start
            )
            for row, index in enumerate(batch):
                span = slice(len(head), len(head) + len(sequences[index]))
                results[index] = CapturedKV(
                    keys=torch.stack([k[row, span] for k in keys], dim=1).cpu(),
                    values=torch.stack([v[row, span] for v in values], dim=1).cpu(),
                )
    return [results[i] for i in range(len(sequences))]


__all__ = [
    "AttentionReducer",
    "CapturedKV",
    "UnsupportedModelError",
    "capture_kv",
    "eager_attention",
    "forward_capture",
    "right_padded",
]
