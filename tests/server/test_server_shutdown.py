"""SIGTERM while requests are being answered: a real ``memrag serve`` process (loopback only)
answers them a JSON 503 ``server_shutting_down`` with ``Retry-After`` (a stream: an error
event, then ``[DONE]``), logs one line per request and no traceback, and exits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

HERE = Path(__file__).parent
GRACE_SECONDS = 2.0
STEP_SECONDS = 0.2
START_TIMEOUT = 180.0  # importing torch in a fresh process on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until(condition: Any, timeout: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the server exited ({process.returncode}):\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting after {timeout:g}s:\n{log.read_text()}")
        time.sleep(0.1)


def _health(base_url: str) -> dict[str, Any] | None:
    try:
        response = httpx.get(base_url + "/healthz", timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def test_sigterm_answers_the_requests_in_flight_with_a_json_503(
    saved_store: Path, tmp_path: Path
) -> None:
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    command = [
        sys.executable, str(HERE / "slow_serve.py"), str(GRACE_SECONDS), str(STEP_SECONDS),
        "serve", "--store", str(saved_store / "store"),
        "--compressor", str(saved_store / "compressor"),
        "--host", "127.0.0.1", "--port", str(port), "--no-packed-weights", "--top-k", "1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MEMRAG_API_KEY"}
    body = {
        "messages": [{"role": "user", "content": "When was the Eiffel Tower completed?"}],
        "max_tokens": 1000,  # 200 s of decoding: still running when the grace period ends
        "stop": ["<never written>"],
    }
    results: dict[str, Any] = {}

    def plain() -> None:
        results["plain"] = httpx.post(base_url + "/v1/chat/completions", json=body, timeout=60)

    def streamed() -> None:
        lines: list[str] = []
        results["stream"] = lines
        with httpx.stream(
            "POST", base_url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60
        ) as response:
            results["stream_status"] = response.status_code
            lines.extend(line for line in response.iter_lines() if line)

    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    threads = [threading.Thread(target=plain), threading.Thread(target=streamed)]
    try:
        _wait_until(lambda: _health(base_url) is not None, START_TIMEOUT, process, log)
        for thread in threads:
            thread.start()
        # Both requests hold a slot and the stream has started (its first event is sent).
        _wait_until(
            lambda: (_health(base_url) or {}).get("active") == 2 and results.get("stream"),
            60, process, log,
        )
        time.sleep(3 * STEP_SECONDS)  # a few decoding steps
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(GRACE_SECONDS + 30)
        process.wait(GRACE_SECONDS + 30)
        stopped_after = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    output = log.read_text()
    assert process.returncode == 0, output
    assert stopped_after < GRACE_SECONDS + 15, output

    plain_response = results["plain"]
    assert plain_response.status_code == 503, plain_response.text
    assert plain_response.headers["content-type"].startswith("application/json")
    assert int(plain_response.headers["retry-after"]) > 0
    error = plain_response.json()["error"]
    assert error["code"] == "server_shutting_down" and error["type"] == "service_unavailable"

    assert results["stream_status"] == 200
    events = results["stream"]
    assert events[-1] == "data: [DONE]", events
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["error"]["code"] == "server_shutting_down", events
    assert not any('"finish_reason": "' in e for e in events), events  # it did not finish

    assert "Traceback" not in output and "CancelledError" not in output, output
    chat = [
        json.loads(line) for line in output.splitlines()
        if line.startswith("{") and '"/v1/chat/completions"' in line
    ]
    assert sorted(line["status"] for line in chat) == [200, 503], output
    assert {line["outcome"] for line in chat} == {"shutdown"}, output
