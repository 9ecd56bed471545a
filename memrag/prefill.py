"""The K/V splice: prompts mixing text, embedding slots and K/V memory -> cache prefix + decoder inputs.

Two steps, as the design brief asks:

1. **Plan** (:meth:`KVPrefill.plan`): each prompt is embedded into runs
   (:meth:`memrag.splice.Splicer.embed_runs`) and laid out in rotary positions. A K/V part
   starting at position ``s`` puts each kept entry at ``s + offset``; the text after it
   continues at ``s + span`` whatever was pruned. The prompt ends with a *tail* that is left
   to ``generate``: the text after the last K/V part for a single prompt, the last position
   for a batch (so no padding ever sits inside a row).
2. **Prefill** (:meth:`KVPrefill.build`): each K/V part's keys are rotated to their positions
   (:meth:`DecoderAnatomy.rotate`, the model's own arithmetic) and written into the cache;
   then the remaining text before the tail (the BOS token, separators between passages,
   embedding slots, recomputed tokens) runs through the decoder in **one** batched forward
   with explicit position ids and a custom mask, so each of those tokens sees exactly the
   cached entries and tokens before it (within the sliding window, on sliding layers).
   Each row's cache is then sorted by position, rows are left-padded to the longest cache, and
   the result is a :class:`~memrag.splice.SpliceBatch` whose ``cache`` holds every position
   but the tail's.

Chunks cached on their own never attend to each other; :mod:`memrag.memory.recovery` can
recompute some of their tokens in the same forward pass.

A run of plain text at the very start of a prompt (the BOS token and ``"Passage: "``) is the
same for every query: its memory is computed once and kept (``memo``), so a one-passage
prompt costs a single decoder call (``generate``'s).

Sliding-window layers: ``generate`` masks them by cache *entries*, not positions, and the
prefill forward does the same, so a prompt's tokens and the generated ones see one window.
That is exactly the text's window for ``kv-exact`` (no gaps); with pruned memory a window of
``W`` entries reaches further back than ``W`` positions.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from memrag.memory.anatomy import DecoderAnatomy, decoder_anatomy
from memrag.memory.capture import capture_kv
from memrag.memory.kinds import MemoryKind
from memrag.memory.kv import KVSlots
from memrag.splice import IGNORE_INDEX, EmbeddedRun, PromptPart, SpliceBatch, Splicer

Tail = Literal["run", "last"]


@dataclass
class _Entries:
    """Cache entries of one row before the prefill forward, per layer (rotated, decoder dtype)."""

    keys: list[list[torch.Tensor]]
    values: list[list[torch.Tensor]]
    positions: list[list[torch.Tensor]]

    @classmethod
    def empty(cls, layers: int) -> "_Entries":
        return cls([[] for _ in range(layers)], [[] for _ in range(layers)], [[] for _ in range(layers)])

    def stacked(self, layer: int, anatomy: DecoderAnatomy, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.keys[layer]:
            shape = (anatomy.num_kv_heads, 0, anatomy.head_dim)
            empty = like.new_zeros(shape)
            return empty, empty, torch.zeros(0, dtype=torch.long, device=like.device)
        return (
            torch.cat(self.keys[layer], dim=1),
            torch.cat(self.values[layer], dim=1),
            torch.cat(self.positions[layer]),
        )

    def count(self) -> int:
        return sum(int(p.shape[0]) for p in self.positions[0]) if self.positions else 0


@dataclass
class RowPlan:
    """One prompt laid out in positions.

    Attributes:
        entries: K/V memory, rotated into place.
        early: Embeddings the prefill forward computes (before the tail), with positions.
        early_positions: Their rotary positions.
        tail: Embeddings left to ``generate``.
        tail_positions: Their positions.
        total: Prompt positions (cached ones included).
        computed: Positions the decoder runs for this prompt (early + tail + memo misses).
        cached: Cache entries the prompt's K/V parts bring.
        parts: ``(start position, memory, index of its tensors in each layer's entry list)``
            of every K/V part (a memoised leading run included), in prompt order.
        run_tokens: Token ids of memoised leading runs, by entry index.
    """

    entries: _Entries
    early: torch.Tensor
    early_positions: torch.Tensor
    tail: torch.Tensor
    tail_positions: torch.Tensor
    total: int
    computed: int = 0
    cached: int = 0
    parts: list[tuple[int, KVSlots, int]] = field(default_factory=list)
    run_tokens: dict[int, tuple[int, ...]] = field(default_factory=dict)


#: One row's cache: keys and values per layer ``(kv_heads, entries, head_dim)`` sorted by
#: position, and the entries' positions (layer 0's).
_RowCache = tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]


def _sorted_by_position(layers: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> _RowCache:
    """Each layer's entries ``(keys, values, positions)`` sorted by position."""
    keys, values = [], []
    for layer_keys, layer_values, positions in layers:
        order = torch.argsort(positions)
        keys.append(layer_keys[:, order])
        values.append(layer_values[:, order])
    return keys, values, torch.sort(layers[0][2]).values


class KVPrefill:
    """Builds decoder inputs and a cache prefix from prompts holding K/V memory.

    Call it with the decoder in decoder mode (the compressor's adapter disabled).

    Args:
        decoder: The frozen causal LM.
        splicer: The splicer (tokenizer, embeddings, task markers) of the same model.
        memo: Where the memory of leading text runs is kept between calls (``None``: not kept).
        memo_size: Leading runs kept at most.
        recovery: A :class:`~memrag.memory.recovery.RecoveryConfig` (or ``Recovery``) that
            recomputes some cached tokens with attention to the chunks before them (``None``:
            off).
    """

    def __init__(
        self,
        decoder: Any,
        splicer: Splicer,
        *,
        memo: "collections.OrderedDict[tuple[int, ...], KVSlots] | None" = None,
        memo_size: int = 16,
        memo_lock: threading.Lock | None = None,
        recovery: Any = None,
    ) -> None:
        self.decoder = decoder
        self.splicer = splicer
        self.anatomy = decoder_anatomy(decoder)
        self.memo = memo
        self.memo_size = memo_size
        self._memo_lock = memo_lock or threading.Lock()
        from memrag.memory.recovery import Recovery, RecoveryConfig

        self.recovery = Recovery(recovery) if isinstance(recovery, RecoveryConfig) else recovery
        weight = splicer.token_embeddings.weight
        self.device = weight.device
        self.dtype = weight.dtype

    # ------------------------------------------------------------------ planning
    def _leading_memory(self, run: EmbeddedRun) -> tuple[KVSlots, int]:
        """The (memoised) K/V memory of a plain-text run at the start of a prompt, and the
        positions computed to make it now (0 when it was kept from an earlier call)."""
        key = run.token_ids
        assert key is not None
        with self._memo_lock:
            if self.memo is not None and key in self.memo:
                self.memo.move_to_end(key)
                return self.memo[key], 0
        tokenizer = self.splicer.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        (captured,) = capture_kv(self.decoder, [list(key)], pad_token_id=pad)
        span = len(key)
        memory = KVSlots.consecutive(
            captured.keys, captured.values, kind=MemoryKind.KV_EXACT.value, num_tokens=span
        )
        if self.memo is not None:
            with self._memo_lock:
                self.memo[key] = memory
                while len(self.memo) > self.memo_size:
                    self.memo.popitem(last=False)
        return memory, span

    def _add_entries(self, entries: _Entries, memory: KVSlots, start: int) -> int:
        """Rotates ``memory`` into place at ``start``; returns its index in the entry lists."""
        anatomy = self.anatomy
        if memory.num_layers != anatomy.num_layers:
            raise ValueError(
                f"K/V memory has {memory.num_layers} layers, the decoder {anatomy.num_layers}"
            )
        if tuple(memory.keys.shape[2:]) != (anatomy.num_kv_heads, anatomy.head_dim):
            raise ValueError(
                f"K/V memory has heads x head_dim {tuple(memory.keys.shape[2:])}, the decoder "
                f"{(anatomy.num_kv_heads, anatomy.head_dim)}"
            )
        keys = memory.keys.to(device=self.device, dtype=self.dtype)
        values = memory.values.to(device=self.device, dtype=self.dtype)
        if torch.is_grad_enabled() and keys.is_inference():
            # Memo entries made in inference mode join a differentiable cache (training).
            keys, values = keys.clone(), values.clone()
        offsets = memory.offsets.to(device=self.device)
        for layer in range(anatomy.num_layers):
            positions = start + offsets[:, layer]
            layer_keys = keys[:, layer].transpose(0, 1)  # (kv_heads, n, head_dim)
            entries.keys[layer].append(anatomy.rotate(layer_keys, positions, layer))
            entries.values[layer].append(values[:, layer].transpose(0, 1))
            entries.positions[layer].append(positions)
        return len(entries.positions[0]) - 1

    def plan(self, parts: Sequence[PromptPart], tail: Tail) -> RowPlan:
        """Lays out one prompt (see the module docstring)."""
        runs = self.splicer.embed_runs(parts)
        if isinstance(runs[-1], KVSlots):
            raise ValueError(
                "a prompt cannot end with K/V memory: the text that follows it (e.g. the "
                "question) must come last"
            )
        first_kv = next((i for i, r in enumerate(runs) if isinstance(r, KVSlots)), None)
        entries = _Entries.empty(self.anatomy.num_layers)
        early: list[torch.Tensor] = []
        early_positions: list[torch.Tensor] = []
        position = 0
        computed = 0
        cached = 0
        placed: list[tuple[int, KVSlots, int]] = []
        run_tokens: dict[int, tuple[int, ...]] = {}
        last = len(runs) - 1
        for index, run in enumerate(runs):
            if isinstance(run, KVSlots):
                placed.append((position, run, self._add_entries(entries, run, position)))
                cached += run.num_slots
                position += run.span
                continue
            positions = torch.arange(position, position + run.length, device=self.device)
            if index == last:
                cut = run.length if tail == "run" else 1
                tail_embeds, tail_positions = run.embeds[-cut:], positions[-cut:]
                if run.length > cut:
                    early.append(run.embeds[:-cut])
                    early_positions.append(positions[:-cut])
                    computed += run.length - cut
                computed += cut
            elif index == 0 and first_kv == 1 and run.token_ids is not None:
                memory, made_now = self._leading_memory(run)
                computed += made_now
                placed.append((position, memory, self._add_entries(entries, memory, position)))
                run_tokens[placed[-1][2]] = run.token_ids
            else:
                early.append(run.embeds)
                early_positions.append(positions)
                computed += run.length
            position += run.length
        limit = getattr(self.decoder.config, "max_position_embeddings", None)
        if limit and position > int(limit):
            raise ValueError(
                f"the prompt takes {position} positions (its K/V memory included), more than the "
                f"decoder's context ({limit}); retrieve fewer or shorter chunks"
            )
        hidden = self.splicer.token_embeddings.weight.shape[-1]
        return RowPlan(
            entries=entries,
            early=torch.cat(early) if early else tail_embeds.new_zeros((0, hidden)),
            early_positions=torch.cat(early_positions)
            if early_positions
            else torch.zeros(0, dtype=torch.long, device=self.device),
            tail=tail_embeds,
            tail_positions=tail_positions,
            total=position,
            computed=computed,
            cached=cached,
            parts=placed,
            run_tokens=run_tokens,
        )

    # ------------------------------------------------------------------ prefill
    def _masks(
        self,
        query_ranks: torch.Tensor,
        query_valid: torch.Tensor,
        key_ranks: torch.Tensor,
        key_valid: torch.Tensor,
        entries_before: int,
    ) -> Any:
        """Float masks ``(batch, 1, queries, keys)`` per layer type.

        ``*_ranks`` are each column's index in its row's position order: causality follows
        positions, and a sliding window spans ``W`` cache entries, as ``generate`` counts it
        (the same thing without pruning; with pruned memory, the prompt and the generated
        tokens then see the same window).
        """
        q = query_ranks.unsqueeze(-1)
        k = key_ranks.unsqueeze(1)
        base = key_valid.unsqueeze(1) & (k <= q)
        rows = torch.arange(query_ranks.shape[1], device=self.device)
        masks: dict[str, torch.Tensor] = {}
        minimum = torch.finfo(self.dtype).min
        for layer_type, window in dict(zip(self.anatomy.layer_types, self.anatomy.windows)).items():
            allowed = base if window is None else base & (q - k < window)
            allowed = allowed.clone()
            # A padding query sees only itself (a row with no key at all would be undefined).
            allowed[:, rows, entries_before + rows] |= ~query_valid
            mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
            masks[layer_type] = mask.masked_fill_(~allowed, minimum).unsqueeze(1)
        if self.anatomy.mask_by_type:
            return masks
        return next(iter(masks.values()))

    def _prefill(self, plans: list[RowPlan]) -> list[_RowCache]:
        """Runs every row's early embeddings in one forward; returns each row's sorted cache.

        Per row: keys and values per layer ``(kv_heads, entries, head_dim)`` and the entries'
        positions (of layer 0).
        """
        from transformers import DynamicCache

        anatomy = self.anatomy
        layers = anatomy.num_layers
        like = self.splicer.token_embeddings.weight
        stacked = [[p.entries.stacked(layer, anatomy, like) for layer in range(layers)] for p in plans]
        counts = [int(rows[0][2].shape[0]) for rows in stacked]
        longest_entries = max(counts)
        longest_early = max(int(p.early.shape[0]) for p in plans)
        batch = len(plans)
        if longest_early == 0:
            return [_sorted_by_position(rows) for rows in stacked]
        heads, dim = anatomy.num_kv_heads, anatomy.head_dim
        cache = DynamicCache()
        key_positions = torch.zeros((batch, longest_entries), dtype=torch.long, device=self.device)
        key_valid = torch.zeros((batch, longest_entries), dtype=torch.bool, device=self.device)
        for row, count in enumerate(counts):
            if count:
                key_positions[row, longest_entries - count :] = stacked[row][0][2]
                key_valid[row, longest_entries - count :] = True
        for layer in range(layers):
            keys = like.new_zeros((batch, heads, longest_entries, dim))
            values = like.new_zeros((batch, heads, longest_entries, dim))
            for row, count in enumerate(counts):
                if count:
                    keys[row, :, longest_entries - count :] = stacked[row][layer][0]
                    values[row, :, longest_entries - count :] = stacked[row][layer][1]
            cache.update(keys, values, layer)
        hidden = like.shape[-1]
        embeds = like.new_zeros((batch, longest_early, hidden))
        early_positions = torch.zeros((batch, longest_early), dtype=torch.long, device=self.device)
        early_valid = torch.zeros((batch, longest_early), dtype=torch.bool, device=self.device)
        for row, plan in enumerate(plans):
            length = int(plan.early.shape[0])
            embeds[row, :length] = plan.early
            early_positions[row, :length] = plan.early_positions
            early_valid[row, :length] = True
        all_positions = torch.cat([key_positions, early_positions], dim=1)
        all_valid = torch.cat([key_valid, early_valid], dim=1)
        # Rank of each column among its row's valid columns, in position order.
        sortable = all_positions.masked_fill(~all_valid, torch.iinfo(torch.long).max)
        ranks = torch.argsort(torch.argsort(sortable, dim=1, stable=True), dim=1, stable=True)
        mask = self._masks(
            ranks[:, longest_entries:], early_valid, ranks, all_valid, longest_entries
        )
        self.anatomy.backbone(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=early_positions,
            cache=cache,
            use_cache=True,
        )
        valid = torch.cat([key_valid, early_valid], dim=1)
        results = []
        for row, rows in enumerate(stacked):
            keep = valid[row]
            # Kept columns: the row's entries (right-aligned), then its early tokens.
            merged = [
                (
                    cache.layers[layer].keys[row][:, keep],
                    cache.layers[layer].values[row][:, keep],
                    torch.cat([rows[layer][2], plans[row].early_positions]),
                )
                for layer in range(layers)
            ]
            results.append(_sorted_by_position(merged))
        return results

    def build(
        self,
        prompts: Sequence[Sequence[PromptPart]],
        *,
        tail: Tail | None = None,
        targets: Sequence[Sequence[int]] | None = None,
    ) -> SpliceBatch:
        """Splices ``prompts`` into a batch whose ``cache`` holds all but each row's tail.

        Args:
            prompts: Prompts, any of which may hold K/V memory.
            tail: ``"run"`` leaves the text after the last K/V part to ``generate``; ``"last"``
                only the last position. Default: ``"run"`` for one prompt, ``"last"`` for more.
            targets: Token ids each prompt must be followed by (training): they join each
                row's tail (``"run"``), the batch gets ``labels`` on them, and, with gradients
                enabled, the cache stays differentiable with respect to the K/V memory (a K/V
                compressor trains through it). Rows' tails may then differ in length: each
                is right-aligned after its cache, with masked padding between.
        """
        if not prompts:
            raise ValueError("no prompts to splice")
        if targets is not None and len(targets) != len(prompts):
            raise ValueError(f"{len(targets)} targets for {len(prompts)} prompts")
        tail = "run" if targets is not None else tail or ("run" if len(prompts) == 1 else "last")
        differentiable = targets is not None and torch.is_grad_enabled()
        with contextlib.nullcontext() if differentiable else torch.inference_mode():
            plans = [self.plan(parts, tail) for parts in prompts]
            if targets is not None:
                for plan, target in zip(plans, targets):
                    self._append_target(plan, target)
            if self.recovery is not None:
                self.recovery.apply(self, plans)
            rows = self._prefill(plans)
            return self._assemble(plans, rows, targets)

    def _append_target(self, plan: RowPlan, target: Sequence[int]) -> None:
        """Teacher forcing: ``target``'s embeddings continue the row's tail."""
        if not target:
            raise ValueError("a training target must hold at least one token")
        ids = torch.tensor(list(target), dtype=torch.long, device=self.device)
        embeds = self.splicer.token_embeddings(ids).to(self.dtype)
        after = int(plan.tail_positions[-1]) + 1
        plan.tail = torch.cat([plan.tail, embeds])
        plan.tail_positions = torch.cat(
            [plan.tail_positions, torch.arange(after, after + len(ids), device=self.device)]
        )

    def _assemble(
        self,
        plans: list[RowPlan],
        rows: list[_RowCache],
        targets: Sequence[Sequence[int]] | None = None,
    ) -> SpliceBatch:
        from transformers import DynamicCache

        anatomy = self.anatomy
        like = self.splicer.token_embeddings.weight
        batch = len(plans)
        counts = [int(row[2].shape[0]) for row in rows]
        cached = max(counts)
        tails = [int(p.tail.shape[0]) for p in plans]
        tail = max(tails)
        if targets is None and batch > 1 and any(length != tail for length in tails):
            raise ValueError("a batch of prompts with K/V memory needs tails of one length")
        cache = DynamicCache()
        for layer in range(anatomy.num_layers):
            keys = like.new_zeros((batch, anatomy.num_kv_heads, cached, anatomy.head_dim))
            values = like.new_zeros((batch, anatomy.num_kv_heads, cached, anatomy.head_dim))
            for index, (row_keys, row_values, _) in enumerate(rows):
                if counts[index]:
                    keys[index, :, cached - counts[index] :] = row_keys[layer]
                    values[index, :, cached - counts[index] :] = row_values[layer]
            cache.update(keys, values, layer)
        length = cached + tail
        inputs = like.new_zeros((batch, length, like.shape[-1]))
        mask = torch.zeros((batch, length), dtype=torch.long, device=self.device)
        positions = torch.zeros((batch, length), dtype=torch.long, device=self.device)
        labels = None
        if targets is not None:
            labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long, device=self.device)
        for index, plan in enumerate(plans):
            start = length - tails[index]
            inputs[index, start:] = plan.tail
            mask[index, cached - counts[index] : cached] = 1
            mask[index, start:] = 1
            positions[index, start:] = plan.tail_positions
            if labels is not None and targets is not None:
                target = torch.tensor(list(targets[index]), dtype=torch.long, device=self.device)
                labels[index, length - len(target) :] = target
        return SpliceBatch(
            inputs_embeds=inputs,
            attention_mask=mask,
            position_ids=positions,
            labels=labels,
            prompt_lengths=[p.total for p in plans],
            cache=cache,
            prefilled_lengths=[p.computed for p in plans],
        )
