"""Helpers of the store and indexing tests: corpora and store comparison."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa Paris France capital city tower "
    "river "
    "bridge museum 1889 completed built famous old new memory slots compress documents"
).split()


def sentence(i: int, words: int) -> str:
    """A deterministic pseudo-sentence for document ``i``."""
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words)) + "."


def write_corpus(path: Path, documents: int = 30, *, start: int = 0) -> Path:
    """A JSONL corpus of ``documents`` documents of varying length with metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(start, start + documents):
            text = f"Document {i}. " + sentence(i, 8 + (i * 13) % 60)
            handle.write(
                json.dumps(
                    {"id": f"doc{i}", "text": text, "metadata": {"n": i, "even": i % 2 == 0}}
                )
                + "\n"
            )
    return path


def store_content(store) -> dict[str, dict]:
    """Everything a store holds per chunk id, for comparing two stores."""
    import numpy as np

    content = {}
    for row in store.db.iter_rows():
        (record,) = store.get([row.id])
        vids, vectors = store.db.vectors([row.vid], store.dimension)
        content[row.id] = {
            "text": record.text,
            "metadata": record.metadata,
            "fidelity": record.fidelity,
            "use_text": record.use_text,
            "slots": _memory_array(record.slots),
            "segments": _memory_layout(record.slots),
            "vector": np.asarray(vectors[0]),
        }
    return content


def _memory_array(memory):
    """Slots, or a K/V memory's keys and values, as one float array (``None`` if absent)."""
    import torch

    from memrag.memory.kv import KVSlots

    if memory is None:
        return None
    if isinstance(memory, KVSlots):
        return torch.cat([memory.keys.float(), memory.values.float()]).numpy()
    return memory.tensor.float().numpy()


def _memory_layout(memory):
    """Slots per segment, or a K/V memory's kept offsets and span."""
    from memrag.memory.kv import KVSlots

    if memory is None:
        return None
    if isinstance(memory, KVSlots):
        return (memory.offsets.tolist(), memory.span)
    return memory.segment_slot_counts


def assert_same_content(a: dict[str, dict], b: dict[str, dict], *, atol: float = 2e-3) -> None:
    """Two :func:`store_content` results hold the same chunks (slots equal to fp16 rounding)."""
    import numpy as np

    assert sorted(a) == sorted(b)
    for key in a:
        x, y = a[key], b[key]
        assert x["text"] == y["text"], key
        assert x["metadata"] == y["metadata"], key
        assert x["use_text"] == y["use_text"], key
        assert x["segments"] == y["segments"], key
        assert (x["fidelity"] is None) == (y["fidelity"] is None)
        if x["fidelity"] is not None:
            assert abs(x["fidelity"] - y["fidelity"]) < 1e-3, key
        np.testing.assert_allclose(x["slots"], y["slots"], atol=atol, rtol=1e-2, err_msg=key)
        np.testing.assert_allclose(x["vector"], y["vector"], atol=1e-6, err_msg=key)
