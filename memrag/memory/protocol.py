"""What every chunk memory offers, whatever its kind: :class:`Memory`.

:class:`~memrag.memory.slots.Slots` (embedding slots) and :class:`~memrag.memory.kv.KVSlots` (keys and
values) both satisfy it, so code that stores, counts, moves or routes memory asks it instead of
dispatching on its type; only the splice path, which builds decoder inputs from the tensors,
looks inside.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Memory(Protocol):
    """A chunk's memory.

    Attributes:
        kind: Its :class:`~memrag.memory.kinds.MemoryKind` name.
        fingerprint: What made it; consumers refuse memory that is not theirs.
        num_tokens: Text tokens it stands for.
    """

    kind: str
    fingerprint: str
    num_tokens: int

    @property
    def num_slots(self) -> int:
        """Decoder context positions it takes."""
        ...

    @property
    def packed_kv(self) -> bool:
        """Whether it is keys and values spliced as a cache prefix (the kind's registry entry)."""
        ...

    @property
    def float16_bytes(self) -> int:
        """Its bytes when kept as float16 (keys and values, or embedding rows; no offsets)."""
        ...

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Any:
        """A copy moved / cast."""
        ...
