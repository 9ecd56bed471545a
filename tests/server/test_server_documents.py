"""Adding, reading and deleting documents over HTTP, and retrieval seeing the changes."""

from __future__ import annotations

import pytest
from server_helpers import assert_openai_error, demo_store, http_client, openai_client


@pytest.fixture
def writable_store(tmp_path, server_compressor):
    store = demo_store(tmp_path / "store", server_compressor)
    yield store
    store.close()


def ask(server, question: str, **memrag) -> list[str]:
    completion = openai_client(server).chat.completions.create(
        model="memrag",
        messages=[{"role": "user", "content": question}],
        max_tokens=2,
        extra_body={"memrag": memrag} if memrag else None,
    )
    return [d["id"] for d in completion.model_extra["memrag_documents"]]


def test_add_get_delete(start_server, writable_store):
    server = start_server(writable_store)
    question = "Which river flows through Berlin?"
    text = "The Spree is the river that flows through Berlin, the capital of Germany."
    with http_client(server) as http:
        added = http.post(
            "/v1/documents",
            json={"documents": [{"id": "spree", "text": text, "metadata": {"lang": "en"}}]},
        )
        assert added.status_code == 200, added.text
        assert added.json()["chunk_ids"] == ["spree"]
        assert ask(server, question)[0] == "spree"
        assert ask(server, question, top_k=3, filter={"lang": "en"}) == ["spree"]

        got = http.get("/v1/documents/spree").json()
        assert got["chunks"][0]["text"] == text and got["chunks"][0]["metadata"] == {"lang": "en"}

        chunked = http.post(
            "/v1/documents", json={"documents": [{"id": "long", "text": " ".join([text] * 40)}], "chunk": True}
        ).json()
        assert len(chunked["chunk_ids"]) > 1 and all(
            c.startswith("long#") for c in chunked["chunk_ids"]
        )
        assert len(http.get("/v1/documents/long").json()["chunks"]) == len(chunked["chunk_ids"])
        assert http.delete("/v1/documents/long").json()["chunks"] == len(chunked["chunk_ids"])

        generated = http.post("/v1/documents", json={"documents": [{"text": "no id given"}]}).json()
        (new_id,) = [d["id"] for d in generated["data"]]
        assert generated["chunk_ids"] == [new_id]
        assert http.get(f"/v1/documents/{new_id}").status_code == 200

        deleted = http.delete("/v1/documents/spree")
        assert deleted.json() == {
            "id": "spree",
            "object": "memrag.document.deleted",
            "deleted": True,
            "chunks": 1,
        }
        assert "spree" not in ask(server, question)
        assert_openai_error(http.delete("/v1/documents/spree"), 404, "document_not_found")
        assert_openai_error(http.get("/v1/documents/spree"), 404, "document_not_found")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"documents": []},
        {"documents": [{"text": ""}]},
        {"documents": [{"text": 5}]},
        {"documents": [{"text": "a", "metadata": "x"}]},
        {"documents": [{"text": "   "}]},
        {"documents": [{"text": "a", "id": "d"}, {"text": "b", "id": "d"}]},
        {"documents": [{"text": "a", "metadata": {"source_id": "reserved"}}], "chunk": True},
    ],
)
def test_bad_documents(start_server, writable_store, body):
    server = start_server(writable_store)
    with http_client(server) as http:
        assert_openai_error(http.post("/v1/documents", json=body), 400)
        assert http.get("/v1/documents/paris").status_code == 200


def test_writes_can_be_disabled(start_server, writable_store):
    server = start_server(writable_store, allow_writes=False)
    with http_client(server) as http:
        assert_openai_error(
            http.post("/v1/documents", json={"documents": [{"text": "x"}]}), 403, "writes_disabled"
        )
        assert_openai_error(http.delete("/v1/documents/paris"), 403, "writes_disabled")
        assert http.get("/v1/documents/paris").status_code == 200
    assert "paris" in writable_store
