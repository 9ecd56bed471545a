"""Orthonormal Hadamard rotations of attention heads, for quantizing keys and values per token.

A head's key or value often has a few channels far larger than the rest, so quantizing a token
over its channels wastes most codes on them. Rotating the head by an orthonormal Hadamard matrix
spreads every channel over all of them (QuaRot, arXiv 2404.00456), and rotating back after
decoding returns the original basis; dot products are unchanged.
"""

from __future__ import annotations

import functools

import torch


def hadamard_block(width: int) -> int:
    """The largest power of two dividing ``width``: the block of the rotation of a head."""
    if width < 1:
        raise ValueError(f"a head needs at least one channel, got {width}")
    return width & -width


@functools.lru_cache(maxsize=8)
def _sylvester(size: int) -> torch.Tensor:
    """The ``size`` x ``size`` orthonormal Sylvester Hadamard matrix (``size`` a power of two)."""
    matrix = torch.ones(1, 1, dtype=torch.float64)
    while matrix.shape[0] < size:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return (matrix / size**0.5).to(torch.float32)


def rotate_heads(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (``(..., head_dim)``, float32) with each head rotated block-wise.

    The rotation is block-diagonal: blocks of :func:`hadamard_block` channels, each turned by
    the same Sylvester Hadamard matrix. The matrix is symmetric and orthonormal, so it is its
    own inverse: rotating twice gives ``tensor`` back.
    """
    width = tensor.shape[-1]
    block = hadamard_block(width)
    matrix = _sylvester(block).to(tensor.device)
    shaped = tensor.reshape(*tensor.shape[:-1], width // block, block)
    return (shaped @ matrix).reshape(tensor.shape)
