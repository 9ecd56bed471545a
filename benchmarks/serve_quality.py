"""End-to-end answer quality through ``memrag serve`` and the official ``openai`` client.

What a chatbot backend's user gets: the benchmark's questions and passages
(:func:`memrag.bench.corpus.select_corpus`: the same seeded questions and 500-passage corpus as
``memrag bench``), each memory kind built into a store by ``memrag index build`` (one chunk per
passage), ``memrag serve`` started on it (loopback only), and every question asked as one user
message through ``openai.OpenAI().chat.completions.create`` with the server's defaults
(``top_k``, ``max_tokens``, stop) unless ``--top-k`` / ``--max-tokens`` say otherwise. The
``text`` arm is the same server with ``--context text`` over the first store: classic RAG
through the same model, prompt and retrieval. Answers are scored with SQuAD EM, F1 and
``contains`` (the gold answer inside the answer).

    python benchmarks/serve_quality.py --limit 100 --arms kv:int8,kv-exact:int8,text \
        --top-k 1,3,5 --bench-json benchmarks/results/serve-quality/bench.json \
        --out benchmarks/results/serve-quality

Writes ``<out>/serve_quality.json`` (figures and every answer) and ``<out>/serve_quality.md``;
with ``--bench-json`` (a ``memrag bench`` report of the same questions) the table puts the
bench's figures for the same kind and k beside the server's. Stores are kept in
``--stores`` (default ``<out>/stores``, ignored by git) and reused when they exist.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: The memory kind whose store the ``text`` arm is served from (its text, not its memory).
TEXT_ARM = "text"
#: The ``memrag`` command next to this Python.
MEMRAG = str(Path(sys.executable).with_name("memrag"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_store(
    corpus_file: Path, store: Path, memory: str, threads: int, log: Path, compressor: str | None = None
) -> float:
    """Builds ``store`` with ``memrag index build`` (whole passages, no fidelity gate); seconds.

    ``compressor`` (a shipped name or directory) makes its memory; ``None``: the default.
    """
    if (store / "manifest.json").is_file():
        return 0.0
    started = time.perf_counter()
    command = [
        MEMRAG, "index", "build", "--corpus", str(corpus_file),
        "--store", str(store), "--memory", memory, "--no-fidelity", "--chunk-tokens", "1024",
        "--threads", str(threads), "--quiet",
    ]
    if compressor is not None:
        command += ["--compressor", compressor]
    with open(log, "a", encoding="utf-8") as out:
        subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


class Server:
    """``memrag serve`` in a subprocess on a free loopback port, stopped on exit."""

    def __init__(self, store: Path, threads: int, log: Path, extra: list[str]) -> None:
        self.port = _free_port()
        command = [
            MEMRAG, "serve", "--store", str(store), "--host", "127.0.0.1",
            "--port", str(self.port), "--read-only", *extra,
        ]
        self._log = open(log, "a", encoding="utf-8")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout: float = 600.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"memrag serve exited with {self.process.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError("memrag serve did not become ready")

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def ask_all(base_url: str, questions: list[Any], top_k: int | None, max_tokens: int | None) -> list[dict[str, Any]]:
    """Every question as one user message through the openai client, greedy."""
    from openai import OpenAI

    from memrag.eval.metrics import answer_scores

    client = OpenAI(base_url=base_url, api_key="unused", timeout=600, max_retries=0)
    answers = []
    for record in questions:
        kwargs: dict[str, Any] = {}
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        if top_k is not None:
            kwargs["extra_body"] = {"memrag": {"top_k": top_k}}
        started = time.perf_counter()
        response = client.chat.completions.create(
            model="memrag",
            messages=[{"role": "user", "content": record.question}],
            temperature=0,
            **kwargs,
        )
        seconds = time.perf_counter() - started
        text = response.choices[0].message.content or ""
        documents = (response.model_extra or {}).get("memrag_documents") or []
        answers.append(
            {
                "id": record.id,
                "question": record.question,
                "prediction": text,
                "answers": record.answers,
                **answer_scores(text.strip(), record.answers),
                "finish_reason": response.choices[0].finish_reason,
                "completion_tokens": response.usage.completion_tokens if response.usage else None,
                "seconds": seconds,
                "documents": [d.get("source_id") for d in documents],
                "spliced": [d.get("spliced") for d in documents],
            }
        )
    return answers


def summarize(answers: list[dict[str, Any]]) -> dict[str, float]:
    """Mean EM, F1 and contains in percent, and timing."""
    n = max(len(answers), 1)
    return {
        "exact_match": 100 * sum(a["exact_match"] for a in answers) / n,
        "f1": 100 * sum(a["f1"] for a in answers) / n,
        "contains": 100 * sum(a["contains"] for a in answers) / n,
        "mean_answer_tokens": sum(a["completion_tokens"] or 0 for a in answers) / n,
        "seconds_p50": sorted(a["seconds"] for a in answers)[len(answers) // 2] if answers else 0.0,
        "stopped": sum(a["finish_reason"] == "stop" for a in answers) / n,
        "n": len(answers),
    }


#: Settings that choose the questions and the corpus searched; a bench report compared with a
#: server run must share them (``--limit`` also changes the corpus: it holds the gold passages).
SAME_QUESTIONS = ("data", "limit", "corpus_size", "seed")


def bench_figures(path: str | None, settings: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """``{mode: figures}`` and k of a ``memrag bench`` report (empty without one).

    Raises:
        SystemExit: the report asked other questions over another corpus than ``settings``
            (the server run's) say, naming the setting that differs.
    """
    if not path:
        return {}, None
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{path}: not a memrag bench report ({err})") from None
    for key in SAME_QUESTIONS:
        ours, theirs = settings.get(key), report["settings"].get(key)
        if key == "data" and ours is not None and theirs is not None:
            ours, theirs = Path(ours).name, Path(theirs).name
        if ours != theirs:
            raise SystemExit(
                f"{path}: its {key} is {theirs!r}, the server run's is {ours!r}: a bench report "
                "of other questions or another corpus cannot stand beside this run"
            )
    return report["results"], int(report["settings"]["k"])


def markdown(report: dict[str, Any]) -> str:
    """The results table (with the bench's figures beside the server's, when given)."""
    bench = report.get("bench", {})
    bench_k = report.get("bench_k")
    lines = [
        "| arm | top_k | EM | F1 | contains | F1 / text F1 (same k) | `memrag bench` F1 / contains "
        "| answer tokens | p50 s | n |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["results"]:
        text = next(
            (r for r in report["results"] if r["arm"] == TEXT_ARM and r["top_k"] == row["top_k"]), None
        )
        ratio = f"{row['f1'] / text['f1']:.2f}" if text and text["f1"] else ""
        figures = bench.get(row["arm"]) if bench_k == row["top_k"] else None
        bench_cell = (
            f"{figures['f1']:.1f} / {figures.get('contains', float('nan')):.1f}" if figures else ""
        )
        lines.append(
            f"| `{row['arm']}` | {row['top_k']} | {row['exact_match']:.1f} | {row['f1']:.1f} | "
            f"{row['contains']:.1f} | {ratio} | {bench_cell} | {row['mean_answer_tokens']:.1f} | "
            f"{row['seconds_p50']:.2f} | {row['n']} |"
        )
    return "\n".join(lines) + "\n"


def render(out: Path, bench_json: str | None) -> None:
    """Rewrites ``serve_quality.md`` (and the bench figures in the JSON) from the JSON."""
    path = out / "serve_quality.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    if bench_json:
        bench, bench_k = bench_figures(bench_json, report["settings"])
        arms = {r["arm"] for r in report["results"]}
        report["bench"] = {k: v for k, v in bench.items() if k in arms}
        report["bench_k"] = bench_k
        path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "serve_quality.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", default="../shared/data/squad_v1.1/dev.jsonl.gz")
    parser.add_argument("--limit", type=int, default=100, help="questions (seeded sample)")
    parser.add_argument("--corpus-size", type=int, default=500, help="passages in each store")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default="kv:int8,kv-exact:int8,text", help="memory kinds, and text")
    parser.add_argument(
        "--top-k", default="", help="comma-separated top_k values to ask with (default: the server's)"
    )
    parser.add_argument("--max-tokens", type=int, default=None, help="default: the server's")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of build and server")
    parser.add_argument("--bench-json", default=None, help="memrag bench report of the same questions")
    parser.add_argument(
        "--compressor", default=None, help="compressor of the stores built (default: the shipped default)"
    )
    parser.add_argument("--out", default="benchmarks/results/serve-quality")
    parser.add_argument("--stores", default=None, help="where the stores are built (default: <out>/stores)")
    parser.add_argument(
        "--render-only", action="store_true",
        help="rewrite <out>/serve_quality.md from its JSON (e.g. with a --bench-json run later)",
    )
    args = parser.parse_args()
    if args.render_only:
        render(Path(args.out), args.bench_json)
        return

    bench, bench_k = bench_figures(args.bench_json, vars(args))  # refused before hours of work
    from memrag.bench.corpus import select_corpus

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stores_dir = Path(args.stores) if args.stores else out / "stores"
    stores_dir.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    corpus = select_corpus(args.data, limit=args.limit, corpus_size=args.corpus_size, seed=args.seed)
    corpus_file = stores_dir / "corpus.jsonl"
    with open(corpus_file, "w", encoding="utf-8") as handle:
        for passage_id, text in corpus.passages.items():
            handle.write(json.dumps({"id": passage_id, "text": text}) + "\n")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    kinds = [a for a in arms if a != TEXT_ARM]
    if TEXT_ARM in arms and not kinds:
        raise SystemExit("the text arm is served from a memory store: name at least one kind")
    build_s = {}
    stores = {}
    for kind in kinds:
        stores[kind] = stores_dir / kind.replace(":", "-")
        build_s[kind] = build_store(corpus_file, stores[kind], kind, args.threads, log, args.compressor)
    top_ks: list[int | None] = [int(k) for k in args.top_k.split(",") if k.strip()] or [None]
    results, answers = [], {}
    for arm in arms:
        store = stores[kinds[0]] if arm == TEXT_ARM else stores[arm]
        extra = ["--context", "text"] if arm == TEXT_ARM else []
        with Server(store, args.threads, log, extra) as server:
            server.wait_ready()
            import httpx

            health = httpx.get(f"http://127.0.0.1:{server.port}/healthz").json()
            default_k = health["defaults"]["top_k"]
            for top_k in top_ks:
                asked = ask_all(server.base_url, corpus.questions, top_k, args.max_tokens)
                k = top_k if top_k is not None else default_k
                gold = sum(
                    corpus.gold_id(r) in a["documents"] for r, a in zip(corpus.questions, asked)
                ) / max(len(asked), 1)
                results.append({"arm": arm, "top_k": k, **summarize(asked), "gold_retrieved": gold})
                answers[f"{arm}@{k}"] = asked
                print(json.dumps(results[-1]), flush=True)
    report = {
        "settings": {**vars(args), "questions": len(corpus.questions), "passages": len(corpus.passages)},
        "environment": {
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "build_s": build_s,
        "results": results,
        "bench": {k: v for k, v in bench.items() if k in arms or k == TEXT_ARM},
        "bench_k": bench_k,
        "answers": answers,
    }
    (out / "serve_quality.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "serve_quality.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


if __name__ == "__main__":
    main()
