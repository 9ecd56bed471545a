"""Bad requests get 4xx answers in the OpenAI error shape, and the server keeps serving."""

from __future__ import annotations

import openai
import pytest
from server_helpers import API_KEY, assert_openai_error, http_client, openai_client

USER = [{"role": "user", "content": "capital of France?"}]


def _ok(http) -> None:
    response = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"max_tokens": 2}, 400, None, "messages"),
        ({"messages": []}, 400, None, "messages"),
        ({"messages": "hello"}, 400, None, "messages"),
        ({"messages": [{"role": "user"}]}, 400, None, "messages.0"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, None, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, None, "messages.0.content"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            400,
            None,
            None,
        ),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, None, "messages"),
        ({"messages": USER, "max_tokens": -1}, 400, None, "max_tokens"),
        ({"messages": USER, "max_tokens": 0}, 400, None, "max_tokens"),
        ({"messages": USER, "max_tokens": "5"}, 400, None, "max_tokens"),
        ({"messages": USER, "max_tokens": 2.5}, 400, None, "max_tokens"),
        ({"messages": USER, "max_tokens": 10_000}, 400, None, "max_tokens"),
        ({"messages": USER, "temperature": "hot"}, 400, None, "temperature"),
        ({"messages": USER, "temperature": 3}, 400, None, "temperature"),
        ({"messages": USER, "top_p": 1.5}, 400, None, "top_p"),
        ({"messages": USER, "stream": "yes"}, 400, None, "stream"),
        ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400, None, "stop"),
        ({"messages": USER, "stop": [""]}, 400, None, "stop"),
        ({"messages": USER, "n": 2}, 400, None, None),
        ({"messages": USER, "tools": [{"type": "function"}]}, 400, None, None),
        ({"messages": USER, "memrag": {"top_k": -1}}, 400, None, "memrag.top_k"),
        ({"messages": USER, "memrag": {"top_k": 999}}, 400, None, "memrag.top_k"),
        (
            {"messages": USER, "memrag": {"filter": {"year": {"$between": [1, 2]}}}},
            400,
            None,
            "memrag.filter",
        ),
        ({"messages": USER * 100}, 400, "too_many_messages", "messages"),
        ({"messages": USER, "model": "gpt-4o"}, 404, "model_not_found", "model"),
        ([1, 2, 3], 400, None, None),
    ],
)
def test_invalid_requests(server, body, status, code, param):
    with http_client(server) as http:
        response = http.post("/v1/chat/completions", json=body)
        error = assert_openai_error(response, status, code)
        if param is not None:
            assert error["param"] == param
        _ok(http)


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"   ", b'{"messages": [', b"\xff\xfe", b"null"],
)
def test_malformed_json(server, raw):
    with http_client(server) as http:
        response = http.post(
            "/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"}
        )
        assert_openai_error(response, 400)
        _ok(http)


def test_huge_body_is_refused(start_server):
    server = start_server(max_body_bytes=4096)
    big = {"messages": [{"role": "user", "content": "x" * 10_000}]}
    with http_client(server) as http:
        assert_openai_error(http.post("/v1/chat/completions", json=big), 413, "request_too_large")

        def chunks():  # no Content-Length: the limit is enforced while reading
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(20):
                yield b"y" * 1024
            yield b'"}]}'

        response = http.post(
            "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert_openai_error(response, 413, "request_too_large")
        _ok(http)


def test_unknown_routes_and_methods(server):
    with http_client(server) as http:
        assert_openai_error(http.get("/v1/nothing"), 404)
        assert_openai_error(http.get("/v1/chat/completions"), 405)
        assert_openai_error(http.get("/v1/models/other-model"), 404, "model_not_found")
        _ok(http)


def test_the_openai_client_raises_its_usual_errors(server):
    client = openai_client(server)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="memrag", messages=USER, max_tokens=-3)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="not-served", messages=USER)
    assert client.chat.completions.create(model="memrag", messages=USER, max_tokens=2).choices


def test_api_key(start_server, monkeypatch):
    server = start_server(api_key=API_KEY)
    with pytest.raises(openai.AuthenticationError):
        openai_client(server, api_key="wrong").chat.completions.create(
            model="memrag", messages=USER
        )
    with pytest.raises(openai.AuthenticationError):
        openai_client(server, api_key="wrong").models.list()
    with http_client(server) as http:
        for method, path in (
            ("GET", "/v1/models"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/documents"),
            ("DELETE", "/v1/documents/paris"),
        ):
            response = http.request(method, path, json={"messages": USER})
            assert_openai_error(response, 401, "invalid_api_key")
            assert response.headers["www-authenticate"] == "Bearer"
        bad_scheme = http.get("/v1/models", headers={"Authorization": f"Basic {API_KEY}"})
        assert_openai_error(bad_scheme, 401)
        assert http.get("/healthz").status_code == 200  # no key needed
        assert (
            http.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code
            == 200
        )
    completion = openai_client(server, api_key=API_KEY).chat.completions.create(
        model="memrag", messages=USER, max_tokens=2
    )
    assert completion.choices[0].message.content is not None


def test_load_api_key(tmp_path, monkeypatch):
    from memrag.server import load_api_key

    monkeypatch.setenv("MEMRAG_API_KEY", "  from-env \n")
    assert load_api_key() == "from-env"
    assert load_api_key(env="OTHER_UNSET_VARIABLE") is None
    key_file = tmp_path / "key"
    key_file.write_text("from-file\nignored\n")
    assert load_api_key(file=key_file) == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError):
        load_api_key(file=tmp_path / "empty")


def test_settings_are_validated():
    from memrag.server import ServerSettings

    for bad in (
        {"max_concurrent": 0},
        {"top_k": 20},
        {"default_max_tokens": 5000},
        {"request_timeout": 0},
        {"api_key": " "},
        {"stop": "x"},
        {"max_batch_size": 0},
        {"batch_window_ms": -1},
        {"batch_window_ms": float("nan")},
        {"batch_window_ms": 5000},
    ):
        with pytest.raises(ValueError):
            ServerSettings(**bad)
    assert ServerSettings(max_concurrent=3).slots == 8  # the batch's rows
    assert ServerSettings(max_concurrent=3, max_batch_size=1).slots == 3
