"""The kinds of memory a store can hold for a chunk, and what each needs to be spliced.

| kind | made by | spliced as |
|---|---|---|
| ``embedding`` | a trained compressor's encoder (ICAE) | ``inputs_embeds`` rows |
| ``kv`` | a trained compressor with ``slot_kind="kv"`` (its encoder's keys and values) | cache prefix |
| ``kv-exact`` | the frozen decoder, every position of the chunk | cache prefix |
| ``kv-pruned`` | the frozen decoder, a query-agnostic subset of positions | cache prefix |
"""

from __future__ import annotations

import enum


class MemoryKind(str, enum.Enum):
    """What a store keeps for each chunk (see the module docstring)."""

    EMBEDDING = "embedding"
    KV = "kv"
    KV_EXACT = "kv-exact"
    KV_PRUNED = "kv-pruned"

    @property
    def is_kv(self) -> bool:
        """Whether the memory is per-layer keys and values (spliced as a cache prefix)."""
        return self is not MemoryKind.EMBEDDING

    @property
    def needs_training(self) -> bool:
        """Whether the memory is made by a trained compressor (not the frozen decoder)."""
        return self in (MemoryKind.EMBEDDING, MemoryKind.KV)

    @classmethod
    def parse(cls, value: "str | MemoryKind") -> "MemoryKind":
        """``"kv-exact"`` -> :attr:`KV_EXACT`; an unknown name raises ``ValueError`` listing the kinds."""
        if isinstance(value, MemoryKind):
            return value
        try:
            return cls(str(value))
        except ValueError:
            names = ", ".join(kind.value for kind in cls)
            raise ValueError(f"unknown memory kind {value!r}; choose from {names}") from None


#: Kinds a store can be built with (``embedding`` and ``kv`` need a compressor of that slot kind).
BUILDABLE_KINDS: tuple[MemoryKind, ...] = (
    MemoryKind.EMBEDDING,
    MemoryKind.KV,
    MemoryKind.KV_EXACT,
    MemoryKind.KV_PRUNED,
)


def check_compressor_kind(kind: MemoryKind, slot_kind: str) -> None:
    """Refuses to make trained memory of ``kind`` with a compressor of another slot kind.

    Raises:
        ValueError: naming both.
    """
    if kind.needs_training and kind.value != slot_kind:
        raise ValueError(
            f"{kind.value} memory is made by a compressor with slot_kind={kind.value!r}; this "
            f"compressor's slots are {slot_kind!r}"
            + (" (use memory 'kv' for it, or a K/V kind made by the frozen decoder)" if slot_kind == "kv" else "")
        )
