"""Fault injection: every client mistake is a 4xx that explains it, and huge prompts are refused
before any prefill while the server keeps answering others."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from memrag.store import MemoryStore

DOCUMENTS = {
    "paris": ("Paris is the capital and most populous city of France.", {"lang": "en", "year": 1}),
    "tower": ("In 1889 the Eiffel Tower was completed for the World's Fair.", {"lang": "en", "year": 2}),
    "berlin": ("Berlin ist die Hauptstadt Deutschlands.", {"lang": "de", "year": 3}),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from memrag.server import ServerSettings, ServerThread, create_app
    from memrag.testing import tiny_compressor

    compressor = tiny_compressor(seed=0)
    path = tmp_path_factory.mktemp("mistakes") / "store"
    store = MemoryStore.create(path, compressor, "hashing:64", memory="embedding", fidelity="none")
    store.add([t for t, _ in DOCUMENTS.values()], ids=list(DOCUMENTS), metadatas=[m for _, m in DOCUMENTS.values()])
    app = create_app(store, ServerSettings(default_max_tokens=3, max_prompt_positions=2048, request_timeout=15))
    running = ServerThread(app).start()
    yield running
    running.stop()
    store.close()


def _chat(server, content: str = "Where is Paris?", **body) -> httpx.Response:
    payload = {"model": "memrag", "messages": [{"role": "user", "content": content}], **body}
    return httpx.post(server.base_url + "/v1/chat/completions", json=payload, timeout=60)


def _error(response: httpx.Response) -> dict:
    return response.json()["error"]


@pytest.mark.parametrize("size", [100_000, 1_000_000])
def test_a_huge_message_is_refused_at_once_naming_the_numbers(server, size: int) -> None:
    started = time.perf_counter()
    response = _chat(server, "word " * (size // 5))
    elapsed = time.perf_counter() - started
    assert response.status_code in (400, 413), response.text
    if response.status_code == 400:
        error = _error(response)
        assert error["code"] == "context_length_exceeded" and "2,048" in error["message"]
    assert elapsed < 5  # answered before any prefill (the target: 1 s, on a quiet machine)
    # The server keeps answering others.
    assert _chat(server).status_code == 200


def test_a_prompt_over_the_cap_after_tokenizing_is_refused(server) -> None:
    # Under the character bound, over the position bound once tokenized.
    response = _chat(server, "x y " * 3000)
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "context_length_exceeded" and "positions" in error["message"]


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        ({"$where": "1"}, "unknown filter operator '$where' at the top level"),
        ({"$OR": [{"lang": "en"}]}, "operators are case-sensitive"),
        ({"$nor": [{"lang": "en"}]}, "unknown filter operator '$nor'"),
        ({"lang": {"$IN": ["en"]}}, "unknown filter operator '$IN'"),
        ({"lang": {"$in": "en"}}, "expected a list"),
    ],
)
def test_bad_filters_are_400_naming_the_operator(server, filter_, expected: str) -> None:
    response = _chat(server, memrag={"filter": filter_})
    assert response.status_code == 400, response.text
    assert expected in _error(response)["message"]


@pytest.mark.parametrize(
    ("options", "param", "expected"),
    [
        ({"search_mode": "semantic"}, "memrag.search_mode", "unknown search mode 'semantic'"),
        ({"search_weights": [1.0]}, "memrag.search_weights", "two numbers"),
        ({"search_weights": [-1.0, 1.0]}, "memrag.search_weights", "dense_weight must be"),
        ({"search_weights": [0, 0]}, "memrag.search_weights", "at least one list"),
        ({"rerank": 33}, "memrag.rerank", "at most 32"),
    ],
)
def test_bad_search_options_are_400_naming_the_field(server, options, param, expected) -> None:
    response = _chat(server, memrag=options)
    assert response.status_code == 400, response.text
    error = _error(response)
    assert error["param"] == param and expected in error["message"]
    assert _chat(server, memrag={"rerank": -1}).status_code == 400


def test_every_search_mode_and_reranking_answer_with_the_filter(server) -> None:
    defaults = httpx.get(server.base_url + "/healthz", timeout=10).json()["defaults"]
    assert defaults["search_mode"] == "hybrid" and defaults["rerank"] == 5
    for options in ({"search_mode": "dense"}, {"search_mode": "lexical"},
                    {"search_mode": "hybrid", "search_weights": [0.2, 1.0], "rerank": 3},
                    {"rerank": 0}):
        response = _chat(
            server, "Was ist Berlin?", memrag={**options, "filter": {"lang": "de"}, "top_k": 3}
        )
        assert response.status_code == 200, response.text
        assert [d["id"] for d in response.json()["memrag_documents"]] == ["berlin"]
    lexical = _chat(server, "Eiffel Tower 1889", memrag={"search_mode": "lexical", "top_k": 1})
    assert [d["id"] for d in lexical.json()["memrag_documents"]] == ["tower"]


def test_in_with_thousands_of_values_works(server) -> None:
    values = [f"lang-{i}" for i in range(5000)] + ["de"]
    response = _chat(server, memrag={"filter": {"lang": {"$in": values}}, "top_k": 3})
    assert response.status_code == 200, response.text
    assert [d["id"] for d in response.json()["memrag_documents"]] == ["berlin"]
    response = _chat(server, memrag={"filter": {"year": {"$nin": list(range(2, 4000))}}, "top_k": 3})
    assert [d["id"] for d in response.json()["memrag_documents"]] == ["paris"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_get_their_own_message(server, value: str) -> None:
    body = '{"model": "memrag", "messages": [{"role": "user", "content": "hi"}], "temperature": %s}' % value
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    message = _error(response)["message"]
    assert "finite" in message and "temperature" in message


def test_the_filter_compiler_takes_any_length_of_in(tmp_path: Path) -> None:
    from memrag.store.metadata import compile_filter

    sql, params = compile_filter({"k": {"$in": list(range(100_000))}})
    assert len(params) <= 4 and json.loads(params[2])[-1] == 99_999
