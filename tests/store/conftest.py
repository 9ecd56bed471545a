"""Fixtures of the store and indexing tests: tiny compressors (in memory and saved), corpora."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def compressor():
    """A tiny compressor shared by the tests of this folder (they never modify it)."""
    from memrag.testing import tiny_compressor

    return tiny_compressor(seed=0)


@pytest.fixture(scope="session")
def saved_compressor(tmp_path_factory) -> Path:
    """A tiny compressor saved as a directory that ``Compressor.from_pretrained`` can load.

    Its base model is saved next to it, and the compressor's config names that directory,
    so CLI commands, subprocesses and Ray workers can load the very same compressor.
    """
    from memrag.testing import tiny_base_model, tiny_compressor

    root = tmp_path_factory.mktemp("tiny")
    base_dir = root / "base"
    base = tiny_base_model(seed=1, name=str(base_dir))
    base.model.save_pretrained(base_dir)
    base.tokenizer.save_pretrained(base_dir)
    tiny_compressor(seed=1, base=base).save_pretrained(root / "compressor")
    return root / "compressor"


@pytest.fixture(autouse=True)
def _embedding_stores_by_default(monkeypatch):
    """These tests were written for stores of embedding slots: a store made without naming its
    memory keeps slots here (K/V stores have their own tests, which name their kind)."""
    monkeypatch.setattr("memrag.memory.spec.DEFAULT_MEMORY", "embedding")
