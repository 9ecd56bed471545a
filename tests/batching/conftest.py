"""Fixtures of the batching tests: a tiny compressor, prompts mixing every kind of memory."""

from __future__ import annotations

import pytest
from batching_helpers import PASSAGES


@pytest.fixture(scope="module")
def compressor():
    """A tiny Gemma-3 compressor (sliding-window and full attention layers)."""
    from memrag.testing import tiny_compressor

    return tiny_compressor(seed=0)


@pytest.fixture(scope="module")
def contexts(compressor, tmp_path_factory) -> dict[str, list]:
    """Each passage as a store serves it: embedding slots, K/V memory (exact, pruned int8), text."""
    from memrag.store import MemoryStore

    root = tmp_path_factory.mktemp("contexts")
    ids = [f"p{i}" for i in range(len(PASSAGES))]
    found: dict[str, list] = {"text": list(PASSAGES)}
    for memory in ("embedding", "kv-exact", "kv-pruned:0.5:int8"):
        options = {} if memory == "embedding" else {"memory": memory}
        with MemoryStore.create(root / memory, compressor, "hashing:64", fidelity="none", **options) as store:
            store.add(PASSAGES, ids=ids)
            found[memory.split(":")[0]] = [record.context() for record in store.get(ids)]
    return found
