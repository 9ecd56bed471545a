"""Faster linear layers for batched decoding steps on a CPU: oneDNN with prepacked weights.

A decoding step multiplies a few rows (one per sequence) by every weight matrix of the model.
On a CPU, PyTorch's default float32 ``linear`` (MKL's ``sgemm``) can cost nearly as much per
row as one matrix-vector product each (on AMD processors in particular), so decoding 4 rows
took 2.5x the time of 1 on the project's machine; oneDNN's ``linear`` on weights packed once
for it costs little more for 4 rows than for 1. :class:`PackedLinears` packs the frozen
decoder's weights on first use and routes the model's ``nn.Linear`` layers through oneDNN
while active.

Results differ from the default kernels by float32 rounding only (about 1e-6 relative), as
any change of batch size already does. The packed copies take as much memory again as the
weights they copy. They are made for a frozen model: weights changed afterwards are not seen.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Batch size oneDNN is told to pack the weights for.
PACK_FOR_ROWS = 8


def packed_linears_supported(model: nn.Module) -> bool:
    """Whether :class:`PackedLinears` can serve ``model``: float32 weights on a CPU with oneDNN."""
    try:
        weight = next(model.parameters())
    except StopIteration:
        return False
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class PackedLinears:
    """oneDNN-packed copies of a model's linear weights, swapped in by :meth:`active`.

    Only plain ``nn.Linear`` layers outside LoRA adapters are packed (the decoder runs with
    its adapter disabled). Use :meth:`active` only while holding the lock that guards the
    model (the compressor's decoder lock): other users of the model must not see the swap.

    Args:
        model: The decoder (float32, on a CPU; see :func:`packed_linears_supported`).
    """

    def __init__(self, model: nn.Module) -> None:
        if not packed_linears_supported(model):
            raise ValueError("packed linears need float32 weights on a CPU with oneDNN")
        self.model = model
        self._packed: dict[nn.Linear, torch.Tensor] | None = None

    def _layers(self) -> list[nn.Linear]:
        return [
            module
            for name, module in self.model.named_modules()
            if type(module) is nn.Linear and "lora_" not in name
        ]

    def pack(self) -> None:
        """Packs the weights now (done on first use otherwise)."""
        if self._packed is not None:
            return
        with torch.no_grad():
            self._packed = {
                layer: torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), PACK_FOR_ROWS)
                for layer in self._layers()
            }
        size = sum(layer.weight.numel() for layer in self._packed) * 4
        logger.info("packed %d linear layers for oneDNN (%.0f MB)", len(self._packed), size / 2**20)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Routes the packed layers through oneDNN for the duration of the block."""
        self.pack()
        assert self._packed is not None
        for layer, packed in self._packed.items():
            layer.forward = _packed_forward(packed, layer.bias)  # type: ignore[method-assign]
        try:
            yield
        finally:
            for layer in self._packed:
                del layer.forward


def _packed_forward(packed: torch.Tensor, bias: torch.Tensor | None) -> Any:
    def forward(hidden: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(hidden.contiguous(), packed, bias, "none", [], "")

    return forward
