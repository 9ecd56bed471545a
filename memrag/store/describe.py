"""What ``memrag index info`` and :meth:`MemoryStore.info` report about a store."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from memrag.store.manifest import DATABASE_NAME, INDEX_DIR, SHARDS_DIR, Manifest
from memrag.utils.torch_utils import resolve_dtype


def row_bytes(manifest: Manifest) -> int:
    """Bytes of one stored row (a slot, or a packed K/V position)."""
    memory = manifest.memory_info
    if memory.packed_kv:
        return memory.row_bytes
    width = manifest.compressor.hidden_size
    return width * torch.tensor([], dtype=resolve_dtype(manifest.options.slot_dtype)).element_size()


def describe_store(store: Any) -> dict[str, Any]:
    """Manifest, live counts, memory bytes (per chunk and per text token), index, fidelity
    statistics, disk usage and integrity of an open :class:`~memrag.store.MemoryStore`."""
    row_bytes_ = row_bytes(store.manifest)
    counts = store.db.counts()
    fidelity = store.db.fidelity_values()
    quantiles = (
        dict(
            zip(
                ("min", "p10", "p50", "p90", "max"),
                np.quantile(fidelity, [0, 0.1, 0.5, 0.9, 1]).round(4).tolist(),
            )
        )
        if len(fidelity)
        else {}
    )
    shard_bytes = sum(p.stat().st_size for p in (store.path / SHARDS_DIR).glob("*.safetensors"))
    memory = store.memory
    stored = {
        "kind": memory.kind,
        "settings": memory.settings,
        "fingerprint": memory.fingerprint,
        # Live rows only (deleted chunks' rows stay in shards until a compaction).
        "bytes_per_chunk": counts["slots"] * row_bytes_ / max(counts["chunks"], 1),
        # Per token of the chunks' text (not per position the memory keeps).
        "bytes_per_token": counts["slots"] * row_bytes_ / max(counts["tokens"], 1),
        "positions_per_chunk": counts["positions"] / max(counts["chunks"], 1),
    }
    disk = {
        "shards": shard_bytes,
        "index": sum(p.stat().st_size for p in (store.path / INDEX_DIR).glob("*.faiss")),
        "database": sum(p.stat().st_size for p in store.path.glob(DATABASE_NAME + "*")),
    }
    index = store.live_index.stats()
    return {
        "path": str(store.path),
        "manifest": store.manifest.to_dict(),
        "memory": stored,
        "counts": counts,
        "index": index,
        "fidelity": quantiles,
        "disk_bytes": disk,
        "integrity": store.integrity_report(),
    }
