"""The kinds of memory a store can hold for a chunk, and what each needs to be spliced.

| kind | made by | spliced as |
|---|---|---|
| ``embedding`` | a trained compressor's encoder (ICAE) | ``inputs_embeds`` rows |
| ``kv`` | a trained compressor with ``slot_kind="kv"`` (reserved; not built yet) | cache prefix |
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


#: Kinds a store can be built with today (``kv`` needs a K/V compressor, which comes later).
BUILDABLE_KINDS: tuple[MemoryKind, ...] = (
    MemoryKind.EMBEDDING,
    MemoryKind.KV_EXACT,
    MemoryKind.KV_PRUNED,
)
