"""The memory of one text: its slots and what is needed to splice them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from memrag.memory.kinds import MemoryKind


@dataclass
class Slots:
    """Memory slots of one text.

    Attributes:
        tensor: ``(num_slots, hidden_size)`` for ``embedding`` slots.
        kind: ``"embedding"`` or ``"kv"``.
        fingerprint: Fingerprint of the compressor that made them; consumers refuse slots whose
            fingerprint differs from their compressor's.
        num_tokens: Number of text tokens that were compressed.
        segment_slot_counts: Slots contributed by each segment, in order.
    """

    tensor: torch.Tensor
    kind: MemoryKind = MemoryKind.EMBEDDING
    fingerprint: str = ""
    num_tokens: int = 0
    segment_slot_counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kind = MemoryKind.parse(self.kind)

    @property
    def num_slots(self) -> int:
        """Number of slots (decoder context positions they take)."""
        return int(self.tensor.shape[0])

    @property
    def packed_kv(self) -> bool:
        """Whether this memory is keys and values (never, for embedding slots; the kind's
        registry entry)."""
        return self.kind.packed_kv

    @property
    def float16_bytes(self) -> int:
        """Bytes of the slots kept as float16."""
        return self.tensor.numel() * 2

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Slots":
        """A copy with the tensor moved / cast."""
        return Slots(
            tensor=self.tensor.to(device=device, dtype=dtype),
            kind=self.kind,
            fingerprint=self.fingerprint,
            num_tokens=self.num_tokens,
            segment_slot_counts=list(self.segment_slot_counts),
        )
