"""What the K/V path needs to know about a Hugging Face decoder, found once and checked.

K/V memory works for causal LMs whose layers have a ``self_attn`` module with a ``k_proj``
(and optionally a ``k_norm``, as Gemma 3 and Qwen 3 have), whose backbone has a
``rotary_emb`` covering the whole head, and whose attention is full or sliding-window
(Llama, Mistral, Qwen 2/3, Gemma 2/3 ...). Other models are refused with
:class:`UnsupportedModelError` naming what is missing.
"""

from __future__ import annotations

import inspect
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


class UnsupportedModelError(ValueError):
    """The model cannot hold K/V memory (no rotary positions, unknown attention layout ...)."""


@dataclass
class DecoderAnatomy:
    """The parts of a decoder the K/V path uses.

    Attributes:
        backbone: The transformer without its output head (``decoder.model``).
        attentions: Each layer's attention module.
        layer_types: ``"full_attention"`` or ``"sliding_attention"`` per layer.
        windows: Sliding window per layer (``None`` for full attention).
        num_kv_heads: Key/value heads per layer.
        head_dim: Width of a head.
        mask_by_type: Whether the backbone takes a ``{layer_type: mask}`` dict (models with
            ``layer_types``) rather than one 4-D mask.
    """

    backbone: nn.Module
    attentions: list[nn.Module]
    layer_types: list[str]
    windows: list[int | None]
    num_kv_heads: int
    head_dim: int
    mask_by_type: bool
    _rotary: nn.Module = field(repr=False)
    _rotate_half: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    _takes_layer_type: bool = field(repr=False, default=False)
    verified: bool = field(default=False, repr=False)

    @property
    def num_layers(self) -> int:
        """Decoder layers."""
        return len(self.attentions)

    def cos_sin(
        self, positions: torch.Tensor, layer: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's own rotary ``cos``/``sin`` (``(n, head_dim)``, in ``dtype``) at ``positions``."""
        probe = torch.zeros(1, dtype=dtype, device=positions.device)
        position_ids = positions.reshape(1, -1).long()
        if self._takes_layer_type:
            cos, sin = self._rotary(probe, position_ids, self.layer_types[layer])
        else:
            cos, sin = self._rotary(probe, position_ids)
        if cos.shape[-1] != self.head_dim:
            raise UnsupportedModelError(
                f"rotary width {cos.shape[-1]} != head dim {self.head_dim} (partial rotary "
                "embeddings are not supported)"
            )
        return cos[0], sin[0]

    def rotate(self, keys: torch.Tensor, positions: torch.Tensor, layer: int) -> torch.Tensor:
        """Applies the rotary embedding to pre-rotary ``keys`` (``(..., n, head_dim)``) at ``positions`` (``(n,)``).

        The arithmetic is the model's (``k * cos + rotate_half(k) * sin`` in the keys' dtype),
        so a key rotated here equals the key the model caches at that position.
        """
        cos, sin = self.cos_sin(positions, layer, keys.dtype)
        return keys * cos + self._rotate_half(keys) * sin


_CACHE: "weakref.WeakKeyDictionary[nn.Module, DecoderAnatomy]" = weakref.WeakKeyDictionary()


def decoder_anatomy(decoder: Any) -> DecoderAnatomy:
    """Finds (once per model) and checks the parts of ``decoder`` the K/V path uses.

    Raises:
        UnsupportedModelError: naming what the model lacks.
    """
    found = _CACHE.get(decoder)
    if found is not None:
        return found
    name = type(decoder).__name__
    backbone = getattr(decoder, "model", None)
    layers = getattr(backbone, "layers", None)
    rotary = getattr(backbone, "rotary_emb", None)
    if backbone is None or layers is None:
        raise UnsupportedModelError(f"{name} has no .model.layers: not a supported decoder-only LM")
    if rotary is None:
        raise UnsupportedModelError(
            f"{name} has no rotary position embedding (model.rotary_emb): K/V memory needs "
            "rotary positions to move cached keys"
        )
    rotate_half = getattr(sys.modules.get(type(decoder).__module__), "rotate_half", None)
    if rotate_half is None:
        raise UnsupportedModelError(f"{name}'s modeling module defines no rotate_half")
    attentions = []
    for index, layer in enumerate(layers):
        attention = getattr(layer, "self_attn", None)
        if attention is None or not hasattr(attention, "k_proj"):
            raise UnsupportedModelError(f"{name} layer {index} has no self_attn.k_proj")
        attentions.append(attention)
    config = decoder.config
    declared = list(getattr(config, "layer_types", None) or [])
    window = getattr(config, "sliding_window", None)
    if declared:
        unknown = sorted(set(declared) - {FULL_ATTENTION, SLIDING_ATTENTION})
        if unknown:
            raise UnsupportedModelError(f"{name} has attention layer types {unknown}")
        layer_types = declared[: len(attentions)]
    else:
        sliding = window is not None and getattr(config, "use_sliding_window", True)
        layer_types = [SLIDING_ATTENTION if sliding else FULL_ATTENTION] * len(attentions)
    windows = [int(window) if t == SLIDING_ATTENTION else None for t in layer_types]
    head_dim = int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )
    kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    anatomy = DecoderAnatomy(
        backbone=backbone,
        attentions=attentions,
        layer_types=layer_types,
        windows=windows,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        mask_by_type=bool(declared),
        _rotary=rotary,
        _rotate_half=rotate_half,
        _takes_layer_type="layer_type" in inspect.signature(rotary.forward).parameters,
    )
    _CACHE[decoder] = anatomy
    return anatomy
