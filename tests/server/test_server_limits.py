"""Concurrency limits: a bounded queue (429 when full), timeouts, and disconnects that free slots."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from server_helpers import assert_openai_error, http_client, openai_client

from memrag.server import ServerSettings

USER = [{"role": "user", "content": "capital of France?"}]
CHAT = {"messages": USER, "max_tokens": 3}


class FakeDecoder:
    """Replaces ``compressor.stream`` (one request at a time): blocks on a gate, or streams
    forever, or passes through."""

    #: Server settings of this decoding mode.
    settings = {"max_batch_size": 1, "max_concurrent": 1}

    def __init__(self, compressor, monkeypatch) -> None:
        self.real = compressor.stream
        self.mode = "real"
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.closed = threading.Event()
        monkeypatch.setattr(compressor, "stream", self)

    def __call__(self, prompt, options=None):
        mode = self.mode
        self.entered.set()
        if mode == "gate":
            assert self.gate.wait(30), "the test never opened the gate"
        if mode == "endless":
            return self._endless()
        return self.real(prompt, options)

    def _endless(self):
        try:
            while True:
                time.sleep(0.01)
                yield "la "
        finally:
            self.closed.set()


class FakeSteps:
    """The same for the batcher: its decoding step blocks on a gate, or rows run forever
    (slow steps, no token limit), or all passes through."""

    settings = {"max_batch_size": 2}

    def __init__(self, monkeypatch) -> None:
        from memrag.batching.engine import BatchedGenerator
        from memrag.batching.handle import RowHandle
        from memrag.batching.state import DecodeState

        self.mode = "real"
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.closed = threading.Event()
        real_step, real_submit, real_end = DecodeState.step, BatchedGenerator.submit, RowHandle._end

        def step(state, decoder):
            self.entered.set()
            if self.mode == "gate":
                assert self.gate.wait(30), "the test never opened the gate"
            if self.mode == "endless":
                time.sleep(0.01)
            return real_step(state, decoder)

        def submit(batcher, prompt, options=None):
            if self.mode == "endless":
                options = dataclasses.replace(options, max_new_tokens=1_000_000, stop=())
            return real_submit(batcher, prompt, options)

        def end(handle, generation, error):
            real_end(handle, generation, error)
            self.closed.set()

        monkeypatch.setattr(DecodeState, "step", step)
        monkeypatch.setattr(BatchedGenerator, "submit", submit)
        monkeypatch.setattr(RowHandle, "_end", end)


@pytest.fixture(params=["one-at-a-time", "batched"])
def fake(request, server_compressor, monkeypatch):
    if request.param == "batched":
        return FakeSteps(monkeypatch)
    return FakeDecoder(server_compressor, monkeypatch)


def _delta(line: str) -> dict:
    return json.loads(line[6:])["choices"][0]["delta"]


def health(http) -> dict:
    return http.get("/healthz").json()


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_full_queue_gets_429_with_retry_after(start_server, fake):
    server = start_server(max_queue=1, **fake.settings)
    slots = ServerSettings(**fake.settings).slots
    fake.mode = "gate"
    with http_client(server) as http, ThreadPoolExecutor(slots + 1) as pool:
        running = [pool.submit(http.post, "/v1/chat/completions", json=CHAT) for _ in range(slots)]
        assert fake.entered.wait(10)
        wait_for(lambda: health(http)["active"] == slots)
        queued = pool.submit(http.post, "/v1/chat/completions", json=CHAT)
        wait_for(lambda: health(http)["queued"] == 1)
        assert health(http)["active"] == slots
        refused = http.post("/v1/chat/completions", json=CHAT)
        assert_openai_error(refused, 429, "server_busy")
        assert int(refused.headers["retry-after"]) >= 1
        with pytest.raises(openai.RateLimitError):
            openai_client(server).chat.completions.create(
                model="memrag", messages=USER, max_tokens=2
            )
        added = http.post("/v1/documents", json={"documents": [{"text": "more text", "id": "x"}]})
        assert_openai_error(added, 429, "server_busy")  # compression needs the model too
        fake.mode = "real"
        fake.gate.set()
        for answer in [*running, queued]:
            assert answer.result(timeout=30).status_code == 200
        wait_for(lambda: health(http)["active"] == 0 and health(http)["queued"] == 0)
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_stream_disconnect_frees_the_slot(start_server, fake):
    server = start_server(max_queue=0, **fake.settings)  # a leaked slot shows in /healthz
    fake.mode = "endless"
    with http_client(server) as http:
        with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: ") and _delta(line).get("content"):
                    break  # a token arrived: the decoder is running; now hang up
        assert fake.closed.wait(10), "the decoder was not stopped"
        fake.mode = "real"
        wait_for(lambda: health(http)["active"] == 0)
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_plain_request_disconnect_frees_the_slot(start_server, fake):
    server = start_server(max_queue=0, **fake.settings)
    fake.mode = "endless"
    impatient = http_client(server, timeout=httpx.Timeout(10, read=0.5))
    with impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/v1/chat/completions", json=CHAT)
    assert fake.closed.wait(10), "the decoder was not stopped"
    fake.mode = "real"
    with http_client(server) as http:
        wait_for(lambda: health(http)["active"] == 0)
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_timeout_stops_generation(start_server, fake):
    server = start_server(request_timeout=0.5, **fake.settings)
    fake.mode = "endless"
    with http_client(server) as http:
        started = time.monotonic()
        assert_openai_error(http.post("/v1/chat/completions", json=CHAT), 504, "timeout")
        assert time.monotonic() - started < 5
        assert fake.closed.wait(10)
        fake.closed.clear()
        with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
            assert response.status_code == 200
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "timeout"
        assert fake.closed.wait(10)
        with pytest.raises(openai.APIError):
            list(
                openai_client(server).chat.completions.create(
                    model="memrag", messages=USER, stream=True
                )
            )
        fake.mode = "real"
        wait_for(lambda: health(http)["active"] == 0)
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_timeout_while_queued(start_server, fake):
    server = start_server(max_queue=2, request_timeout=1.0, **fake.settings)
    slots = ServerSettings(**fake.settings).slots
    fake.mode = "gate"
    with http_client(server) as http, ThreadPoolExecutor(slots) as pool:
        running = [pool.submit(http.post, "/v1/chat/completions", json=CHAT) for _ in range(slots)]
        assert fake.entered.wait(10)
        wait_for(lambda: health(http)["active"] == slots)
        queued = http.post("/v1/chat/completions", json=CHAT)
        assert_openai_error(queued, 504, "timeout")
        assert health(http)["queued"] == 0  # its place was given back
        fake.mode = "real"
        fake.gate.set()
        for answer in running:  # their own deadlines passed meanwhile
            assert answer.result(timeout=30).status_code == 504
        wait_for(lambda: health(http)["active"] == 0)
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_requests_still_running_when_the_shutdown_ends_get_503(start_server, fake, monkeypatch):
    """Stopping the server: the requests still decoding or queued when its grace period ends
    get a JSON 503 server_shutting_down with Retry-After, and their decoders stop."""
    monkeypatch.setattr("memrag.server.runner.GRACEFUL_SHUTDOWN_SECONDS", 1.0)
    server = start_server(max_queue=2, **fake.settings)
    slots = ServerSettings(**fake.settings).slots
    fake.mode = "endless"
    with http_client(server) as http, ThreadPoolExecutor(slots + 1) as pool:
        running = [pool.submit(http.post, "/v1/chat/completions", json=CHAT) for _ in range(slots)]
        wait_for(lambda: health(http)["active"] == slots)
        queued = pool.submit(http.post, "/v1/chat/completions", json=CHAT)
        wait_for(lambda: health(http)["queued"] == 1)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 5
        for answer in [*running, queued]:
            response = answer.result(timeout=10)
            assert_openai_error(response, 503, "server_shutting_down")
            assert int(response.headers["retry-after"]) > 0
    assert fake.closed.wait(10), "the decoder was not stopped"


@pytest.mark.parametrize("batched", [False, True], ids=["one-at-a-time", "batched"])
def test_timeout_stops_a_long_prefill_between_pieces(start_server, server_compressor, monkeypatch, batched):
    """A prompt whose prefill outlasts the deadline is stopped between two pieces of the
    prompt: 504 on time, the decoder stops soon after, and the next request is answered."""
    monkeypatch.setattr("memrag.generation.PREFILL_CHUNK_POSITIONS", 8)
    real_forward = server_compressor.causal_lm.forward
    pieces: list[float] = []

    def slow_forward(*args, **kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1:  # a prefill piece, not a decoding step
            pieces.append(time.monotonic())
            time.sleep(0.1)
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(server_compressor.causal_lm, "forward", slow_forward)
    settings = {"max_batch_size": 2} if batched else FakeDecoder.settings
    server = start_server(request_timeout=1.0, **settings)
    long_message = [{"role": "user", "content": "capital of France? " * 120}]  # ~80 pieces: 8 s
    with http_client(server) as http:
        started = time.monotonic()
        response = http.post("/v1/chat/completions", json={"messages": long_message, "max_tokens": 3})
        assert_openai_error(response, 504, "timeout")
        assert time.monotonic() - started < 3
        wait_for(lambda: health(http)["active"] == 0, timeout=3)
        stopped_with = len(pieces)
        time.sleep(0.5)
        assert len(pieces) == stopped_with < 30, "the prefill went on after the timeout"
        monkeypatch.setattr(server_compressor.causal_lm, "forward", real_forward)
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_limiter_admits_up_to_capacity():
    from memrag.server.limits import GenerationLimiter, QueueFullError

    async def scenario() -> None:
        limiter = GenerationLimiter(1, 2, retry_after_min=1, retry_after_max=5)
        tickets = [limiter.admit() for _ in range(3)]
        with pytest.raises(QueueFullError) as refused:
            limiter.admit()
        assert 1 <= refused.value.retry_after <= 5
        await tickets[0].acquire()
        waiting = asyncio.ensure_future(tickets[1].acquire())
        await asyncio.sleep(0.01)
        assert not waiting.done() and limiter.stats() == {
            "active": 1,
            "queued": 2,
            "max_concurrent": 1,
            "max_queue": 2,
        }
        tickets[0].release()
        tickets[0].release()  # idempotent
        await asyncio.wait_for(waiting, 1)
        tickets[2].release()  # never got a slot
        assert limiter.in_flight == 1 and limiter.active == 1
        tickets[1].release()
        assert limiter.in_flight == 0 and limiter.active == 0
        limiter.admit().release()

    asyncio.run(scenario())
