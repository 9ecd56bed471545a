"""Context modes: the ways a passage can reach the frozen decoder, one registry for
``memrag eval qa``, ``memrag eval lm`` and ``memrag bench``.

| mode | the decoder reads |
|---|---|
| ``text`` | the passage as text (classic RAG, the baseline) |
| ``slots`` | the passage's memory slots, as the compressor under test makes them |
| ``truncated`` | the passage's text cut to as many tokens as it has slots (the same context positions) |
| ``none`` | no passage |
| a K/V memory mode | the passage's K/V memory as a store keeps it (``kv-exact:int8``, ``kv:int4``, ``kv-pruned:0.5`` ...; :func:`memrag.memory.spec.parse_memory_mode`), in ``bench`` optionally with cross-chunk recovery (``kv-exact+cacheblend``) |

Each consumer decides how it makes a mode's contexts (offline for the evals, from stores for
the benchmark); the names, what they mean, how they are parsed and checked, and the
truncation baseline live here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memrag.protocols import DecodingModel

#: The modes without settings and what each gives the decoder, in report order.
PLAIN_MODES: dict[str, str] = {}


def register_context_mode(name: str, description: str) -> None:
    """Adds a mode without settings to the registry (its consumers must know how to make it).

    Raises:
        ValueError: the name is taken, or looks like a K/V memory mode.
    """
    if name in PLAIN_MODES or ":" in name or "+" in name:
        raise ValueError(f"cannot register context mode {name!r}")
    PLAIN_MODES[name] = description


register_context_mode("text", "the passage as text (classic RAG, the baseline)")
register_context_mode("slots", "the passage's memory slots, as the compressor under test makes them")
register_context_mode(
    "truncated", "the passage's text cut to as many tokens as it has slots (the baseline to beat)"
)
register_context_mode("none", "no passage")


@dataclass(frozen=True)
class ModeName:
    """A parsed mode name: ``kv-exact:int8+cacheblend:0.1`` -> memory ``kv-exact:int8``,
    recovery ``cacheblend:0.1``; a plain mode has neither.

    Attributes:
        name: The mode as written.
        memory: The K/V memory mode it reads, or ``None``.
        recovery: Cross-chunk recovery (``bench`` only), or ``None``.
    """

    name: str
    memory: str | None = None
    recovery: str | None = None

    @property
    def reads_memory(self) -> bool:
        """Whether the mode reads stored K/V memory."""
        return self.memory is not None


def _choices(memory: bool, recovery: bool) -> str:
    text = ", ".join(PLAIN_MODES)
    if memory:
        text += " or a K/V memory mode (kv-exact[:int8|int4|k8v4|int4c|int4r|tc2], kv-pruned[:0.5], kv[:int8|int4|int4c|int4r|tc2] ...)"
    if recovery:
        text += ", with +cacheblend[:ratio] for cross-chunk recovery"
    return text


def parse_context_mode(name: str, *, memory: bool = True, recovery: bool = False) -> ModeName:
    """Checks and splits a mode name.

    Args:
        name: The mode as written.
        memory: Whether K/V memory modes are allowed.
        recovery: Whether ``+recovery`` suffixes are allowed.

    Raises:
        ValueError: naming the mode, what is wrong with it and the choices.
    """
    from memrag.memory.kinds import MemoryKind
    from memrag.memory.spec import parse_memory_mode

    base, plus, suffix = name.partition("+")
    if name in PLAIN_MODES:
        return ModeName(name)
    try:
        kind = MemoryKind.parse(base.split(":")[0])
    except ValueError:
        kind = None
    if not memory or kind is None or kind is MemoryKind.EMBEDDING or (plus and not recovery):
        raise ValueError(f"unknown mode {name!r}; choose from {_choices(memory, recovery)}")
    parse_memory_mode(base)
    if suffix:
        from memrag.memory.recovery import RecoveryConfig

        RecoveryConfig.parse(suffix)
    return ModeName(name, memory=base, recovery=suffix or None)


def check_context_modes(
    modes: Sequence[str], *, memory: bool = True, recovery: bool = False
) -> list[ModeName]:
    """Each of ``modes`` parsed (:func:`parse_context_mode`).

    Raises:
        ValueError: no modes, or the first mode that is not understood.
    """
    if not modes:
        raise ValueError(f"no modes given; choose from {_choices(memory, recovery)}")
    return [parse_context_mode(m, memory=memory, recovery=recovery) for m in modes]


def truncated_ids(compressor: DecodingModel, segments: Sequence[Sequence[int]]) -> list[int]:
    """The first tokens of a text given as its segments: as many as the text has slots.

    Args:
        compressor: Decides how many slots each segment gets.
        segments: The text's token segments, as :meth:`Compressor.segment` cuts them.
    """
    count = sum(compressor.config.slots_for(len(s)) for s in segments)
    return [token for segment in segments for token in segment][:count]


def truncated_context(compressor: DecodingModel, context: str) -> str:
    """The first ``num_slots(context)`` tokens of ``context``, as text (the ``truncated`` mode)."""
    ids = truncated_ids(compressor, compressor.segment(context))
    return compressor.tokenizer.decode(ids, skip_special_tokens=True)
