"""What a store can be opened with: the memory it records, and the compressor and embedder
checks made when it is created or opened."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memrag.compressor.resolve import resolve_compressor
from memrag.memory.kinds import MemoryKind, check_compressor_kind
from memrag.memory.spec import MemorySpec, describe_memory, resolve_memory_spec
from memrag.store.embedder import Embedder
from memrag.store.errors import EmbedderMismatchError, compressor_mismatch
from memrag.store.manifest import Manifest, MemoryInfo

if TYPE_CHECKING:
    from memrag.protocols import MemoryMaker

logger = logging.getLogger(__name__)


def memory_info(compressor: MemoryMaker, memory: Any) -> MemoryInfo:
    """The manifest's description of ``memory`` (a spec, its JSON form, a mode string such as
    ``"kv-pruned:0.5"``, or ``None`` for :func:`~memrag.memory.spec.default_memory`) made with
    ``compressor``."""
    from memrag.memory.builders import make_codec

    config = compressor.config
    spec = resolve_memory_spec(memory, config.slot_kind)
    check_compressor_kind(spec.memory_kind, config.slot_kind)
    if not spec.packed_kv:
        return MemoryInfo(
            kind=spec.kind,
            settings=spec.to_dict(),
            fingerprint=compressor.fingerprint,
            base_model=config.base_model,
            base_model_signature=dict(config.base_model_signature),
        )
    codec = make_codec(compressor, spec)
    return MemoryInfo(
        kind=spec.kind,
        settings=spec.to_dict(),
        fingerprint=spec.fingerprint_for(compressor),
        base_model=config.base_model,
        base_model_signature=dict(config.base_model_signature),
        layers=codec.layers,
        kv_heads=codec.kv_heads,
        head_dim=codec.head_dim,
        row_bytes=codec.row_bytes,
        kv_calibration=codec.calibration_text(),
    )


def check_compressor_matches(path: Path, manifest: Manifest, compressor: MemoryMaker) -> None:
    """Refuses a compressor that cannot read the store's memory, naming both.

    K/V memory of the frozen decoder is read by any compressor over the same base model;
    trained memory only by the compressor that made it.

    Raises:
        CompressorMismatchError: naming the store's and the given compressor or base model.
    """
    memory = manifest.memory_info
    if memory.packed_kv and not MemoryKind.parse(memory.kind).needs_training:
        # K/V memory is the base model's own: any compressor over that base model reads it.
        signature = dict(compressor.config.base_model_signature)
        if signature != memory.base_model_signature:
            raise compressor_mismatch(
                f"{path} holds {memory.kind} memory of base model {memory.base_model!r} "
                f"{_describe_signature(memory.base_model_signature)}; the compressor given is "
                f"over {compressor.config.base_model!r} {_describe_signature(signature)}. K/V "
                "memory of one model cannot be read by another."
            )
        return
    if compressor.fingerprint != manifest.compressor.fingerprint:
        recorded = manifest.compressor
        given = compressor.config
        raise compressor_mismatch(
            f"{path} holds {describe_memory(MemorySpec.from_dict(memory.settings))} slots of compressor "
            f"{recorded.fingerprint} ({recorded.source or recorded.base_model}) at compression rate "
            f"{recorded.compression_rate} ({recorded.slot_kind} slots, segment {recorded.segment_length}); the "
            f"compressor given has compression rate {given.compression_rate} ({given.slot_kind} slots, "
            f"segment {given.segment_length}) and fingerprint {compressor.fingerprint}. Slots of one "
            "compressor cannot be read by another: open the store with the compressor that wrote it."
        )


def _describe_signature(signature: Mapping[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in sorted(signature.items())) + ")"


def check_embedder_matches(path: Path, manifest: Manifest, embedder: Embedder) -> None:
    """Refuses an embedder other than the one the store was indexed with, naming both.

    Raises:
        EmbedderMismatchError: the model id or the dimension differs.
    """
    info = manifest.embedder
    if embedder.model_id != info.id or int(embedder.dimension) != info.dimension:
        raise EmbedderMismatchError(
            f"{path} was indexed with embedder {info.id!r} (dimension {info.dimension}); "
            f"the embedder given is {embedder.model_id!r} (dimension {embedder.dimension})"
        )


def load_recorded_compressor(
    path: Path, manifest: Manifest, *, device: Any = "cpu", dtype: Any = None
) -> Any:
    """The compressor a store's manifest records: its source, or an untrained one over its
    base model; for K/V memory of the frozen decoder, any compressor over the base model when
    the recorded one cannot be found.

    Raises:
        CompressorMismatchError: it cannot be loaded, or it cannot read the store's memory.
    """
    info = manifest.compressor
    memory = manifest.memory_info
    try:
        compressor = resolve_compressor(
            info.source or None,
            untrained_base=None if info.source else info.base_model,
            # K/V memory needs only the base model: any compressor over it reads the store.
            fallback_base=memory.base_model if memory.packed_kv else None,
            on_fallback=logger.info,
            device=device,
            dtype=dtype,
        )
    except FileNotFoundError as err:
        raise compressor_mismatch(
            f"cannot load the compressor of {path} ({info.source}): {err}; pass compressor="
        ) from err
    except (OSError, ValueError) as err:
        raise compressor_mismatch(
            f"cannot load the compressor of {path} (fingerprint {info.fingerprint}, "
            f"source {info.source or 'untrained over ' + info.base_model}): {err}; pass "
            "compressor="
        ) from err
    check_compressor_matches(path, manifest, compressor)
    return compressor
