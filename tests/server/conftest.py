"""Fixtures of the server tests: a tiny store, servers on loopback ports, clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from server_helpers import demo_store


@pytest.fixture(scope="session")
def server_compressor():
    """A tiny compressor (tests that patch its methods restore them)."""
    from memrag.testing import tiny_compressor

    return tiny_compressor(seed=0)


@pytest.fixture(scope="session")
def server_store(tmp_path_factory, server_compressor):
    """A small writable store of :data:`DOCUMENTS` (hashing embedder, no fidelity scoring)."""
    store = demo_store(tmp_path_factory.mktemp("server") / "store", server_compressor)
    yield store
    store.close()


def _starter(default_store: Any) -> tuple[Callable[..., Any], list[Any]]:
    from memrag.server import ServerSettings, ServerThread, create_app

    started: list[Any] = []

    def start(store: Any = None, **settings: Any) -> Any:
        settings.setdefault("default_max_tokens", 6)
        settings.setdefault("top_k", 3)  # these tests read several chunks (the default is 1)
        app = create_app(store if store is not None else default_store, ServerSettings(**settings))
        server = ServerThread(app).start()
        started.append(server)
        return server

    return start, started


@pytest.fixture
def start_server(server_store) -> Iterator[Callable[..., Any]]:
    """Starts servers (settings as keyword arguments) over the shared store on free loopback
    ports; stops them afterwards."""
    start, started = _starter(server_store)
    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def server(server_store) -> Iterator[Any]:
    """A server with default settings (no API key), shared by a module's tests."""
    start, started = _starter(server_store)
    yield start()
    for running in started:
        running.stop()


@pytest.fixture(autouse=True)
def _embedding_stores_by_default(monkeypatch):
    """These tests were written for stores of embedding slots: a store made without naming its
    memory keeps slots here (K/V stores have their own tests, which name their kind)."""
    monkeypatch.setattr("memrag.memory.spec.DEFAULT_MEMORY", "embedding")


@pytest.fixture
def saved_store(tmp_path):
    """A store on disk whose compressor is saved (with its base model) next to it."""
    from memrag.testing import tiny_base_model, tiny_compressor

    base = tiny_base_model(seed=1, name=str(tmp_path / "base"))
    base.model.save_pretrained(tmp_path / "base")
    base.tokenizer.save_pretrained(tmp_path / "base")
    compressor = tiny_compressor(seed=1, base=base)
    compressor.save_pretrained(tmp_path / "compressor")
    demo_store(tmp_path / "store", compressor).close()
    return tmp_path
