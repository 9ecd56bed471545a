"""Hostile requests against ``memrag serve`` with the real decoder: how fast each is refused or
cut short, and whether the server answers the next ordinary request at once.

For each decoding mode (one request at a time, batched) the script starts ``memrag serve``
(``--timeout`` short, ``--max-prompt-positions`` at its default) on a small store of the demo
corpus (the helpers of ``bench_server.py``: an untrained compressor over the embedded Gemma 3
270M) and sends, in order: an ordinary question; a 100 kB and a 1 MB message (refused before
any prefill: 400 ``context_length_exceeded`` or 413); a prompt under the position cap whose
prefill outlasts the timeout (504, the prefill stopped between two pieces of the prompt); an
ordinary question again, timed from the moment the 504 arrived. It writes the results as JSON
and a Markdown table (``docs/RELIABILITY.md`` quotes it).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/hostile_requests.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_server import MODES, ServerProcess, build_store  # noqa: E402

from memrag.utils.machine import cpu_model  # noqa: E402

QUESTION = "When was the university founded?"


def _send(url: str, content: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": "memrag",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    }
    started = time.perf_counter()
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {"status": response.status_code, "seconds": round(elapsed, 3)}
    if response.status_code == 200:
        result["answer"] = response.json()["choices"][0]["message"]["content"]
    else:
        try:
            error = response.json()["error"]
            result["code"] = error.get("code")
            result["message"] = error.get("message", "")[:160]
        except (ValueError, KeyError, TypeError):
            result["message"] = response.text[:160]
    return result


def run_mode(url: str, long_words: int, max_tokens: int) -> list[dict[str, Any]]:
    """The sequence of requests against one server; one row per request."""
    plan = [
        ("ordinary question", QUESTION),
        ("100 kB message", "word " * 20_000),
        ("1 MB message", "word " * 200_000),
        (
            f"{long_words:,}-word prompt under the cap (prefill > timeout)",
            "word " * long_words + QUESTION,
        ),
        ("ordinary question right after the 504", QUESTION),
    ]
    rows = []
    for name, content in plan:
        print(f"  {name} ...", flush=True)
        rows.append(
            {"request": name, "characters": len(content), **_send(url, content, max_tokens)}
        )
        print(f"    {rows[-1]}", flush=True)
    return rows


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        f"`{results['command']}` on {results['date']}: {machine['cpus']} CPU cores "
        f"({machine['processor']}), {machine['torch_threads']} torch thread(s), server "
        f"`--timeout {results['timeout']:g}`, `--max-prompt-positions` default (8,192), load "
        f"average {machine['load_average']} at the start.",
        "",
        "| mode | request | characters | status | code | seconds |",
        "| --- | --- | ---: | ---: | --- | ---: |",
    ]
    for mode, rows in results["modes"].items():
        for row in rows:
            lines.append(
                f"| {mode} | {row['request']} | {row['characters']:,} | {row['status']} | "
                f"{row.get('code') or ''} | {row['seconds']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=5.0, help="The servers' --timeout.")
    parser.add_argument(
        "--long-words",
        type=int,
        default=6_000,
        help="Words of the long prompt (under the position cap).",
    )
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--modes", default="one-at-a-time,batched")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "hostile-requests")
    args = parser.parse_args()
    modes = args.modes.split(",")
    results: dict[str, Any] = {
        "command": "python benchmarks/hostile_requests.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "timeout": args.timeout,
        "machine": {
            "cpus": os.cpu_count(),
            "processor": cpu_model(),
            "platform": platform.platform(),
            "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"),
            "load_average": round(os.getloadavg()[0], 1),
        },
        "modes": {},
    }
    with tempfile.TemporaryDirectory(prefix="memrag-hostile-") as tmp:
        root = Path(tmp)
        store, compressor, _ = build_store(root, "embedded", args.passages, "kv-exact:int8")
        for mode in modes:
            settings = {**MODES[mode], "timeout": args.timeout, "top_k": 1}
            server = ServerProcess(store, compressor, settings, root / f"{mode}.log")
            try:
                server.wait_ready()
                print(f"{mode}:", flush=True)
                results["modes"][mode] = run_mode(server.url, args.long_words, args.max_tokens)
            finally:
                server.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (args.out / "results.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
