"""How much an error in a stored key or value moves what the decoder computes from it, per layer
and direction: the weights a transform codec's steps follow (:mod:`memrag.memory.transform_calibration`).

* Keys: an error ``dk`` in a key moves the attention logit of every query head sharing its K/V
  head by ``scaling * q . dk`` (before the rotary embedding, as keys are stored); its mean
  square is ``dk^T K dk`` with ``K = scaling^2 * sum over those heads of E[q q^T]`` — queries
  measured where the frozen decoder forms them on calibration text. A logit error means the
  same to the softmax in every layer, so key steps share one scale. (Averaging ``K`` over the
  rotary turn between a query and a key, as a question reads a chunk from a few to hundreds of
  positions away, measured worse: docs/RESULTS.md, "Transform codec".)
* Values: an error ``dv`` reaches the residual stream as ``W_o dv`` for each query head sharing
  the K/V head: ``dv^T V dv`` with ``V = sum of W_o,h^T W_o,h``, taken relative to the
  layer's mean attention output energy (every layer's output is normalised before it joins
  the residual stream, as Gemma's post-attention norm does), so a value error is weighed as a
  share of what the layer writes.

Both are block-diagonal over K/V heads: ``(layers, channels, channels)``, ``channels =
kv_heads * head_dim``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from memrag.memory.kv import KVSlots


@dataclass(frozen=True)
class AttentionSensitivity:
    """Quadratic forms weighing key and value errors (see the module docstring).

    Attributes:
        keys: ``(layers, channels, channels)`` float64: logit error energy per key error.
        values: ``(layers, channels, channels)`` float64: relative output error energy per
            value error.
    """

    keys: torch.Tensor
    values: torch.Tensor

    def weights(self, part: int, bases: torch.Tensor) -> torch.Tensor:
        """``(layers, channels)``: the weight of each basis direction (``bases``:
        ``(layers, channels, channels)``, directions in columns) for keys (``part`` 0) or values."""
        form = (self.keys if part == 0 else self.values).to(bases.dtype)
        return torch.einsum("lci,lcd,ldi->li", bases, form, bases).clamp(min=1e-20)


def measure_sensitivity(
    decoder: Any, texts_ids: Sequence[torch.Tensor], memories: Sequence[KVSlots]
) -> AttentionSensitivity:
    """Measures :class:`AttentionSensitivity` of ``decoder`` over token sequences ``texts_ids``
    (``(1, length)`` each, with whatever context they need) and the K/V ``memories`` of the
    same texts (their values set each layer's output energy)."""
    from memrag.memory.anatomy import decoder_anatomy

    anatomy = decoder_anatomy(decoder)
    layers, heads_kv, width = anatomy.num_layers, anatomy.num_kv_heads, anatomy.head_dim
    channels = heads_kv * width
    sums = torch.zeros((layers, channels, channels), dtype=torch.float64)
    count = 0
    captured: list[torch.Tensor | None] = [None] * layers

    def hook(layer: int) -> Any:
        def record(module: Any, args: Any, output: torch.Tensor) -> None:
            captured[layer] = output.detach()

        return record

    handles = [a.q_proj.register_forward_hook(hook(i)) for i, a in enumerate(anatomy.attentions)]
    try:
        with torch.no_grad():
            for ids in texts_ids:
                decoder(input_ids=ids, use_cache=False)
                for layer, attention in enumerate(anatomy.attentions):
                    queries = captured[layer]
                    assert queries is not None
                    heads = queries.shape[-1] // width
                    shaped = queries.reshape(-1, heads, width)
                    norm = getattr(attention, "q_norm", None)
                    if norm is not None:
                        shaped = norm(shaped)
                    scaling = float(getattr(attention, "scaling", width**-0.5))
                    group = heads // heads_kv
                    q = shaped.double() * scaling
                    for kv in range(heads_kv):
                        block = q[:, kv * group : (kv + 1) * group].reshape(-1, width)
                        span = slice(kv * width, (kv + 1) * width)
                        sums[layer, span, span] += block.T @ block
                count += int(ids.shape[-1])
    finally:
        for handle in handles:
            handle.remove()
    keys = sums / max(count, 1)
    values = torch.zeros_like(keys)
    stacked = torch.cat([m.values.detach().to("cpu", torch.float64).reshape(m.num_slots, layers, -1) for m in memories])
    for layer, attention in enumerate(anatomy.attentions):
        weight = attention.o_proj.weight.detach().double()  # (hidden, heads * width)
        heads = weight.shape[1] // width
        group = heads // heads_kv
        for kv in range(heads_kv):
            span = slice(kv * width, (kv + 1) * width)
            for head in range(kv * group, (kv + 1) * group):
                part = weight[:, head * width : (head + 1) * width]
                values[layer, span, span] += part.T @ part
        energy = torch.einsum("nc,cd,nd->n", stacked[:, layer], values[layer], stacked[:, layer]).mean()
        values[layer] /= energy.clamp(min=1e-20)
    return AttentionSensitivity(keys=keys, values=values)
