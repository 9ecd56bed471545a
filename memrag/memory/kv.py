"""K/V memory of one chunk: per-layer keys and values of some of its positions.

Keys are stored *before* the rotary position embedding (as the model's key projection and
key norm produce them), so a chunk can be placed at any position of a prompt by applying the
rotary embedding once, at the position it takes there, in the model's own dtype: moving a
chunk costs no extra rounding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from memrag.memory.kinds import MemoryKind


@dataclass
class KVSlots:
    """Keys and values of the kept positions of one chunk (slot-major).

    Attributes:
        keys: ``(n, layers, kv_heads, head_dim)`` keys before the rotary embedding.
        values: ``(n, layers, kv_heads, head_dim)`` values.
        offsets: ``(n, layers)`` position of each kept entry inside the chunk, per layer
            (increasing down each column). Every column is ``0 .. n-1`` for ``kv-exact``.
        span: Prompt positions the chunk occupies (its token count); text after it
            continues at ``start + span`` whatever was pruned.
        kind: ``"kv-exact"``, ``"kv-pruned"`` or ``"kv"``.
        fingerprint: What made it (base model and memory settings); consumers refuse
            memory whose fingerprint is not their store's.
        num_tokens: Text tokens of the chunk.
        text: The chunk's text, when known (a store attaches it): cross-chunk recovery
            re-tokenizes it to recompute positions.
    """

    keys: torch.Tensor
    values: torch.Tensor
    offsets: torch.Tensor
    span: int
    kind: MemoryKind = MemoryKind.KV_EXACT
    fingerprint: str = ""
    num_tokens: int = 0
    text: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.kind = MemoryKind.parse(self.kind)
        if self.keys.dim() != 4 or self.keys.shape != self.values.shape:
            raise ValueError(
                f"keys and values must both be (n, layers, kv_heads, head_dim), got "
                f"{tuple(self.keys.shape)} and {tuple(self.values.shape)}"
            )
        if tuple(self.offsets.shape) != tuple(self.keys.shape[:2]):
            raise ValueError(
                f"offsets must be (n, layers) = {tuple(self.keys.shape[:2])}, got "
                f"{tuple(self.offsets.shape)}"
            )
        if self.keys.shape[0] and (int(self.offsets.min()) < 0 or int(self.offsets.max()) >= self.span):
            raise ValueError(f"offsets must lie in [0, span={self.span})")

    @property
    def num_slots(self) -> int:
        """Cache entries the chunk adds to a prompt (kept positions)."""
        return int(self.keys.shape[0])

    @property
    def packed_kv(self) -> bool:
        """Whether this memory is keys and values spliced as a cache prefix (the kind's registry
        entry: always, for the K/V kinds)."""
        return self.kind.packed_kv

    @property
    def float16_bytes(self) -> int:
        """Bytes of the keys and values kept as float16 (offsets not counted)."""
        return (self.keys.numel() + self.values.numel()) * 2

    @property
    def num_layers(self) -> int:
        """Decoder layers covered."""
        return int(self.keys.shape[1])

    @property
    def keep_ratio(self) -> float:
        """Kept entries over the chunk's positions."""
        return self.num_slots / max(self.span, 1)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> "KVSlots":
        """A copy with keys and values moved / cast (offsets stay integers)."""
        return KVSlots(
            keys=self.keys.to(device=device, dtype=dtype),
            values=self.values.to(device=device, dtype=dtype),
            offsets=self.offsets.to(device=device),
            span=self.span,
            kind=self.kind,
            fingerprint=self.fingerprint,
            num_tokens=self.num_tokens,
            text=self.text,
        )

    @classmethod
    def consecutive(cls, keys: torch.Tensor, values: torch.Tensor, **fields: object) -> "KVSlots":
        """Memory whose entries sit at consecutive positions ``0 .. n-1`` (span ``n``): exact
        memory of ``n`` tokens, or compacted / trained memory of ``n`` entries.

        ``fields`` are the other attributes (``kind``, ``fingerprint``, ``num_tokens``, ``text``).
        """
        count, layers = keys.shape[:2]
        return cls(
            keys=keys,
            values=values,
            offsets=consecutive_offsets(count, layers, keys.device),
            span=max(count, 1),
            **fields,  # type: ignore[arg-type]
        )

    def compacted(self) -> "KVSlots":
        """A copy whose entries sit at consecutive positions ``0 .. n-1`` (span ``n``)."""
        offsets = consecutive_offsets(self.num_slots, self.num_layers, self.offsets.device)
        return dataclasses.replace(self, offsets=offsets, span=max(self.num_slots, 1))

    @classmethod
    def concatenate(
        cls, pieces: "list[KVSlots]", *, fingerprint: str = "", num_tokens: int | None = None
    ) -> "KVSlots":
        """One text's memory from its segments' memory, entries at consecutive positions.

        Args:
            pieces: Memory of consecutive segments, in order (all of one kind).
            fingerprint: Recorded in the result.
            num_tokens: Text tokens covered (default: the pieces' sum).
        """
        if not pieces:
            raise ValueError("nothing to concatenate")
        keys = torch.cat([piece.keys for piece in pieces]) if len(pieces) > 1 else pieces[0].keys
        values = torch.cat([piece.values for piece in pieces]) if len(pieces) > 1 else pieces[0].values
        return cls.consecutive(
            keys,
            values,
            kind=pieces[0].kind,
            fingerprint=fingerprint,
            num_tokens=sum(piece.num_tokens for piece in pieces) if num_tokens is None else num_tokens,
        )

    def select(self, rows: torch.Tensor, *, merge: bool = False) -> "KVSlots":
        """The entries ``rows`` (``(m, layers)`` indices into each layer's column), as a pruned copy.

        With ``merge``, each kept entry's value becomes the mean of its own value and those of
        the dropped entries nearest to it (per layer), so what was dropped is summarised rather
        than lost; keys are kept as they are.
        """
        gather = rows.unsqueeze(-1).unsqueeze(-1).expand(-1, -1, *self.keys.shape[2:])
        values = (
            _merged_values(self.values, self.offsets, rows) if merge else torch.gather(self.values, 0, gather)
        )
        return KVSlots(
            keys=torch.gather(self.keys, 0, gather),
            values=values,
            offsets=torch.gather(self.offsets, 0, rows),
            span=self.span,
            kind=MemoryKind.KV_PRUNED.value,
            fingerprint=self.fingerprint,
            num_tokens=self.num_tokens,
            text=self.text,
        )


def consecutive_offsets(count: int, layers: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(count, layers)`` offsets ``0 .. count-1`` in every layer's column."""
    return torch.arange(count, device=device).unsqueeze(1).expand(count, layers).clone()


def _merged_values(values: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Per layer, each kept row's value averaged with the dropped rows nearest to it."""
    count, layers = rows.shape
    merged = torch.empty((count, *values.shape[1:]), dtype=values.dtype, device=values.device)
    for layer in range(layers):
        kept = offsets[rows[:, layer], layer].float()  # (m,) ascending
        every = offsets[:, layer].float()  # (n,)
        owner = (every.unsqueeze(1) - kept.unsqueeze(0)).abs().argmin(dim=1)  # nearest kept
        column = values[:, layer].float().reshape(values.shape[0], -1)
        sums = torch.zeros((count, column.shape[1]), dtype=torch.float32, device=values.device)
        sums.index_add_(0, owner, column)
        sizes = torch.bincount(owner, minlength=count).clamp(min=1).unsqueeze(1).float()
        merged[:, layer] = (sums / sizes).reshape(count, *values.shape[2:]).to(values.dtype)
    return merged
