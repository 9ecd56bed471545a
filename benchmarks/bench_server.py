"""Bounded load test of ``memrag serve`` on loopback: N concurrent clients for a fixed time.

The script builds a store from memrag's bundled demo corpus (100 SQuAD paragraphs), starts
``memrag serve`` on it as a subprocess on 127.0.0.1, and runs each scenario: ``--clients``
concurrent clients send chat completions (half of them streamed) for ``--duration`` seconds,
honouring ``Retry-After`` on a 429. It reports throughput, latency percentiles and time to
first token, checks that every request got a complete answer (a JSON completion with usage,
or a stream ending in ``data: [DONE]``) or a documented 429, writes the results as JSON under
``benchmarks/results/`` and regenerates ``benchmarks/README_server.md`` from every
``server_*.json`` there.

Scenarios:

* ``fits``: the queue holds every client (``--max-queue`` >= clients): no 429 expected.
* ``overload``: twice the clients, a queue of 2: the surplus is refused with 429 and
  ``Retry-After`` (documented behaviour), nothing else fails.

Models: ``--model tiny`` (default) is memrag's tiny random compressor (2 layers, hidden 32):
it measures the server itself — routing, validation, retrieval, queueing, streaming — with
decoding nearly free. ``--model embedded`` uses an untrained compressor over the embedded
Gemma 3 270M and the all-MiniLM-L6-v2 embedder: the per-request cost of the real decoder on
this machine (the first run de-quantizes the model once, a few minutes).

Usage::

    python benchmarks/bench_server.py                      # tiny, 2 scenarios x 30 s
    python benchmarks/bench_server.py --model embedded --duration 60 --clients 2 --passages 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------------- the store and server
def build_store(root: Path, model: str, passages: int) -> tuple[Path, Path, list[str]]:
    """A store of the demo corpus; returns (store dir, compressor dir, questions)."""
    from memrag.demo_corpus import load_demo_corpus
    from memrag.store import MemoryStore

    corpus = load_demo_corpus()[:passages]
    if model == "tiny":
        from memrag.testing import tiny_base_model, tiny_compressor

        base = tiny_base_model(seed=0, name=str(root / "base"))
        base.model.save_pretrained(root / "base")
        base.tokenizer.save_pretrained(root / "base")
        compressor = tiny_compressor(seed=0, base=base)
        compressor_dir = root / "compressor"
        compressor.save_pretrained(compressor_dir)
        embedder = "hashing:256"
    else:
        from memrag.compressor import Compressor

        # Untrained over the embedded base, saved so that the server loads the very same one
        # (its LoRA initialisation is random).
        compressor = Compressor.from_base("gemma-3-270m")
        compressor_dir = root / "compressor"
        compressor.save_pretrained(compressor_dir)
        embedder = None  # all-MiniLM-L6-v2 from its pip package
    with MemoryStore.create(root / "store", compressor, embedder, fidelity="none") as store:
        store.add(
            [p.text for p in corpus],
            ids=[p.id for p in corpus],
            metadatas=[{"title": p.title} for p in corpus],
        )
    questions = [q.question for p in corpus for q in p.questions]
    return root / "store", compressor_dir, questions


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``memrag serve`` in a subprocess on a loopback port."""

    def __init__(
        self, store: Path, compressor: Path | None, settings: dict[str, Any], log: Path
    ) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        command = [
            sys.executable,
            "-m",
            "memrag.cli",
            "serve",
            "--store",
            str(store),
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
        ]
        if compressor is not None:
            command += ["--compressor", str(compressor)]
        for name, value in settings.items():
            command += [f"--{name.replace('_', '-')}", str(value)]
        self.log_path = log
        self._log = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "MEMRAG_API_KEY": ""}
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def wait_ready(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self._log.flush()
                tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
                raise RuntimeError(f"memrag serve exited:\n{tail}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("memrag serve did not come up in time")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()

    def access_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return lines


# ---------------------------------------------------------------------- the load
@dataclass
class Outcome:
    """One request as the client saw it."""

    stream: bool
    status: int | None  # None: no HTTP answer (connection error, client timeout)
    latency_s: float
    complete: bool = False  # a full, well-formed answer
    ttft_s: float | None = None
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Scenario:
    name: str
    clients: int
    duration_s: float
    settings: dict[str, Any]
    outcomes: list[Outcome] = field(default_factory=list)
    elapsed_s: float = 0.0


async def one_request(
    http: httpx.AsyncClient, body: dict[str, Any], stream: bool
) -> tuple[Outcome, float]:
    """Sends one chat completion; returns the outcome and the Retry-After (0 if none)."""
    start = time.perf_counter()
    if not stream:
        response = await http.post("/v1/chat/completions", json=body)
        outcome = Outcome(False, response.status_code, time.perf_counter() - start)
        if response.status_code == 200:
            data = response.json()
            outcome.complete = (
                isinstance(data["choices"][0]["message"]["content"], str) and "usage" in data
            )
            outcome.completion_tokens = int(data["usage"]["completion_tokens"])
        retry = float(response.headers.get("retry-after", 0) or 0)
        return outcome, retry
    async with http.stream(
        "POST",
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    ) as response:
        outcome = Outcome(True, response.status_code, 0.0)
        if response.status_code != 200:
            await response.aread()
            outcome.latency_s = time.perf_counter() - start
            return outcome, float(response.headers.get("retry-after", 0) or 0)
        finished = done = False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                done = True
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                outcome.error = chunk["error"].get("code") or "stream_error"
                continue
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content") and outcome.ttft_s is None:
                    outcome.ttft_s = time.perf_counter() - start
                finished = finished or choice.get("finish_reason") is not None
            if chunk.get("usage"):
                outcome.completion_tokens = int(chunk["usage"]["completion_tokens"])
        outcome.latency_s = time.perf_counter() - start
        outcome.complete = done and finished and outcome.error is None
        return outcome, 0.0


async def client_loop(
    index: int,
    http: httpx.AsyncClient,
    questions: list[str],
    scenario: Scenario,
    deadline: float,
    max_tokens: int,
    stream_fraction: float,
) -> None:
    rng = random.Random(index)
    while time.monotonic() < deadline:
        question = rng.choice(questions)
        stream = rng.random() < stream_fraction
        body = {
            "model": "memrag",
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens,
        }
        start = time.perf_counter()
        try:
            outcome, retry = await one_request(http, body, stream)
        except (httpx.HTTPError, json.JSONDecodeError, KeyError) as err:
            outcome, retry = (
                Outcome(stream, None, time.perf_counter() - start, error=type(err).__name__),
                0.0,
            )
        scenario.outcomes.append(outcome)
        if retry:
            await asyncio.sleep(min(retry, max(0.0, deadline - time.monotonic())))


async def run_load(
    url: str, scenario: Scenario, questions: list[str], max_tokens: int, stream_fraction: float
) -> None:
    limits = httpx.Limits(
        max_connections=scenario.clients, max_keepalive_connections=scenario.clients
    )
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(120.0)) as http:
        start = time.monotonic()
        deadline = start + scenario.duration_s
        await asyncio.gather(
            *(
                client_loop(i, http, questions, scenario, deadline, max_tokens, stream_fraction)
                for i in range(scenario.clients)
            )
        )
        scenario.elapsed_s = time.monotonic() - start


# ---------------------------------------------------------------------- reporting
def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    array = np.asarray(values) * 1000
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "p99": round(float(p99), 1),
        "max": round(float(array.max()), 1),
    }


def summarize(scenario: Scenario, server_lines: list[dict[str, Any]]) -> dict[str, Any]:
    outcomes = scenario.outcomes
    ok = [o for o in outcomes if o.status == 200 and o.complete]
    refused = [o for o in outcomes if o.status == 429]
    failed = [o for o in outcomes if o not in ok and o.status != 429]
    chats = [line for line in server_lines if line.get("path") == "/v1/chat/completions"]
    return {
        "scenario": scenario.name,
        "clients": scenario.clients,
        "duration_s": round(scenario.elapsed_s, 1),
        "settings": scenario.settings,
        "requests_sent": len(outcomes),
        "completed": len(ok),
        "refused_429": len(refused),
        "failed": len(failed),
        "failures": dict(Counter(o.error or f"http_{o.status}" for o in failed)),
        "statuses": dict(Counter(str(o.status) for o in outcomes)),
        "server_logged": len(chats),
        "lost": len(outcomes) - len(chats),
        "throughput_rps": round(len(ok) / scenario.elapsed_s, 2),
        "tokens_per_s": round(sum(o.completion_tokens for o in ok) / scenario.elapsed_s, 1),
        "latency_ms": percentiles([o.latency_s for o in ok]),
        "latency_429_ms": percentiles([o.latency_s for o in refused]),
        "ttft_ms_streamed": percentiles(
            [o.ttft_s for o in ok if o.stream and o.ttft_s is not None]
        ),
        "streamed": sum(o.stream for o in ok),
        "server_queue_ms_p99": percentiles(
            [line["queue_ms"] / 1000 for line in chats if "queue_ms" in line]
        )["p99"],
    }


def markdown_section(results: dict[str, Any]) -> str:
    """The markdown table of one run."""
    rows = []
    for s in results["scenarios"]:
        rows.append(
            f"| {s['scenario']} | {s['clients']} | {s['settings']['max_concurrent']} / {s['settings']['max_queue']} "
            f"| {s['duration_s']} | {s['requests_sent']} | {s['completed']} | {s['refused_429']} | {s['failed']} "
            f"| {s['lost']} | {s['throughput_rps']} | {s['tokens_per_s']} | {s['latency_ms']['p50']} "
            f"| {s['latency_ms']['p99']} | {s['ttft_ms_streamed']['p50']} |"
        )
    machine = results["machine"]
    return "\n".join(
        [
            f"### `--model {results['model']}`: {results['description']}",
            "",
            (
                f"`{results['command']}` on {results['date']}: {machine['cpus']} CPU cores, "
                f"Python {machine['python']}, load average {machine['load_average']} when it started "
                f"(the machine is shared); {results['passages']} passages, top-{results['top_k']} "
                f"retrieval, at most {results['max_tokens']} new tokens per answer, half the requests "
                "streamed."
            ),
            "",
            (
                "| scenario | clients | slots / queue | s | sent | completed | 429 | failed | lost "
                "| req/s | tokens/s | p50 ms | p99 ms | TTFT p50 ms |"
            ),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
        ]
    )


def markdown(result_files: list[Path]) -> str:
    """The README snippet: how to run, what the columns mean, a table per results file."""
    sections = [
        markdown_section(json.loads(path.read_text(encoding="utf-8"))) for path in result_files
    ]
    return "\n".join(
        [
            "## Server load test",
            "",
            (
                "`benchmarks/bench_server.py` starts `memrag serve` on a store of the bundled demo "
                "corpus (loopback only) and runs two bounded scenarios: *fits* (N clients, a queue "
                "that holds them all: no 429 expected) and *overload* (2N clients, one generation slot "
                "and a queue of 2: the surplus is refused with 429 + `Retry-After`, the documented "
                "behaviour; clients wait that long and go on). It exits non-zero if any request fails "
                "or is lost, or *fits* sees a 429."
            ),
            "",
            (
                "*completed*: a full answer (JSON with usage, or a stream ending in `data: [DONE]`); "
                "*429*: refused because the bounded queue was full; *failed*: anything else (errors, "
                "timeouts, broken streams); *lost*: requests sent minus requests the server logged. "
                "Latencies are those of completed requests as the client measured them (queue wait "
                "included); TTFT is the time to the first streamed token. One slot: the compressor "
                "serialises its decoder, so the queue, not parallel decoding, absorbs concurrency."
            ),
            "",
            *sections,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "embedded"), default="tiny")
    parser.add_argument(
        "--clients",
        type=int,
        default=4,
        help="Clients in the 'fits' scenario (twice that in 'overload').",
    )
    parser.add_argument(
        "--duration", type=float, default=30.0, help="Seconds of load per scenario."
    )
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--passages", type=int, default=100, help="Demo passages in the store.")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--stream-fraction", type=float, default=0.5)
    parser.add_argument("--scenarios", default="fits,overload")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Results JSON (default: benchmarks/results/server_<model>.json).",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=HERE / "README_server.md",
        help="Snippet written from every server_*.json next to --out.",
    )
    args = parser.parse_args()
    if args.duration > 120 or args.clients > 64:
        parser.error("keep the load bounded: --duration <= 120 and --clients <= 64")

    plans = {
        "fits": Scenario(
            "fits",
            args.clients,
            args.duration,
            {"max_concurrent": 1, "max_queue": args.clients, "timeout": 60},
        ),
        "overload": Scenario(
            "overload",
            2 * args.clients,
            args.duration,
            {"max_concurrent": 1, "max_queue": 2, "timeout": 60},
        ),
    }
    chosen = [plans[name] for name in args.scenarios.split(",")]
    load_average = round(os.getloadavg()[0], 1)
    with tempfile.TemporaryDirectory(prefix="memrag-bench-server-") as tmp:
        root = Path(tmp)
        print(f"building the store ({args.model}, {args.passages} passages) ...", flush=True)
        start = time.perf_counter()
        store, compressor, questions = build_store(root, args.model, args.passages)
        print(f"  built in {time.perf_counter() - start:.1f}s", flush=True)
        summaries = []
        for scenario in chosen:
            settings = {
                **scenario.settings,
                "top_k": args.top_k,
                "default_max_tokens": args.max_tokens,
            }
            server = ServerProcess(
                store, compressor, settings, root / f"server-{scenario.name}.log"
            )
            try:
                server.wait_ready()
                print(
                    f"scenario {scenario.name}: {scenario.clients} clients for {scenario.duration_s:g}s ...",
                    flush=True,
                )
                asyncio.run(
                    run_load(server.url, scenario, questions, args.max_tokens, args.stream_fraction)
                )
            finally:
                server.stop()
            summary = summarize(scenario, server.access_lines())
            summaries.append(summary)
            print(json.dumps(summary, indent=2), flush=True)
    results = {
        "benchmark": "memrag serve load test",
        "model": args.model,
        "description": (
            "tiny random compressor (measures the server: routing, retrieval, queueing, streaming)"
            if args.model == "tiny"
            else "untrained compressor over the embedded Gemma 3 270M, all-MiniLM-L6-v2 retrieval"
        ),
        "command": " ".join(["python benchmarks/bench_server.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average": load_average,
        },
        "max_tokens": args.max_tokens,
        "top_k": args.top_k,
        "passages": args.passages,
        "scenarios": summaries,
    }
    out = args.out or HERE / "results" / f"server_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    args.markdown.write_text(markdown(sorted(out.parent.glob("server_*.json"))), encoding="utf-8")
    print(f"wrote {out} and {args.markdown}")
    bad = [
        s
        for s in summaries
        if s["failed"] or s["lost"] or (s["scenario"] == "fits" and s["refused_429"])
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
