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
from dataclasses import dataclass


class MemoryKind(str, enum.Enum):
    """What a store keeps for each chunk (see the module docstring).

    A ``str``: it equals, formats, prints (``repr`` too, so messages name it as before) and
    serializes (JSON) as its name (``"kv-exact"``).
    """

    def __repr__(self) -> str:
        return repr(self.value)

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    EMBEDDING = "embedding"
    KV = "kv"
    KV_EXACT = "kv-exact"
    KV_PRUNED = "kv-pruned"

    @property
    def info(self) -> MemoryKindInfo:
        """What the registry knows of this kind (:func:`memory_kind_info`)."""
        return memory_kind_info(self)

    @property
    def packed_kv(self) -> bool:
        """Whether the memory is per-layer keys and values: spliced as a cache prefix, stored
        as rows packed by :mod:`memrag.memory.codec`."""
        return self.info.packed_kv

    @property
    def needs_training(self) -> bool:
        """Whether the memory is made by a trained compressor (not the frozen decoder)."""
        return self.info.trained

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


@dataclass(frozen=True)
class MemoryKindInfo:
    """What a memory kind is, for the code that makes, stores and splices it.

    Attributes:
        kind: The kind.
        packed_kv: Per-layer keys and values, spliced as a cache prefix and stored as rows
            packed by :mod:`memrag.memory.codec` (``False``: embedding rows, spliced as
            ``inputs_embeds`` and stored in the slot dtype).
        trained: Made by a trained compressor whose ``slot_kind`` is the kind's name (``False``:
            by the frozen decoder, which any compressor over the base model has).
        description: What a chunk's memory is.
    """

    kind: MemoryKind
    packed_kv: bool
    trained: bool
    description: str


_REGISTRY: dict[MemoryKind, MemoryKindInfo] = {}


def register_memory_kind(info: MemoryKindInfo) -> None:
    """Adds a kind to the registry (one entry per kind; like peft's ``register_peft_method``).

    Raises:
        ValueError: the kind is registered already.
    """
    if info.kind in _REGISTRY:
        raise ValueError(f"memory kind {info.kind.value!r} is registered already")
    _REGISTRY[info.kind] = info


def memory_kind_info(kind: MemoryKind | str) -> MemoryKindInfo:
    """The registry's entry of ``kind`` (a :class:`MemoryKind` or its name).

    Raises:
        ValueError: an unknown kind, listing the kinds.
    """
    return _REGISTRY[MemoryKind.parse(kind)]


register_memory_kind(
    MemoryKindInfo(MemoryKind.EMBEDDING, False, True, "embedding slots of a trained compressor (ICAE)")
)
register_memory_kind(
    MemoryKindInfo(MemoryKind.KV, True, True, "keys and values of a trained K/V compressor's slots")
)
register_memory_kind(
    MemoryKindInfo(MemoryKind.KV_EXACT, True, False, "the frozen decoder's keys and values, every position")
)
register_memory_kind(
    MemoryKindInfo(
        MemoryKind.KV_PRUNED, True, False, "the frozen decoder's keys and values, a subset of positions"
    )
)

#: Kinds a store can be built with (``embedding`` and ``kv`` need a compressor of that slot kind).
BUILDABLE_KINDS: tuple[MemoryKind, ...] = tuple(_REGISTRY)


def check_compressor_kind(kind: MemoryKind, slot_kind: str) -> None:
    """Refuses to make trained memory of ``kind`` with a compressor of another slot kind.

    Raises:
        ValueError: naming both.
    """
    if kind.needs_training and kind.value != slot_kind:
        raise ValueError(
            f"{kind.value} memory is made by a compressor with slot_kind={kind.value!r}; this "
            f"compressor's slots are {slot_kind!r}"
            + (
                " (use memory 'kv' for it, or a K/V kind made by the frozen decoder)"
                if slot_kind == MemoryKind.KV.value
                else ""
            )
        )
