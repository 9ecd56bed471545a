"""Query-agnostic pruning of a chunk's K/V memory: which positions to keep, chosen offline.

Selections (``PruningConfig.selection``):

* ``"kvzip"`` (KVzip, arXiv 2505.23416): the decoder reads the chunk, then a "repeat the
  context" prompt and the chunk again; a position's score is the largest attention it receives
  from any head while the decoder re-reads (reconstructs) the chunk.
* ``"prefill"`` (H2O-style, arXiv 2306.14048): the attention a position receives, summed over
  the chunk's own queries and averaged over heads, during the chunk's prefill.
* ``"stride"``: evenly spaced positions (no scores).

Refinements, each measured (see ``docs/KV_MEMORY.md``): always keep the first ``sinks`` and
the last ``recent`` positions; max-pool each score over ``pool`` neighbouring positions
(SnapKV, arXiv 2404.14469); choose positions per layer (``per_layer``) or one set for all
layers; average dropped values into the nearest kept ones (``merge``); place the kept entries
at consecutive positions (``compact``, the default) or at their original offsets. Every layer
keeps ``ceil(keep_ratio * n)`` positions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from memrag.memory.capture import CapturedKV, eager_attention, forward_capture, right_padded

SELECTIONS = ("kvzip", "prefill", "stride")
#: The prompt KVzip-style scoring puts between the chunk and its repetition.
REPEAT_PROMPT = "\n\nRepeat the previous context exactly.\n"


@dataclass
class PruningConfig:
    """Which positions of a chunk ``kv-pruned`` memory keeps.

    Args:
        keep_ratio: Fraction of positions kept per layer, in (0, 1]; 0.25 is the budget of
            rate-4 slots.
        selection: ``"kvzip"``, ``"prefill"`` or ``"stride"`` (see the module docstring).
        sinks: The first ``sinks`` positions of the chunk are always kept.
        recent: The last ``recent`` positions are always kept.
        pool: Max-pool scores over this many neighbouring positions (odd; 1: off).
        per_layer: Each layer keeps its own best positions (else one set for all layers).
        compact: Place the kept entries at consecutive positions (the chunk then spans as many
            positions as it keeps entries), instead of at their original offsets (``False``).
            On by default: it answered better in the measurements (``docs/KV_MEMORY.md``).
        merge: Average each dropped position's value into the nearest kept position's (per
            layer), so dropped tokens are summarised rather than lost.
    """

    keep_ratio: float = 0.25
    selection: str = "kvzip"
    sinks: int = 0
    recent: int = 0
    pool: int = 1
    per_layer: bool = True
    compact: bool = True
    merge: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < float(self.keep_ratio) <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.selection not in SELECTIONS:
            raise ValueError(
                f"selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}"
            )
        if self.sinks < 0 or self.recent < 0:
            raise ValueError("sinks and recent must be >= 0")
        if self.pool < 1 or self.pool % 2 == 0:
            raise ValueError(f"pool must be an odd number >= 1, got {self.pool}")
        self.keep_ratio = float(self.keep_ratio)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningConfig":
        """From JSON; unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown pruning settings {unknown}")
        return cls(**data)

    def budget(self, length: int) -> int:
        """Positions kept of a chunk of ``length`` positions."""
        return max(1, min(length, math.ceil(self.keep_ratio * length - 1e-9)))


def select_positions(scores: torch.Tensor, config: PruningConfig) -> torch.Tensor:
    """Kept rows ``(m, layers)``, ascending in each column, from scores ``(n, layers)``."""
    length, layers = scores.shape
    keep = config.budget(length)
    if config.selection == "stride" or keep >= length:
        rows = torch.linspace(0, length - 1, keep).round().long() if keep < length else torch.arange(length)
        return rows.unsqueeze(1).expand(keep, layers).clone()
    work = scores.float().clone()
    if config.pool > 1:
        work = F.max_pool1d(work.t().unsqueeze(1), config.pool, stride=1, padding=config.pool // 2)
        work = work.squeeze(1).t()
    if not config.per_layer:
        shared = (work / work.sum(dim=0, keepdim=True).clamp(min=1e-12)).mean(dim=1, keepdim=True)
        work = shared.expand(length, layers).clone()
    forced = torch.zeros(length, dtype=torch.bool)
    forced[: min(config.sinks, length)] = True
    if config.recent:
        forced[-min(config.recent, length) :] = True
    work[forced] = float("inf")
    rows = torch.topk(work, keep, dim=0).indices
    return torch.sort(rows, dim=0).values


class _Scores:
    """Collects per-layer scores of a right-padded batch from attention weights."""

    def __init__(self, selection: str, lengths: list[int], head: int, repeat: int, layers: int, device: Any) -> None:
        self.selection = selection
        self.lengths = lengths
        self.head = head
        self.repeat = repeat
        self.values = [torch.zeros(n, layers) for n in lengths]

    def __call__(self, layer: int, weights: torch.Tensor) -> None:
        for row, n in enumerate(self.lengths):
            keys = slice(self.head, self.head + n)
            if self.selection == "prefill":
                # Attention received from the chunk's own queries, averaged over heads.
                received = weights[row, :, self.head : self.head + n, keys].sum(dim=1).mean(dim=0)
            else:
                # The most attention any head pays it while the chunk is re-read.
                reread = slice(self.head + n, self.head + 2 * n + self.repeat)
                received = weights[row, :, reread, keys].amax(dim=(0, 1))
            self.values[row][:, layer] = received.cpu()


def score_and_capture(
    decoder: Any,
    sequences: Sequence[Sequence[int]],
    config: PruningConfig,
    *,
    context: Sequence[int] = (),
    repeat_ids: Sequence[int] = (),
    batch_size: int = 8,
    pad_token_id: int = 0,
) -> list[tuple[CapturedKV, torch.Tensor]]:
    """Keys, values and per-layer position scores ``(n, layers)`` of each sequence.

    One eager-attention forward per batch does both: the chunk's own K/V are unaffected by
    what follows them (causal attention), so the re-reading KVzip needs costs one pass.
    """
    from memrag.memory.anatomy import decoder_anatomy

    layers = decoder_anatomy(decoder).num_layers
    device = decoder.get_input_embeddings().weight.device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
    head = len(context)
    results: dict[int, tuple[CapturedKV, torch.Tensor]] = {}
    with torch.inference_mode(), eager_attention(decoder):
        for begin in range(0, len(order), batch_size):
            batch = order[begin : begin + batch_size]
            lengths = [len(sequences[i]) for i in batch]
            rows = [list(sequences[i]) for i in batch]
            if config.selection == "kvzip":
                rows = [seq + list(repeat_ids) + seq for seq in rows]
            input_ids, mask = right_padded(rows, context, pad_token_id)
            scores = _Scores(config.selection, lengths, head, len(repeat_ids), layers, device)
            keys, values = forward_capture(decoder, input_ids.to(device), mask.to(device), reducer=scores)
            for row, index in enumerate(batch):
                span = slice(head, head + lengths[row])
                captured = CapturedKV(
                    keys=torch.stack([k[row, span] for k in keys], dim=1).cpu(),
                    values=torch.stack([v[row, span] for v in values], dim=1).cpu(),
                )
                results[index] = (captured, scores.values[row])
    return [results[i] for i in range(len(sequences))]
