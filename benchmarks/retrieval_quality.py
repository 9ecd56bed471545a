"""Retrieval side by side on a built store: dense, lexical, hybrid (several weights), and
reranking by the stored memory, with what each costs.

``quality``: for the questions of ``benchmarks/default_path.py`` (its ``store-inputs/questions.jsonl``)
over its store, recall@1 and recall@5 of the question's own passage for each first stage, and
for the hybrid top-``--rerank`` reranked by the decoder's likelihood of the question given each
candidate's memory (replacing the order, fused with it by reciprocal rank, content tokens only,
three candidates); the time of each search and each reranking (p50), and the question-only
first-token time (the decoder's
prefill of the question prompt without any passage, one new token), so reranking's cost is
a ratio measured in the same run.

    python benchmarks/retrieval_quality.py quality \
        --store benchmarks/results/default-path/squad/store \
        --questions benchmarks/results/default-path/squad/store-inputs/questions.jsonl \
        --out benchmarks/results/default-path/squad/retrieval.json

``latency``: what hybrid adds to a search over ``--chunks`` chunks (SQuAD train passages with
the tiny in-process compressor's memory and hashed vectors, so the store builds in minutes):
p50 of dense and hybrid searches without reading memory, side by side.

    python benchmarks/retrieval_quality.py latency --chunks 20000 --store /tmp/latency-store \
        --out benchmarks/results/default-path/search_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from memrag.utils.machine import cpu_model

FIRST_STAGES = {
    "dense": ("dense", None),
    "lexical": ("lexical", None),
    "hybrid 1:1": ("hybrid", (1.0, 1.0)),
    "hybrid 1:2": ("hybrid", (1.0, 2.0)),
    "hybrid 2:1": ("hybrid", (2.0, 1.0)),
}


def environment() -> dict[str, Any]:
    import torch

    return {"machine": cpu_model(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def milliseconds(values: list[float]) -> float:
    return 1000 * statistics.median(values) if values else float("nan")


def quality(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from memrag.bench.corpus import passage_id
    from memrag.data.readers import iter_qa_records
    from memrag.generation import GenerationOptions
    from memrag.prompts import qa_prompt
    from memrag.store import MemoryStore
    from memrag.store.rerank import MemoryReranker
    from memrag.store.retrieval import reciprocal_rank_fusion

    questions = list(iter_qa_records(args.questions))[: args.limit]
    store = MemoryStore.open(args.store, read_only=True)
    store.search("warm up", k=1, with_slots=False)
    rerank_arms = {
        f"hybrid + rerank {args.rerank}": (args.rerank, False, False),
        f"hybrid + rerank {args.rerank}, fused with the first stage": (args.rerank, False, True),
        f"hybrid + rerank {args.rerank}, content tokens only": (args.rerank, True, False),
        "hybrid + rerank 3": (3, False, False),
        "hybrid + rerank 10": (10, False, False),
    }
    rerankers = {content: MemoryReranker(store.compressor, content_only=content) for content in (False, True)}
    found: dict[str, list[int]] = {name: [] for name in [*FIRST_STAGES, *rerank_arms]}
    times: dict[str, list[float]] = {name: [] for name in found}
    question_only_s = []
    for record in questions:
        gold = passage_id(record.context)
        for name, (mode, weights) in FIRST_STAGES.items():
            started = time.perf_counter()
            hits = store.search(record.question, k=5, mode=mode, weights=weights, with_slots=False)
            times[name].append(time.perf_counter() - started)
            ids = [h.metadata.get("source_id") for h in hits]
            found[name].append(ids.index(gold) + 1 if gold in ids else 0)
        candidates = {
            count: store.search(record.question, k=count, with_slots=True)
            for count in {count for count, _, _ in rerank_arms.values()}
        }
        for name, (count, content, fused) in rerank_arms.items():
            mine = candidates[count]
            started = time.perf_counter()
            scores = rerankers[content].scores(record.question, mine)
            times[name].append(time.perf_counter() - started)
            ids = [c.metadata.get("source_id") for c in mine]
            by_score = sorted(range(len(ids)), key=lambda i: -scores[i])
            if fused:
                first = [(i, 0.0) for i in range(len(ids))]
                by_score = [i for i, _ in reciprocal_rank_fusion(
                    [first, [(i, 0.0) for i in by_score]], [1.0, 1.0], len(ids))]
            order = [ids[i] for i in by_score]
            found[name].append(order.index(gold) + 1 if gold in order else 0)
        prompt = qa_prompt(store.compressor.tokenizer, [], record.question)
        started = time.perf_counter()
        with torch.inference_mode():
            store.compressor.generate([prompt], GenerationOptions(max_new_tokens=1))
        question_only_s.append(time.perf_counter() - started)
    n = max(len(questions), 1)
    table = {
        name: {
            "recall_at_1": 100 * sum(r == 1 for r in ranks) / n,
            "recall_at_5": 100 * sum(0 < r <= 5 for r in ranks) / n,
            "ms_p50": milliseconds(times[name]),
            "over_question_only": statistics.median(times[name]) / statistics.median(question_only_s),
        }
        for name, ranks in found.items()
    }
    return {
        "settings": {k: str(v) for k, v in vars(args).items() if k != "func"},
        "environment": environment(),
        "questions": len(questions),
        "chunks": len(store),
        "results": table,
        "question_only_first_token_ms_p50": milliseconds(question_only_s),
    }


def latency(args: argparse.Namespace) -> dict[str, Any]:
    from memrag.data.readers import iter_unique_contexts
    from memrag.store import MemoryStore
    from memrag.testing import tiny_compressor

    texts = []
    for text in iter_unique_contexts(args.data):
        texts.append(text)
        if len(texts) >= args.chunks:
            break
    questions = [t.split(".")[0][:120] for t in texts[:: max(len(texts) // args.queries, 1)]]
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(args.store) if args.store else Path(scratch) / "s"
        if not (path / "manifest.json").is_file():  # built once, then reused for timing
            store = MemoryStore.create(
                path, tiny_compressor(seed=0), "hashing:384", memory="embedding", fidelity="none"
            )
            for start in range(0, len(texts), 1000):
                batch = texts[start : start + 1000]
                store.add(batch, ids=[f"p{start + i}" for i in range(len(batch))])
            store.close()
        store = MemoryStore.open(path, read_only=True)
        timings: dict[str, list[float]] = {"dense": [], "hybrid": [], "lexical": []}
        for question in questions:
            for mode in timings:
                started = time.perf_counter()
                store.search(question, k=5, mode=mode, with_slots=False)
                timings[mode].append(time.perf_counter() - started)
        chunks = len(store)
        store.close()
    dense, hybrid = milliseconds(timings["dense"]), milliseconds(timings["hybrid"])
    return {
        "settings": {k: str(v) for k, v in vars(args).items() if k != "func"},
        "environment": environment(),
        "chunks": chunks,
        "queries": len(questions),
        "search_ms_p50": {mode: milliseconds(values) for mode, values in timings.items()},
        "hybrid_adds_ms_p50": hybrid - dense,
    }


def markdown(report: dict[str, Any]) -> str:
    """The quality report as a table (the latency report as one line)."""
    env = report["environment"]
    head = f"{env['machine']}, {env['cpus']} cores, {env['torch_threads']} torch thread(s)"
    if "results" not in report:
        p50 = report["search_ms_p50"]
        return (
            f"{report['chunks']:,} chunks, {report['queries']} queries ({head}): search p50 "
            f"dense {p50['dense']:.1f} ms, lexical {p50['lexical']:.1f} ms, hybrid "
            f"{p50['hybrid']:.1f} ms; hybrid adds {report['hybrid_adds_ms_p50']:.1f} ms\n"
        )
    lines = [
        f"{report['questions']} questions over {report['chunks']:,} chunks ({head}); the "
        f"question-only first token takes {report['question_only_first_token_ms_p50']:.0f} ms "
        "(p50)",
        "",
        "| retrieval | recall@1 | recall@5 | ms (p50) | x question-only first token |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in report["results"].items():
        recall5 = f"{row['recall_at_5']:.1f}" if "rerank" not in name else ""
        lines.append(
            f"| {name} | {row['recall_at_1']:.1f} | {recall5} | {row['ms_p50']:.1f} | "
            f"{row['over_question_only']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(required=True)
    measure = commands.add_parser("quality", help="recall and costs on a built store")
    measure.add_argument("--store", required=True)
    measure.add_argument("--questions", required=True)
    measure.add_argument("--limit", type=int, default=500)
    measure.add_argument("--rerank", type=int, default=5)
    measure.add_argument("--out", required=True)
    measure.set_defaults(func=quality)
    timing = commands.add_parser("latency", help="what hybrid adds over many chunks")
    timing.add_argument("--data", default="../shared/data/squad_v1.1/train.jsonl.gz")
    timing.add_argument("--chunks", type=int, default=20000)
    timing.add_argument("--queries", type=int, default=300)
    timing.add_argument("--store", default=None, help="keep the store here and reuse it")
    timing.add_argument("--out", required=True)
    timing.set_defaults(func=latency)
    args = parser.parse_args()
    import faiss
    import torch

    torch.set_num_threads(1)  # one thread for the model and FAISS, as the served benchmark runs
    faiss.omp_set_num_threads(1)
    report = args.func(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    Path(args.out).with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


if __name__ == "__main__":
    main()
