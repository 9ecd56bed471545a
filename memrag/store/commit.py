"""Writing to a store: a processed batch checked against the store, then committed as one
slot shard and one SQLite transaction, the live index updated while readers wait."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from memrag.store.database import Database, NewChunk
from memrag.store.errors import EmbedderMismatchError, compressor_mismatch
from memrag.store.integrity import rows_checksum
from memrag.store.live_index import LiveIndex
from memrag.store.manifest import SHARDS_DIR, Manifest
from memrag.store.metadata import dumps
from memrag.store.processing import ProcessedBatch
from memrag.store.shards import write_shard
from memrag.utils.torch_utils import dtype_name


def check_batch(root: Path, manifest: Manifest, batch: ProcessedBatch) -> None:
    """Refuses a batch that does not fit the store, naming what differs.

    Raises:
        CompressorMismatchError: the memory was made by another compressor.
        EmbedderMismatchError: the vectors were made by another embedder.
        ValueError: another kind of memory, or shapes and dtypes the store does not keep.
    """
    memory = manifest.memory_info
    dimension = manifest.embedder.dimension
    if batch.slot_kind != memory.kind:
        raise ValueError(
            f"{batch.slot_kind} memory cannot go into {root}, which holds {memory.kind} memory"
        )
    if batch.fingerprint != memory.fingerprint:
        raise compressor_mismatch(
            f"{memory.kind} memory made by {batch.fingerprint} cannot go into {root}, "
            f"which holds {memory.kind} memory of {memory.fingerprint}"
        )
    if batch.embedder_id != manifest.embedder.id:
        raise EmbedderMismatchError(
            f"vectors made by embedder {batch.embedder_id!r} cannot go into {root}, "
            f"whose embedder is {manifest.embedder.id!r}"
        )
    n = len(batch.chunks)
    if batch.vectors.shape != (n, dimension):
        raise ValueError(
            f"expected vectors of shape ({n}, {dimension}), got {tuple(batch.vectors.shape)}"
        )
    if memory.packed_kv:
        if batch.slots.dtype != torch.uint8 or batch.slots.shape[-1] != memory.row_bytes:
            raise ValueError(
                f"K/V rows are {dtype_name(batch.slots.dtype)} of width {batch.slots.shape[-1]}, "
                f"the store keeps uint8 rows of {memory.row_bytes} bytes"
            )
    elif dtype_name(batch.slots.dtype) != manifest.options.slot_dtype:
        raise ValueError(
            f"slots are {dtype_name(batch.slots.dtype)}, the store keeps "
            f"{manifest.options.slot_dtype}"
        )
    if n and not memory.packed_kv and batch.slots.shape[-1] != manifest.compressor.hidden_size:
        raise ValueError(
            f"slots have width {batch.slots.shape[-1]}, expected {manifest.compressor.hidden_size}"
        )
    if sum(batch.slot_counts) != batch.slots.shape[0] or not (
        len(batch.slot_counts)
        == len(batch.fidelity)
        == len(batch.num_tokens)
        == len(batch.text_tokens)
        == n
    ):
        raise ValueError(
            "inconsistent batch: slot counts, fidelity or token counts do not match the chunks"
        )


def commit_batch(
    root: Path,
    manifest: Manifest,
    db: Database,
    live_index: LiveIndex,
    batch: ProcessedBatch,
    delete_ids: Sequence[str] = (),
) -> list[int]:
    """Writes a checked batch's memory as one shard and commits its chunks in one transaction
    (replacing chunks of the same ids, deleting ``delete_ids``); the index is updated while
    readers wait, so they see the whole batch or none of it. Call with the writer lock held.

    A failure removes the shard just written (nothing is left half-written).

    Returns:
        The new vector ids of the chunks.
    """
    threshold = manifest.options.fidelity_threshold
    shard = None
    if batch.slots.shape[0]:
        shard = write_shard(
            root / SHARDS_DIR,
            batch.slots,
            fingerprint=batch.fingerprint,
            slot_kind=batch.slot_kind,
        )
    try:
        offsets = np.concatenate([[0], np.cumsum(batch.slot_counts)]).tolist()
        new = [
            NewChunk(
                id=c.id,
                source_id=c.source_id,
                text=c.text,
                metadata_json=dumps(c.metadata),
                content_hash=c.content_hash,
                num_tokens=batch.num_tokens[i],
                text_tokens=batch.text_tokens[i],
                fidelity=batch.fidelity[i],
                use_text=batch.fidelity[i] is not None and batch.fidelity[i] < threshold,
                vector=batch.vectors[i],
                slot_start=int(offsets[i]) if shard else None,
                slot_count=int(batch.slot_counts[i]) if shard else None,
                segment_slot_counts=list(batch.segment_slot_counts[i]),
                slot_crc32=rows_checksum(batch.slots[offsets[i] : offsets[i + 1]])
                if shard
                else None,
            )
            for i, c in enumerate(batch.chunks)
        ]
        # Readers see the batch all at once: the commit and the index update
        # happen while they wait.
        with live_index.lock.write():
            with db.transaction() as conn:
                if shard is not None:
                    shard_id = Database.insert_shard(
                        conn, shard.file, shard.num_slots, shard.bytes, shard.sha256
                    )
                    for chunk in new:
                        chunk.shard_id = shard_id
                stale = Database.delete_ids(conn, list(delete_ids))
                removed = Database.delete_ids(conn, [c.id for c in new])
                vids = Database.insert_chunks(conn, new)
            live_index.apply(stale + removed, vids, batch.vectors)
    except BaseException:
        if shard is not None:
            (root / SHARDS_DIR / shard.file).unlink(missing_ok=True)
        raise
    return vids


def delete_chunks(db: Database, live_index: LiveIndex, ids: list[str]) -> int:
    """Deletes chunks by id in one transaction (unknown ids ignored); returns how many went.
    Call with the writer lock held."""
    with live_index.lock.write():
        with db.transaction() as conn:
            vids = Database.delete_ids(conn, ids)
        live_index.apply(vids, [])
    return len(vids)


def reflag_use_text(db: Database, threshold: float) -> None:
    """Flags ``use_text`` every chunk whose fidelity is below ``threshold`` (and only those).
    Call with the writer lock held."""
    with db.transaction() as conn:
        conn.execute(
            "UPDATE chunks SET use_text = (fidelity IS NOT NULL AND fidelity < ?)", (threshold,)
        )
