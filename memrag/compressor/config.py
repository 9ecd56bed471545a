"""Configuration of a compressor and the names of the files it is saved as."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from memrag.memory.kinds import MemoryKind
from memrag.version import __version__

#: Format version of a saved compressor directory. Bump on incompatible changes.
COMPRESSOR_FORMAT_VERSION = 1

CONFIG_NAME = "memrag_config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
EMBEDDINGS_NAME = "memory_embeddings.safetensors"

#: Every file a saved compressor directory holds, and nothing else.
SAVED_FILES = (CONFIG_NAME, ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, EMBEDDINGS_NAME)

SlotKind = Literal["embedding", "kv"]
#: The slot kinds a compressor can make: the trained memory kinds (:mod:`memrag.memory.kinds`).
SLOT_KINDS: tuple[str, ...] = tuple(k.value for k in MemoryKind if k.needs_training)
#: Where ``kv`` slots are read in the encoder (see :class:`CompressorConfig`).
KV_POSITIONS = ("memory", "subset")
#: How ``subset`` slot positions are chosen (see :class:`CompressorConfig`).
KV_SELECTIONS = ("stride", "prefill", "kvzip", "prefill-salient", "kvzip-salient")
TASK_NAMES = ("reconstruct", "continue", "answer")


@dataclass
class CompressorConfig:
    """Everything that defines a compressor, apart from its learned weights.

    Args:
        base_model: Hugging Face id, local path, or embedded name (``"gemma-3-270m"``) of the
            frozen decoder-only LM the compressor is built on.
        base_model_revision: Revision (commit, tag) of ``base_model``, when it has one.
        base_model_signature: Shape facts and a weight checksum of the base model, used to
            refuse loading against a different model. Filled in when the compressor is built.
        slot_kind: ``"embedding"`` (hidden states spliced through ``inputs_embeds``) or ``"kv"``
            (per-layer keys and values spliced as a cache prefix, 500xCompressor-style).
        kv_positions: Which encoder positions give ``kv`` slots: ``"memory"`` (learned memory
            tokens appended after the segment, as in 500xCompressor) or ``"subset"`` (every
            ``compression_rate``-th of the segment's own tokens, as in KV-Distill; before any
            training these are the frozen decoder's own keys and values). Ignored for
            ``embedding`` slots.
        kv_selection: Which of the segment's positions ``subset`` slots keep (``ceil(n / rate)``
            of them): ``"stride"`` (the last token of every group of ``compression_rate``
            tokens, the same for every layer) or, per layer, the positions the frozen decoder
            scores highest when it reads the segment, as ``kv-pruned`` memory chooses them:
            ``"prefill"`` (attention received, H2O-style) or ``"kvzip"`` (attention received
            while re-reading it, KVzip). ``"prefill-salient"`` and ``"kvzip-salient"`` first
            force the segment's tokens that hold a digit or start a capitalised word into every
            layer (at most half of the slots; :mod:`memrag.memory.salience`). The scores come
            from the frozen decoder (no gradient); the chosen positions' keys and values come
            from the encoder with its adapter.
        segment_length: Maximum number of text tokens compressed together as one segment.
        compression_rate: Text tokens per memory slot; a segment of ``n`` tokens yields
            ``ceil(n / compression_rate)`` slots.
        lora_rank: Rank of the LoRA adapter of the encoder.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: Dropout on the LoRA branch during training.
        lora_target_modules: Module names the adapter is put on.
        format_version: Format of the saved directory.
        memrag_version: memrag version that saved it.
    """

    base_model: str = "gemma-3-270m"
    base_model_revision: str | None = None
    base_model_signature: dict[str, Any] = field(default_factory=dict)
    slot_kind: SlotKind = "embedding"
    kv_positions: str = "memory"
    kv_selection: str = "stride"
    segment_length: int = 128
    compression_rate: int = 4
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    format_version: int = COMPRESSOR_FORMAT_VERSION
    memrag_version: str = __version__

    def __post_init__(self) -> None:
        if self.slot_kind not in SLOT_KINDS:
            raise ValueError(f"slot_kind must be one of {', '.join(SLOT_KINDS)}, got {self.slot_kind!r}")
        if self.kv_positions not in KV_POSITIONS:
            raise ValueError(
                f"kv_positions must be one of {', '.join(KV_POSITIONS)}, got {self.kv_positions!r}"
            )
        if self.kv_selection not in KV_SELECTIONS:
            raise ValueError(
                f"kv_selection must be one of {', '.join(KV_SELECTIONS)}, got {self.kv_selection!r}"
            )
        subset_kv = self.memory_kind is MemoryKind.KV and self.kv_positions == "subset"
        if self.kv_selection != "stride" and not subset_kv:
            raise ValueError("kv_selection other than 'stride' needs slot_kind='kv' and kv_positions='subset'")
        if self.segment_length < 1:
            raise ValueError(f"segment_length must be >= 1, got {self.segment_length}")
        if self.compression_rate < 1:
            raise ValueError(f"compression_rate must be >= 1, got {self.compression_rate}")

    @property
    def memory_kind(self) -> MemoryKind:
        """The kind of memory this compressor's slots are (``embedding`` or ``kv``)."""
        return MemoryKind(self.slot_kind)

    @property
    def num_memory_tokens(self) -> int:
        """Number of learned memory embeddings: the slots of one full segment."""
        return self.slots_for(self.segment_length)

    @property
    def uses_memory_tokens(self) -> bool:
        """Whether slots are read at learned memory tokens appended to each segment."""
        return not self.memory_kind.packed_kv or self.kv_positions == "memory"

    @property
    def scores_positions(self) -> bool:
        """Whether ``subset`` slots keep, per layer, positions chosen by the frozen decoder's
        scores (any ``kv_selection`` but ``"stride"``; validation allows no other combination)."""
        return self.kv_selection != "stride"

    @property
    def position_scoring(self) -> str:
        """How the frozen decoder scores positions for :attr:`kv_selection`: the
        :class:`~memrag.memory.pruning.PruningConfig` selection (``"kvzip"``, ``"prefill"``,
        ``"stride"``), without the ``-salient`` refinement."""
        return self.kv_selection.removesuffix("-salient")

    @property
    def forces_salient(self) -> bool:
        """Whether :attr:`kv_selection` forces a segment's salient tokens into every layer
        (:mod:`memrag.memory.salience`)."""
        return self.kv_selection.endswith("-salient")

    def slot_positions(self, num_tokens: int) -> list[int]:
        """For ``kv_positions="subset"`` with ``kv_selection="stride"``: the segment positions
        whose keys and values are kept (the last token of each group of ``compression_rate``
        tokens)."""
        rate = self.compression_rate
        return [min(num_tokens - 1, (group + 1) * rate - 1) for group in range(self.slots_for(num_tokens))]

    def identity(self) -> dict[str, Any]:
        """The settings that define what the compressor computes (hashed into its fingerprint)."""
        data = {k: v for k, v in self.to_dict().items() if k not in ("memrag_version", "format_version")}
        if not self.memory_kind.packed_kv:
            data.pop("kv_positions")  # meaningless there; older fingerprints stay valid
        if self.kv_selection == "stride":
            data.pop("kv_selection")  # the only choice before it existed; fingerprints stay valid
        return data

    def slots_for(self, num_tokens: int) -> int:
        """Number of slots a segment of ``num_tokens`` text tokens is compressed into."""
        return math.ceil(num_tokens / self.compression_rate)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-serialisable dict (includes ``num_memory_tokens``)."""
        data = dataclasses.asdict(self)
        data["num_memory_tokens"] = self.num_memory_tokens
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressorConfig:
        """Builds a config from :meth:`to_dict` output, rejecting unknown or newer formats."""
        data = dict(data)
        version = data.get("format_version", COMPRESSOR_FORMAT_VERSION)
        if version > COMPRESSOR_FORMAT_VERSION:
            raise ValueError(
                f"compressor format version {version} is newer than this memrag supports "
                f"({COMPRESSOR_FORMAT_VERSION}); upgrade memrag"
            )
        data.pop("num_memory_tokens", None)
        data.pop("fingerprint", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown compressor config fields: {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: Path, fingerprint: str) -> None:
        """Writes the config JSON with its fingerprint to ``path``."""
        payload = self.to_dict()
        payload["fingerprint"] = fingerprint
        path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
