"""How a store makes its memory: the kind and its settings (recorded in the store's manifest)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from memrag.memory.kinds import BUILDABLE_KINDS, MemoryKind
from memrag.memory.pruning import PruningConfig

#: Storage dtypes of K/V memory (the one list; layouts in :mod:`memrag.memory.codec`):
#: float16 (default), bfloat16, int8 with per-channel key scales and per-token value scales
#: (KIVI-style), int4 (keys and values in 4 bits: K4V4), k8v4 (8-bit keys, 4-bit values) and
#: int4r (4 bits, heads rotated and quantized per token: no per-chunk header, the smallest) and
#: int4c (int4r's bytes, channels centred and scaled by a per-store calibration first). Beside
#: these fixed names, ``tc<bits>`` (``tc2`` ...) is the transform codec at a bit budget
#: (:mod:`memrag.memory.transform_codec`); :func:`memrag.memory.codec.is_kv_dtype` knows them all.
KV_DTYPES = ("float16", "bfloat16", "int8", "int4", "k8v4", "int4r", "int4c")


@dataclass
class MemorySpec:
    """The memory a store holds for each chunk.

    Args:
        kind: ``"embedding"`` or ``"kv"`` (a trained compressor's slots), ``"kv-exact"`` or
            ``"kv-pruned"`` (the frozen decoder's own keys and values).
        kv_dtype: How K/V memory is stored: one of :data:`KV_DTYPES` (``"float16"``,
            ``"bfloat16"``, ``"int8"``, ``"int4"``, ``"k8v4"``, ``"int4r"``, ``"int4c"``), or
            ``"tc<bits>"`` (the transform codec, e.g. ``"tc2"``).
        pruning: For ``kv-pruned``: keep ratio and the selection of positions.
    """

    kind: MemoryKind = MemoryKind.EMBEDDING
    kv_dtype: str = "float16"
    pruning: PruningConfig = field(default_factory=PruningConfig)

    def __post_init__(self) -> None:
        kind = MemoryKind.parse(self.kind)
        if kind not in BUILDABLE_KINDS:
            raise ValueError(
                f"memory kind {kind.value!r} cannot be built; choose from "
                + ", ".join(k.value for k in BUILDABLE_KINDS)
            )
        self.kind = kind
        from memrag.memory.codec import is_kv_dtype, kv_dtype_examples

        if not is_kv_dtype(self.kv_dtype):
            raise ValueError(
                f"kv_dtype must be one of {', '.join(kv_dtype_examples())}, got {self.kv_dtype!r}"
            )
        if isinstance(self.pruning, dict):
            self.pruning = PruningConfig(**self.pruning)

    @property
    def memory_kind(self) -> MemoryKind:
        """The kind as an enum."""
        return MemoryKind(self.kind)

    @property
    def packed_kv(self) -> bool:
        """Whether chunks are stored as packed keys and values (the kind's registry entry)."""
        return self.memory_kind.packed_kv

    def to_dict(self) -> dict[str, Any]:
        """JSON form (only the settings that apply to the kind)."""
        data: dict[str, Any] = {"kind": self.kind}
        if self.packed_kv:
            data["kv_dtype"] = self.kv_dtype
        if self.kind == MemoryKind.KV_PRUNED.value:
            data["pruning"] = dataclasses.asdict(self.pruning)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MemorySpec":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        known = {"kind", "kv_dtype", "pruning"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown memory settings {unknown}")
        pruning = data.get("pruning") or {}
        return cls(
            kind=data.get("kind", MemoryKind.EMBEDDING.value),
            kv_dtype=data.get("kv_dtype", "float16"),
            pruning=PruningConfig.from_dict(pruning),
        )

    def fingerprint_for(self, compressor: Any) -> str:
        """The fingerprint recorded with the memory this spec makes with ``compressor``: the
        compressor's own for memory its encoder makes (``embedding``, ``kv``), else
        :meth:`fingerprint` over its base model (any compressor over it makes the same)."""
        if self.memory_kind.needs_training:
            return str(compressor.fingerprint)
        return self.fingerprint(compressor.config.base_model_signature)

    def fingerprint(self, base_signature: dict[str, Any]) -> str:
        """Identity of the K/V memory this spec makes over a base model (same inputs, same memory)."""
        identity = {"base_model_signature": base_signature, **self.to_dict()}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def parse_memory_mode(text: str) -> MemorySpec:
    """A K/V memory mode written as ``kind[:setting ...]``, as ``memrag eval qa`` and ``bench`` take it.

    Settings: a storage dtype (``float16``, ``bfloat16``, ``int8``, ``int4``, ``k8v4``,
    ``int4r``, ``int4c``, ``tc<bits>``), a keep ratio (``0.5``), a
    selection (``kvzip``, ``prefill``, ``stride``), ``shared`` (one set of positions for all
    layers), ``compact`` / ``spread`` (kept entries at consecutive positions, the default / at
    their original offsets), ``merge`` (dropped values averaged into the nearest kept ones), or
    ``name=value`` for any
    :class:`PruningConfig` field (``pool=3``, ``sinks=4``).
    Examples: ``kv-exact``, ``kv-exact:int8``, ``kv-pruned:0.5``, ``kv-pruned:0.25:kvzip:pool=3``.

    Raises:
        ValueError: naming the mode and the setting that is not understood.
    """
    from memrag.memory.codec import is_kv_dtype
    from memrag.memory.pruning import SELECTIONS

    name, *settings = [piece.strip() for piece in text.split(":")]
    kind = MemoryKind.parse(name)
    if not kind.packed_kv:
        raise ValueError(f"mode {text!r}: {name!r} is not a K/V memory kind")
    kv_dtype = "float16"
    pruning: dict[str, Any] = {}
    fields = {f.name: f.type for f in dataclasses.fields(PruningConfig)}
    for setting in settings:
        if is_kv_dtype(setting):
            kv_dtype = setting
        elif setting in SELECTIONS:
            pruning["selection"] = setting
        elif setting == "shared":
            pruning["per_layer"] = False
        elif setting in ("compact", "merge"):
            pruning[setting] = True
        elif setting == "spread":
            pruning["compact"] = False
        elif "=" in setting:
            key, value = (part.strip() for part in setting.split("=", 1))
            if key not in fields:
                raise ValueError(f"mode {text!r}: unknown pruning setting {key!r}")
            try:
                pruning[key] = _typed(value, str(fields[key]))
            except ValueError:
                raise ValueError(f"mode {text!r}: bad value {value!r} for {key}") from None
        else:
            try:
                pruning["keep_ratio"] = float(setting)
            except ValueError:
                raise ValueError(f"mode {text!r}: cannot understand {setting!r}") from None
    if pruning and kind is not MemoryKind.KV_PRUNED:
        raise ValueError(f"mode {text!r}: pruning settings need kv-pruned")
    try:
        return MemorySpec(kind=kind.value, kv_dtype=kv_dtype, pruning=PruningConfig(**pruning))
    except ValueError as err:
        raise ValueError(f"mode {text!r}: {err}") from None


def _typed(value: str, annotation: str) -> Any:
    if "bool" in annotation:
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise ValueError(value)
    if "int" in annotation:
        return int(value)
    if "float" in annotation:
        return float(value)
    return value


#: The memory ``memrag index build``, the demo, the server and :meth:`MemoryStore.create`
#: make when none is named: the frozen decoder's own keys and values, stored as int8. Measured
#: side by side (docs/RESULTS.md, "Which memory?" and "Answers through memrag serve"), it
#: answers as well as the text, and its answers contain the gold answer about twice as often
#: as the default compressor's trained ``kv:int8`` slots, which take a quarter of its bytes.
DEFAULT_MEMORY = "kv-exact:int8"
#: The default for a compressor that cannot make :data:`DEFAULT_MEMORY` (when that is
#: trained memory of another slot kind): the frozen decoder's own keys and values, which any
#: compressor over the base model makes alike.
FALLBACK_MEMORY = "kv-exact:int8"


def default_memory(slot_kind: str | None = None) -> str:
    """The memory made when none is named, for a compressor of ``slot_kind``.

    :data:`DEFAULT_MEMORY` unless that memory is trained slots of another kind than the
    compressor makes (then :data:`FALLBACK_MEMORY`); ``None`` means the shipped default
    compressor.
    """
    kind = MemoryKind.parse(DEFAULT_MEMORY.split(":")[0])
    if slot_kind is None or not kind.needs_training or kind.value == slot_kind:
        return DEFAULT_MEMORY
    return FALLBACK_MEMORY


def resolve_memory_spec(memory: Any, slot_kind: str | None = None) -> MemorySpec:
    """A :class:`MemorySpec` from a spec, its JSON form, a mode string or ``None``.

    Args:
        memory: What to make; ``None`` is :func:`default_memory` for ``slot_kind``.
        slot_kind: The slot kind of the compressor that will make it (``None``: the shipped
            default's).
    """
    if memory is None:
        memory = default_memory(slot_kind)
    if isinstance(memory, MemorySpec):
        return memory
    if isinstance(memory, dict):
        return MemorySpec.from_dict(memory)
    if isinstance(memory, str):
        if memory == MemoryKind.EMBEDDING.value:
            return MemorySpec(kind=memory)
        return parse_memory_mode(memory)
    raise TypeError(f"memory must be a MemorySpec, a dict or a mode string, got {type(memory).__name__}")


def describe_memory(spec: MemorySpec) -> str:
    """A label naming every setting that differs from the kind's plain form (defaults change;
    reports keep meaning what they measured)."""
    label = spec.kind
    if spec.packed_kv and spec.kv_dtype != "float16":
        label += f" {spec.kv_dtype}"
    if spec.kind == MemoryKind.KV_PRUNED.value:
        p = spec.pruning
        label += f" {p.keep_ratio:g} {p.selection}"
        label += " compact" if p.compact else " spread"
        if not p.per_layer:
            label += " shared"
        if p.pool > 1:
            label += f" pool={p.pool}"
        if p.sinks or p.recent:
            label += f" sinks={p.sinks} recent={p.recent}"
        if p.merge:
            label += " merge"
    return label
