"""How a store makes its memory: the kind and its settings (recorded in the store's manifest)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from memrag.memory.kinds import BUILDABLE_KINDS, MemoryKind
from memrag.memory.pruning import PruningConfig

#: Storage dtypes of K/V memory: float16 (default), bfloat16, or int8 with per-channel key
#: scales and per-token value scales (KIVI-style).
KV_DTYPES = ("float16", "bfloat16", "int8")


@dataclass
class MemorySpec:
    """The memory a store holds for each chunk.

    Args:
        kind: ``"embedding"`` (a compressor's slots), ``"kv-exact"`` or ``"kv-pruned"``.
        kv_dtype: How K/V memory is stored: ``"float16"``, ``"bfloat16"`` or ``"int8"``.
        pruning: For ``kv-pruned``: keep ratio and the selection of positions.
    """

    kind: str = MemoryKind.EMBEDDING.value
    kv_dtype: str = "float16"
    pruning: PruningConfig = field(default_factory=PruningConfig)

    def __post_init__(self) -> None:
        kind = MemoryKind.parse(self.kind)
        if kind not in BUILDABLE_KINDS:
            raise ValueError(
                f"memory kind {kind.value!r} cannot be built yet (it needs a compressor with "
                "slot_kind='kv'); choose from "
                + ", ".join(k.value for k in BUILDABLE_KINDS)
            )
        self.kind = kind.value
        if self.kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {', '.join(KV_DTYPES)}, got {self.kv_dtype!r}")
        if isinstance(self.pruning, dict):
            self.pruning = PruningConfig(**self.pruning)

    @property
    def memory_kind(self) -> MemoryKind:
        """The kind as an enum."""
        return MemoryKind(self.kind)

    @property
    def is_kv(self) -> bool:
        """Whether chunks are stored as keys and values."""
        return self.memory_kind.is_kv

    def to_dict(self) -> dict[str, Any]:
        """JSON form (only the settings that apply to the kind)."""
        data: dict[str, Any] = {"kind": self.kind}
        if self.is_kv:
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

    def fingerprint(self, base_signature: dict[str, Any]) -> str:
        """Identity of the K/V memory this spec makes over a base model (same inputs, same memory)."""
        identity = {"base_model_signature": base_signature, **self.to_dict()}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
