"""Embedders: the real all-MiniLM-L6-v2 from its pip package (offline), and the hashing embedder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memrag.store import DEFAULT_EMBEDDER, HashingEmbedder, MemoryStore, load_embedder
from memrag.store.embedder import Embedder, embedded_minilm_path


@pytest.fixture(scope="module")
def minilm():
    return load_embedder(None)


def test_minilm_loads_from_its_package_offline(minilm) -> None:
    assert minilm.model_id == DEFAULT_EMBEDDER and minilm.dimension == 384
    assert isinstance(minilm, Embedder)
    assert (embedded_minilm_path() / "model.safetensors").is_file()
    vectors = minilm.embed_documents(
        ["Paris is the capital of France.", "Bananas are yellow fruit."]
    )
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    query = minilm.embed_query("Which city is France's capital?")
    assert query.shape == (384,) and query @ vectors[0] > query @ vectors[1] + 0.2
    assert minilm.embed_documents([]).shape == (0, 384)


def test_minilm_alias_loads_without_network(monkeypatch, minilm) -> None:
    import os
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    embedder = load_embedder("all-MiniLM-L6-v2")
    assert embedder.model_id == DEFAULT_EMBEDDER and embedder.dimension == 384
    assert "HF_HUB_OFFLINE" not in os.environ  # the offline switch is restored after loading
    np.testing.assert_allclose(
        embedder.embed_query("hello"), minilm.embed_query("hello"), atol=1e-6
    )


def test_store_with_the_default_embedder(tmp_path: Path, compressor, minilm) -> None:
    texts = {
        "paris": "Paris is the capital and most populous city of France.",
        "tower": "The Eiffel Tower was completed in 1889 for the World's Fair.",
        "fruit": "Bananas are an elongated, edible fruit.",
    }
    with MemoryStore.create(tmp_path / "s", compressor, minilm, fidelity="none") as store:
        store.add(list(texts.values()), ids=list(texts))
    reopened = MemoryStore.open(
        tmp_path / "s", read_only=True
    )  # loads MiniLM named in the manifest
    assert reopened.manifest.embedder.id == DEFAULT_EMBEDDER and reopened.dimension == 384
    assert reopened.search("When was the Eiffel Tower built?", k=1)[0].id == "tower"
    assert reopened.search("yellow fruit", k=1)[0].id == "fruit"


def test_hashing_embedder_is_deterministic_and_lexical() -> None:
    embedder = load_embedder("hashing:128")
    assert isinstance(embedder, HashingEmbedder) and embedder.model_id == "hashing:128"
    a = embedder.embed_documents(["the capital of France", "yellow bananas"])
    b = HashingEmbedder(128).embed_documents(["the capital of France", "yellow bananas"])
    assert np.array_equal(a, b)
    query = embedder.embed_query("France capital")
    assert query @ a[0] > query @ a[1]
    assert np.all(embedder.embed_query("") == 0)
    with pytest.raises(ValueError, match="hashing:256"):
        load_embedder("hashing:x")
    with pytest.raises(TypeError, match="embed_documents"):
        load_embedder(object())  # type: ignore[arg-type]
