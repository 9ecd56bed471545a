"""Helpers of the server tests: clients for a running server, error-shape checks."""

from __future__ import annotations

from typing import Any

#: Documents of the shared store: id -> text.
DOCUMENTS = {
    "paris": "Paris is the capital and most populous city of France.",
    "tower": "In 1889 the Eiffel Tower was completed for the World's Fair.",
    "fox": "The quick brown fox jumps over the lazy dog.",
}
API_KEY = "test-key-0123456789"


def demo_store(path: Any, compressor: Any, **options: Any) -> Any:
    """A store at ``path`` holding :data:`DOCUMENTS` (hashing embedder; embedding slots and no
    fidelity scoring unless ``options`` say otherwise)."""
    from memrag.store import MemoryStore

    options.setdefault("fidelity", "none")
    options.setdefault("memory", "embedding")
    store = MemoryStore.create(path, compressor, "hashing:128", **options)
    store.add(list(DOCUMENTS.values()), ids=list(DOCUMENTS))
    return store


def openai_client(server: Any, api_key: str = "unused", **options: Any) -> Any:
    """The official OpenAI client pointed at ``server`` (no retries)."""
    import openai

    options.setdefault("timeout", 30)
    return openai.OpenAI(
        base_url=server.base_url + "/v1", api_key=api_key, max_retries=0, **options
    )


def http_client(server: Any, **options: Any) -> Any:
    """A plain httpx client for ``server``."""
    import httpx

    options.setdefault("timeout", 30)
    return httpx.Client(base_url=server.base_url, **options)


def assert_openai_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """Checks the status and the OpenAI error shape; returns the error object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error
