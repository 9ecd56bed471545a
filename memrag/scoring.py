"""Teacher-forced scoring with the frozen decoder: the likelihood of target tokens after a
spliced prompt. One implementation for training's objectives, ``memrag eval lm`` and the
store's quality gate (:mod:`memrag.store.fidelity`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from memrag.generation import cache_argument
from memrag.memory.kv import KVSlots
from memrag.memory.slots import Slots
from memrag.splice import IGNORE_INDEX, PromptPart

if TYPE_CHECKING:
    from memrag.protocols import DecodingModel


def encode_contexts(compressor: DecodingModel, contexts: Sequence[Sequence[Sequence[int]]]) -> list[Slots | KVSlots]:
    """Slots of each context given as its token segments, encoded in one batch (with grad)."""
    flat = [segment for segments in contexts for segment in segments]
    pieces = compressor.encode_segments(flat)
    result: list[Slots | KVSlots] = []
    cursor = 0
    for segments in contexts:
        mine = pieces[cursor : cursor + len(segments)]
        cursor += len(segments)
        result.append(compressor.join_segments(mine, sum(len(s) for s in segments)))
    return result


@dataclass
class TargetLogits:
    """Decoder logits on the target positions of a batch.

    Attributes:
        logits: ``(batch, positions, vocab)`` float32; position ``t`` predicts ``labels[:, t]``.
        labels: ``(batch, positions)`` target ids, ``IGNORE_INDEX`` where a row has none.
    """

    logits: torch.Tensor
    labels: torch.Tensor


def target_logits(
    compressor: DecodingModel,
    prompts: Sequence[Sequence[PromptPart]],
    targets: Sequence[Sequence[int]],
    *,
    keep: int | None = None,
    target_offsets: Sequence[int] | None = None,
) -> TargetLogits:
    """Logits of the frozen decoder that predict each row's target tokens (teacher forcing).

    Prompts go through :meth:`Compressor.build`, the one splice path: embedding slots and
    text as ``inputs_embeds``, K/V memory as a (differentiable) cache prefix. With
    ``target_offsets`` (rows of equal-length targets), only the logits predicting those
    target tokens are computed, ``labels`` holding just them. Otherwise only the logits
    of the last ``keep`` positions are computed (default ``max(len(target)) + 1``: the
    vocabulary projection dominates the cost of short targets after long prompts).
    """
    batch = compressor.build(prompts, [list(t) for t in targets], append_eos=False)
    assert batch.labels is not None
    cached = batch.cache.get_seq_length() if batch.cache is not None else 0
    length = batch.inputs_embeds.shape[1] - cached
    if target_offsets is not None:
        width = len(targets[0])
        if any(len(t) != width for t in targets) or not all(0 <= o < width for o in target_offsets):
            raise ValueError("target_offsets needs targets of one length and offsets inside them")
        offsets = torch.as_tensor(list(target_offsets), dtype=torch.long)
        positions = (length - width - 1 + offsets).to(batch.inputs_embeds.device)
        output = _decode(compressor, batch, cached, positions)
        labels = batch.labels[:, -width:][:, offsets.to(batch.labels.device)]
        return TargetLogits(output.logits.float(), labels)
    keep = min(keep or max(len(t) for t in targets) + 1, length)
    # Positions as an index tensor, not an int: HF then gathers a contiguous slice of the
    # hidden states, so the vocabulary projection is one matrix product. With an int it is a
    # strided view, and matmul falls back to a batched product that copies the (vocab x
    # hidden) weight once per row (seconds per step on CPU).
    positions = torch.arange(length - keep, length, device=batch.inputs_embeds.device)
    output = _decode(compressor, batch, cached, positions)
    return TargetLogits(output.logits[:, :-1].float(), batch.labels[:, -(keep - 1) :])


def _decode(compressor: DecodingModel, batch: Any, cached: int, positions: torch.Tensor) -> Any:
    """The frozen decoder over ``batch`` (after its cached prefix), logits at ``positions``."""
    inputs: dict[str, Any] = {}
    if batch.cache is not None:
        inputs[cache_argument(compressor.causal_lm)] = batch.cache
    with compressor.decoder_mode() as decoder:
        return decoder(
            inputs_embeds=batch.inputs_embeds[:, cached:],
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids[:, cached:],
            use_cache=False,
            logits_to_keep=positions,
            **inputs,
        )


def token_losses(student: TargetLogits) -> tuple[torch.Tensor, list[int]]:
    """Per-row sums of target-token cross-entropy, and target token counts."""
    logits, labels = student.logits, student.labels
    losses = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(labels.shape)
    return losses.sum(dim=1), (labels != IGNORE_INDEX).sum(dim=1).tolist()
