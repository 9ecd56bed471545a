"""The encoder of a ``slot_kind="kv"`` compressor: segments -> per-layer keys and values.

The encoder is the base model with the compressor's LoRA adapter. A segment's slots are the
pre-rotary keys and the values, at every layer, of some of the encoder's positions
(:attr:`~memrag.compressor.config.CompressorConfig.kv_positions`):

* ``"memory"`` (500xCompressor): ``ceil(n / rate)`` learned memory tokens appended after the
  segment's ``n`` tokens; their keys and values are the slots.
* ``"subset"`` (KV-Distill): ``ceil(n / rate)`` of the segment's own positions. Before any
  training (LoRA starts as the identity) these are exactly the frozen decoder's own keys and
  values of those positions, i.e. pruned K/V memory. Which positions
  (:attr:`~memrag.compressor.config.CompressorConfig.kv_selection`): the last token of each
  group of ``rate`` tokens (``"stride"``), or per layer the best-scored by the frozen decoder
  reading the segment (``"prefill"``, ``"kvzip"``: the scoring of
  :mod:`memrag.memory.pruning`), optionally with the segment's salient tokens (digits,
  capitalised words: :mod:`memrag.memory.salience`) forced into every layer, at most half
  of the slots (``"prefill-salient"``, ``"kvzip-salient"``).

The slots are :class:`~memrag.memory.kv.KVSlots` of kind ``"kv"`` at consecutive positions,
spliced through the same K/V prefill as exact and pruned memory
(:class:`~memrag.prefill.KVPrefill`); gradients reach the adapter and the memory
embeddings when they are enabled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from memrag.memory.capture import forward_capture
from memrag.memory.kinds import MemoryKind
from memrag.memory.kv import KVSlots
from memrag.splice import left_padded, position_ids_from_mask

if TYPE_CHECKING:
    from memrag.protocols import MemoryMaker


def encoder_rows(compressor: MemoryMaker, ids: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """One segment's encoder input embeddings and the row indices its slots are read at.

    ``[BOS] + segment`` (``+ memory tokens`` when the slots are read there).
    """
    config = compressor.config
    embed = compressor.token_embeddings
    weight = embed.weight
    bos = compressor.tokenizer.bos_token_id
    prefix = ([bos] if bos is not None else []) + list(ids)
    text = embed(torch.tensor(prefix, dtype=torch.long, device=weight.device))
    count = config.slots_for(len(ids))
    if config.uses_memory_tokens:
        memory = compressor.memory_embeddings[:count].to(dtype=weight.dtype)
        return torch.cat([text, memory], dim=0), list(range(len(prefix), len(prefix) + count))
    first = len(prefix) - len(ids)
    return text, [first + position for position in config.slot_positions(len(ids))]


def scored_positions(compressor: MemoryMaker, segments: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """For a scored ``kv_selection``: each segment's kept positions per layer, ``(slots, layers)``.

    The frozen decoder (adapter disabled, no gradient) reads each segment after BOS, as
    ``kv-pruned`` memory is scored; every layer keeps its ``ceil(n / rate)`` best positions,
    in ascending order. A ``*-salient`` selection first forces the segment's salient tokens
    (at most half of its slots, at least one) into every layer.
    """
    from memrag.memory.pruning import REPEAT_PROMPT, PruningConfig, score_and_capture
    from memrag.memory.salience import force_rows, forced_salient_rows

    config = compressor.config
    tokenizer = compressor.tokenizer
    selection = config.position_scoring
    context = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    repeat = list(tokenizer(REPEAT_PROMPT, add_special_tokens=False)["input_ids"]) if selection == "kvzip" else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with compressor.decoder_mode() as decoder:
        scored = score_and_capture(
            decoder, segments, PruningConfig(selection=selection), context=context,
            repeat_ids=repeat, batch_size=max(1, len(segments)), pad_token_id=pad,
        )
    chosen = []
    for ids, (_, scores) in zip(segments, scored):
        count = config.slots_for(len(ids))
        if config.forces_salient:
            scores = force_rows(scores, forced_salient_rows(tokenizer, ids, scores, count))
        top = torch.topk(scores.float(), count, dim=0).indices
        chosen.append(torch.tensor(torch.sort(top, dim=0).values.tolist(), dtype=torch.long))
    return chosen


def encode_kv_segments(compressor: MemoryMaker, segments: Sequence[Sequence[int]]) -> list[KVSlots]:
    """K/V slots of each token segment (one left-padded encoder pass, gradients as enabled)."""
    rows, picks = [], []
    for ids in segments:
        compressor.check_segment(ids)
        row, pick = encoder_rows(compressor, ids)
        rows.append(row)
        picks.append(torch.tensor(pick, dtype=torch.long).unsqueeze(1))
    config = compressor.config
    if config.scores_positions:
        first = 1 if compressor.tokenizer.bos_token_id is not None else 0
        picks = [positions + first for positions in scored_positions(compressor, segments)]
    inputs, mask = left_padded(rows)
    length = inputs.shape[1]
    with compressor.encoder_mode():
        keys, values = forward_capture(
            compressor.causal_lm,
            None,
            mask,
            inputs_embeds=inputs,
            position_ids=position_ids_from_mask(mask),
        )
    results = []
    for i, (row, pick) in enumerate(zip(rows, picks)):
        # (slots, 1) rows shared by every layer, or (slots, layers) chosen per layer.
        index = pick.to(inputs.device) + (length - row.shape[0])
        column = [index[:, min(layer, index.shape[1] - 1)] for layer in range(len(keys))]
        results.append(
            KVSlots.consecutive(
                torch.stack([layer[i, column[n]] for n, layer in enumerate(keys)], dim=1),
                torch.stack([layer[i, column[n]] for n, layer in enumerate(values)], dim=1),
                kind=MemoryKind.KV.value,
                num_tokens=len(segments[i]),
            )
        )
    return results
