"""Growing a trained compressor's LoRA adapter to a larger rank, keeping what it learned.

A compressor trained at one rate may need more adapter capacity at a smaller one. Training a
fresh rank-32 adapter throws the trained one away; growing keeps it: the new adapter's first
``old_rank`` directions are the trained ones and the others start with a zero ``lora_B``, so the
grown compressor computes exactly what the trained one did until it is trained further (the
new ``lora_A`` rows keep peft's random initialisation, so the new directions get gradients).
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from memrag.compressor.model import Compressor
from memrag.models.loading import BaseModel

logger = logging.getLogger(__name__)


def grown_alpha(compressor: Compressor, rank: int) -> int:
    """The LoRA alpha that keeps ``compressor``'s adapter scale (alpha / rank) at ``rank``."""
    config = compressor.config
    alpha = config.lora_alpha * rank / config.lora_rank
    if alpha != int(alpha):
        raise ValueError(
            f"rank {rank} cannot keep the adapter scale {config.lora_alpha}/{config.lora_rank} with "
            "an integer alpha; pass the alpha explicitly"
        )
    return int(alpha)


def grow_lora_rank(compressor: Compressor, base: BaseModel, rank: int, *, alpha: int | None = None) -> Compressor:
    """A compressor over ``base`` whose rank-``rank`` adapter extends ``compressor``'s.

    Args:
        compressor: The trained compressor (left unchanged).
        base: A freshly loaded base model of the same kind as ``compressor``'s (it is wrapped
            in place by the new adapter, so it cannot be the one ``compressor`` already wraps).
        rank: The new LoRA rank, at least the current one.
        alpha: The new LoRA alpha; ``None`` keeps the adapter scale (alpha / rank). With
            another alpha the trained directions are rescaled so the output is unchanged.

    Returns:
        The grown compressor: same settings, memory and task embeddings, and the same output
        as ``compressor`` until trained.

    Raises:
        ValueError: ``rank`` is below the current rank.
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    old = compressor.config
    if rank < old.lora_rank:
        raise ValueError(f"LoRA rank {rank} is below the compressor's {old.lora_rank}: an adapter can only grow")
    alpha = grown_alpha(compressor, rank) if alpha is None else alpha
    config = dataclasses.replace(old, lora_rank=rank, lora_alpha=alpha)
    grown = Compressor(base, config, seed=0)
    scale = (old.lora_alpha / old.lora_rank) / (alpha / rank)
    trained = get_peft_model_state_dict(compressor.peft_model)
    state = {}
    for key, fresh in get_peft_model_state_dict(grown.peft_model).items():
        weights = trained[key].to(device=fresh.device, dtype=fresh.dtype)
        extended = fresh.detach().clone()
        if ".lora_A." in key:
            extended[: old.lora_rank] = weights
        elif ".lora_B." in key:
            extended.zero_()
            extended[:, : old.lora_rank] = weights * scale
        else:
            raise ValueError(f"unexpected adapter tensor {key!r}: only LoRA A/B matrices can be grown")
        state[key] = extended
    set_peft_model_state_dict(grown.peft_model, state)
    with torch.no_grad():
        grown.memory_embeddings.copy_(compressor.memory_embeddings)
        grown.task_embeddings.copy_(compressor.task_embeddings)
    grown.invalidate_fingerprint()
    logger.info("LoRA rank %d -> %d (alpha %d -> %d)", old.lora_rank, rank, old.lora_alpha, alpha)
    return grown
