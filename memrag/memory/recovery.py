"""Cross-chunk recovery for K/V memory: recompute the cached tokens that most need the other chunks.

Chunks cached on their own never attend to each other. CacheBlend (arXiv 2405.16444) recovers
most of what that costs by recomputing a few tokens of each chunk with attention to everything
before them. :class:`Recovery` does this inside the K/V prefill
(:class:`~memrag.prefill.KVPrefill`): the chosen tokens' cached entries are dropped and
the tokens join the prefill forward pass (as text at their own positions), so every later
position and the generated answer read their recomputed keys and values.

Which tokens (``RecoveryConfig.selection``):

* ``"deviation"`` (CacheBlend's rule): run the first decoder layer over the whole prompt as
  text (one layer of a full prefill), compute each cached token's layer-1 keys and values from
  it, and recompute the tokens whose cached layer-1 keys and values deviate most;
* ``"leading"``: the first tokens of each chunk (no extra pass).

Chunks after the first K/V chunk are recovered (the first has nothing before it to miss but the
prompt's opening text). Applies to ``kv-exact`` memory (pruned memory keeps different
positions per layer; its cached entries are left as they are).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from memrag.memory.anatomy import UnsupportedModelError
from memrag.memory.kinds import MemoryKind

RECOVERY_SELECTIONS = ("deviation", "leading")


@dataclass
class RecoveryConfig:
    """How much of each chunk to recompute, and how to choose it.

    Args:
        ratio: Fraction of each recovered chunk's tokens recomputed, in (0, 1].
        selection: ``"deviation"`` or ``"leading"`` (see the module docstring).
    """

    ratio: float = 0.15
    selection: str = "deviation"

    def __post_init__(self) -> None:
        if not 0.0 < float(self.ratio) <= 1.0:
            raise ValueError(f"recovery ratio must be in (0, 1], got {self.ratio}")
        if self.selection not in RECOVERY_SELECTIONS:
            raise ValueError(
                f"recovery selection must be one of {', '.join(RECOVERY_SELECTIONS)}, got "
                f"{self.selection!r}"
            )

    @classmethod
    def parse(cls, text: str) -> "RecoveryConfig":
        """``"cacheblend"``, ``"cacheblend:0.1"``, ``"cacheblend:0.1:leading"`` -> a config."""
        name, *settings = [piece.strip() for piece in text.split(":")]
        if name != "cacheblend":
            raise ValueError(f"unknown recovery {name!r}; use cacheblend[:ratio][:selection]")
        values: dict[str, Any] = {}
        for setting in settings:
            if setting in RECOVERY_SELECTIONS:
                values["selection"] = setting
            else:
                try:
                    values["ratio"] = float(setting)
                except ValueError:
                    raise ValueError(f"recovery {text!r}: cannot understand {setting!r}") from None
        return cls(**values)

    def label(self) -> str:
        """The form :meth:`parse` reads."""
        return f"cacheblend:{self.ratio:g}:{self.selection}"


class Recovery:
    """Applies a :class:`RecoveryConfig` to the rows of a K/V prefill."""

    def __init__(self, config: RecoveryConfig) -> None:
        self.config = config

    def apply(self, prefill: Any, plans: list[Any]) -> None:
        """Moves the chosen tokens of each row's chunks from its cache entries to its early tokens."""
        for plan in plans:
            chunks = [
                (start, memory, index)
                for start, memory, index in plan.parts
                if memory.kind == MemoryKind.KV_EXACT.value and memory.text is not None
            ]
            if len(chunks) < 2:
                continue
            token_ids = self._known_tokens(prefill, plan)
            chosen = self._choose(prefill, plan, chunks[1:], token_ids)
            embed = prefill.splicer.token_embeddings
            added_embeds, added_positions = [], []
            for (start, memory, index), rows in zip(chunks[1:], chosen):
                if rows.numel() == 0:
                    continue
                keep = torch.ones(memory.num_slots, dtype=torch.bool, device=prefill.device)
                keep[rows] = False
                entries = plan.entries
                for layer in range(len(entries.keys)):
                    entries.keys[layer][index] = entries.keys[layer][index][:, keep]
                    entries.values[layer][index] = entries.values[layer][index][:, keep]
                    entries.positions[layer][index] = entries.positions[layer][index][keep]
                ids = torch.tensor(token_ids[index], device=prefill.device)[rows]
                added_embeds.append(embed(ids).to(prefill.dtype))
                added_positions.append(start + rows)
                plan.computed += int(rows.numel())
                plan.cached -= int(rows.numel())
            if added_embeds:
                plan.early = torch.cat([plan.early, *added_embeds])
                plan.early_positions = torch.cat([plan.early_positions, *added_positions])

    @staticmethod
    def _known_tokens(prefill: Any, plan: Any) -> dict[int, list[int]]:
        """The tokens of every K/V part whose tokens are known (its text, or a leading run's ids)."""
        known: dict[int, list[int]] = {}
        for _, memory, index in plan.parts:
            if memory.text is not None:
                ids = prefill.splicer.tokenize(memory.text)
                if len(ids) != memory.span:
                    raise ValueError(
                        f"cannot recover K/V memory whose text has {len(ids)} tokens for a span "
                        f"of {memory.span}"
                    )
                known[index] = ids
            elif index in plan.run_tokens:
                known[index] = list(plan.run_tokens[index])
        return known

    def _choose(
        self, prefill: Any, plan: Any, chunks: list[tuple[int, Any, int]], token_ids: dict[int, list[int]]
    ) -> list[torch.Tensor]:
        counts = [max(1, math.ceil(self.config.ratio * memory.span - 1e-9)) for _, memory, _ in chunks]
        if self.config.selection == "leading":
            return [torch.arange(min(c, m.span), device=prefill.device) for c, (_, m, _) in zip(counts, chunks)]
        deviation = self._deviation(prefill, plan, chunks, token_ids)
        return [
            torch.sort(torch.topk(d, min(c, d.numel())).indices).values
            for c, d in zip(counts, deviation)
        ]

    def _deviation(
        self, prefill: Any, plan: Any, chunks: list[tuple[int, Any, int]], token_ids: dict[int, list[int]]
    ) -> list[torch.Tensor]:
        """Per chunk token: how far its cached layer-1 keys and values are from recomputing them
        with the whole prompt before it (CacheBlend's selection)."""
        anatomy = prefill.anatomy
        if anatomy.num_layers < 2:
            return [torch.zeros(m.span, device=prefill.device) for _, m, _ in chunks]
        layers = anatomy.backbone.layers
        first, second = layers[0], layers[1]
        attention = anatomy.attentions[1]
        for module, name in ((second, "input_layernorm"), (attention, "v_proj")):
            if not hasattr(module, name):
                raise UnsupportedModelError(f"cache recovery needs {name} in every decoder layer")
        # The whole prompt as text, in position order: early tokens and every K/V part's tokens.
        embed = prefill.splicer.token_embeddings
        pieces = [plan.early]
        positions = [plan.early_positions]
        for start, memory, index in plan.parts:
            if index not in token_ids:  # tokens unknown (memory without its text): left out
                continue
            ids = torch.tensor(token_ids[index], device=prefill.device)
            pieces.append(embed(ids).to(prefill.dtype))
            positions.append(start + torch.arange(memory.span, device=prefill.device))
        hidden = torch.cat(pieces).unsqueeze(0)
        where = torch.cat(positions)
        order = torch.argsort(where)
        hidden, where = hidden[:, order], where[order]
        length = where.numel()
        allowed = where.unsqueeze(0) <= where.unsqueeze(1)
        window = anatomy.windows[0]
        if window is not None:
            ranks = torch.arange(length, device=prefill.device)
            allowed &= (ranks.unsqueeze(1) - ranks.unsqueeze(0)) < window
        mask = torch.zeros((1, 1, length, length), dtype=prefill.dtype, device=prefill.device)
        mask.masked_fill_(~allowed, torch.finfo(prefill.dtype).min)
        cos, sin = anatomy.cos_sin(where, 0, prefill.dtype)
        out = first(
            hidden,
            position_embeddings=(cos.unsqueeze(0), sin.unsqueeze(0)),
            attention_mask=mask,
            position_ids=where.unsqueeze(0),
        )
        out = out[0] if isinstance(out, tuple) else out
        normed = second.input_layernorm(out)[0]
        keys = attention.k_proj(normed).view(length, anatomy.num_kv_heads, anatomy.head_dim)
        norm = getattr(attention, "k_norm", None)
        keys = norm(keys) if norm is not None else keys
        values = attention.v_proj(normed).view(length, anatomy.num_kv_heads, anatomy.head_dim)
        results = []
        for start, memory, index in chunks:
            columns = torch.searchsorted(where, start + torch.arange(memory.span, device=prefill.device))
            cached_k = memory.keys[:, 1].to(device=prefill.device, dtype=torch.float32)
            cached_v = memory.values[:, 1].to(device=prefill.device, dtype=torch.float32)
            delta_k = (keys[columns].float() - cached_k).flatten(1).norm(dim=1)
            delta_v = (values[columns].float() - cached_v).flatten(1).norm(dim=1)
            scale_k = cached_k.flatten(1).norm(dim=1).clamp(min=1e-6)
            scale_v = cached_v.flatten(1).norm(dim=1).clamp(min=1e-6)
            results.append(delta_k / scale_k + delta_v / scale_v)
        return results
