"""The batched server: concurrent requests decoded together answer as the one-at-a-time server."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from server_helpers import assert_openai_error, http_client

#: Requests of different lengths, stop strings and modes, sent at once.
REQUESTS = [
    {"messages": [{"role": "user", "content": "When was the Eiffel Tower completed?"}], "max_tokens": 9},
    {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 4, "stream": True},
    {"messages": [{"role": "user", "content": "Which fox?"}], "max_tokens": 12, "stop": ["o", "e"]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Paris?"}], "max_tokens": 1},
    {"messages": [{"role": "user", "content": "Tell me about the tower."}], "max_tokens": 7, "stream": True,
     "stream_options": {"include_usage": True}},
    {"messages": [{"role": "user", "content": "Nothing retrieved."}], "max_tokens": 5, "memrag": {"top_k": 0}},
]


def ask(http, body: dict) -> dict:
    """The answer's text, finish reason and usage (streamed or not), or the error."""
    if not body.get("stream"):
        response = http.post("/v1/chat/completions", json=body)
        data = response.json()
        if response.status_code != 200:
            return {"status": response.status_code, "error": data["error"]}
        choice = data["choices"][0]
        return {"status": 200, "text": choice["message"]["content"], "finish": choice["finish_reason"],
                "usage": data["usage"], "docs": data["memrag_documents"]}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    errors = [c["error"] for c in chunks if "error" in c]
    if errors:
        return {"status": response.status_code, "error": errors[0]}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    return {"status": 200, "text": text, "finish": finish[0], "usage": usage[0] if usage else None,
            "docs": chunks[0]["memrag_documents"]}


def concurrently(server, bodies: list[dict]) -> list[dict]:
    with http_client(server) as http, ThreadPoolExecutor(len(bodies)) as pool:
        return [future.result(timeout=60) for future in [pool.submit(ask, http, b) for b in bodies]]


def one_at_a_time(start_server, bodies: list[dict]) -> list[dict]:
    single = start_server(max_batch_size=1)
    with http_client(single) as http:
        return [ask(http, body) for body in bodies]


def access_lines(caplog) -> list[dict]:
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "memrag.server.access"]
    return [line for line in lines if line["path"] == "/v1/chat/completions"]


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def slow_steps(monkeypatch):
    """Each batched decoding step takes 20 ms more (answers stay the same)."""
    from memrag.batching.state import DecodeState

    real = DecodeState.step

    def step(state, decoder):
        time.sleep(0.02)
        return real(state, decoder)

    monkeypatch.setattr(DecodeState, "step", step)


def test_concurrent_requests_decode_together_as_one_at_a_time(start_server, caplog):
    caplog.set_level(logging.INFO, logger="memrag.server.access")
    batched = start_server(batch_window_ms=300, max_queue=8)
    together = concurrently(batched, REQUESTS)
    assert together == one_at_a_time(start_server, REQUESTS)
    assert all(answer["status"] == 200 for answer in together)
    wait_for(lambda: len(access_lines(caplog)) == 2 * len(REQUESTS))
    sizes = [line["batch_size"] for line in access_lines(caplog)]
    assert max(sizes) > 1 and sizes.count(1) >= len(REQUESTS)  # batched ones, single ones
    with http_client(batched) as http:
        health = http.get("/healthz").json()
    batching = health["batching"]
    assert (batching["max_batch_size"], batching["batch_window_ms"]) == (8, 300)
    assert batching["completed"] == len(REQUESTS) and batching["rows"] == batching["failed"] == 0


def test_a_failing_row_fails_alone_with_an_openai_error(start_server, monkeypatch):
    """A request whose chunk cannot be spliced (damaged slots) fails; its batch mates do not."""
    from memrag.memory.slots import Slots
    from memrag.server.service import RagService

    real_prepare = RagService.prepare

    def prepare(service, turns, options, retrieval):
        prepared = real_prepare(service, turns, options, retrieval)
        if "damaged" in turns[-1].text:
            width = service.compressor.hidden_size + 1
            prepared.prompt = [Slots(tensor=__import__("torch").zeros(3, width), kind="embedding")
                               if isinstance(part, Slots) else part for part in prepared.prompt]
        return prepared

    healthy = REQUESTS[:3]
    expected = one_at_a_time(start_server, healthy)
    monkeypatch.setattr(RagService, "prepare", prepare)
    damaged = {"messages": [{"role": "user", "content": "a damaged chunk about Paris"}], "max_tokens": 5}
    batched = start_server(batch_window_ms=300)
    answers = concurrently(batched, [damaged, *healthy, {**damaged, "stream": True}])
    assert answers[1:4] == expected
    for failed in (answers[0], answers[4]):
        assert failed["status"] in (500, 200)  # a stream has sent its headers already
        assert failed["error"]["code"] == "internal_error" and failed["error"]["type"] == "server_error"
    with http_client(batched) as http:
        assert_openai_error(http.post("/v1/chat/completions", json=damaged), 500, "internal_error")
        assert http.get("/healthz").json()["batching"]["failed"] == 3


def test_a_client_leaving_mid_stream_frees_its_row_only(start_server, slow_steps):
    batched = start_server(batch_window_ms=200)
    staying = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 12}
    leaving = {**staying, "max_tokens": 500, "stream": True}
    with http_client(batched) as http, ThreadPoolExecutor(1) as pool:
        kept = pool.submit(ask, http, staying)
        with http.stream("POST", "/v1/chat/completions", json=leaving) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    break  # decoding; hang up
        answer = kept.result(timeout=60)
        wait_for(lambda: http.get("/healthz").json()["batching"]["rows"] == 0)
        health = http.get("/healthz").json()
    assert answer == one_at_a_time(start_server, [staying])[0]
    assert health["batching"]["cancelled"] == 1 and health["active"] == 0


def test_shutdown_finishes_rows_in_flight(start_server, slow_steps):
    batched = start_server(batch_window_ms=100)
    bodies = [{**REQUESTS[0], "max_tokens": 10}, {**REQUESTS[1], "max_tokens": 10}, REQUESTS[2]]
    batcher = batched.app.state.memrag.batcher
    with http_client(batched) as http, ThreadPoolExecutor(len(bodies)) as pool:
        answers = [pool.submit(ask, http, body) for body in bodies]
        wait_for(lambda: batcher.stats()["rows"] > 0)
        stopping = threading.Thread(target=batched.stop)
        stopping.start()
        results = [future.result(timeout=60) for future in answers]
        stopping.join(30)
    assert [r["status"] for r in results] == [200, 200, 200]  # each answered once, in full
    stats = batcher.stats()
    assert stats["completed"] == len(bodies) and stats["rows"] == stats["pending"] == 0
    from memrag.batching import BatcherClosedError

    with pytest.raises(BatcherClosedError):
        batcher.submit(["after the end"])
