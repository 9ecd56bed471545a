"""Retrieval side by side on a built store: dense, lexical, hybrid (several weights), and
reranking by the stored memory, with what each costs.

``quality``: for the questions of ``benchmarks/default_path.py`` (its ``store-inputs/questions.jsonl``)
over its store, recall@1 and recall@5 of the question's own passage for each first stage, and
for the hybrid top-``--rerank`` reranked by the decoder's likelihood of the question given each
candidate's memory (replacing the order, or fused with it by reciprocal rank); search time
p50 per mode, reranking time p50, and the question-only first-token time (the decoder's
prefill of the question prompt without any passage, one new token), so reranking's cost is
a ratio measured in the same run.

    python benchmarks/retrieval_quality.py quality \
        --store benchmarks/results/default-path/squad/store \
        --questions benchmarks/results/default-path/squad/store-inputs/questions.jsonl \
        --out benchmarks/results/default-path/squad/retrieval.json

``latency``: what hybrid adds to a search over ``--chunks`` chunks (SQuAD train passages with
the tiny in-process compressor's memory and hashed vectors, so the store builds in minutes):
p50 of dense and hybrid searches without reading memory, side by side.

    python benchmarks/retrieval_quality.py latency --chunks 20000 \
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

FIRST_STAGES = {
    "dense": ("dense", None),
    "lexical": ("lexical", None),
    "hybrid 1:1": ("hybrid", (1.0, 1.0)),
    "hybrid 1:2": ("hybrid", (1.0, 2.0)),
    "hybrid 2:1": ("hybrid", (2.0, 1.0)),
}


def environment() -> dict[str, Any]:
    import torch

    return {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
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
    reranker = MemoryReranker(store.compressor)
    found: dict[str, list[int]] = {name: [] for name in FIRST_STAGES}
    rerank_arms = ("hybrid 1:1 + rerank", "hybrid 1:1 + rerank fused")
    found.update({name: [] for name in rerank_arms})
    times: dict[str, list[float]] = {name: [] for name in FIRST_STAGES}
    rerank_s, question_only_s = [], []
    for record in questions:
        gold = passage_id(record.context)
        for name, (mode, weights) in FIRST_STAGES.items():
            started = time.perf_counter()
            hits = store.search(record.question, k=5, mode=mode, weights=weights, with_slots=False)
            times[name].append(time.perf_counter() - started)
            ids = [h.metadata.get("source_id") for h in hits]
            found[name].append(ids.index(gold) + 1 if gold in ids else 0)
        candidates = store.search(record.question, k=args.rerank, with_slots=True)
        started = time.perf_counter()
        scores = reranker.scores(record.question, candidates)
        rerank_s.append(time.perf_counter() - started)
        ids = [c.metadata.get("source_id") for c in candidates]
        replaced = [ids[i] for i in sorted(range(len(ids)), key=lambda i: -scores[i])]
        by_score = sorted(range(len(ids)), key=lambda i: -scores[i])
        fused_order = reciprocal_rank_fusion(
            [[(i, 0.0) for i in range(len(ids))], [(i, 0.0) for i in by_score]], [1.0, 1.0], len(ids)
        )
        fused = [ids[i] for i, _ in fused_order]
        for name, order in zip(rerank_arms, (replaced, fused)):
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
            "search_ms_p50": milliseconds(times.get(name, [])),
        }
        for name, ranks in found.items()
    }
    return {
        "settings": {k: str(v) for k, v in vars(args).items() if k != "func"},
        "environment": environment(),
        "questions": len(questions),
        "chunks": len(store),
        "results": table,
        "rerank_ms_p50": milliseconds(rerank_s),
        "question_only_first_token_ms_p50": milliseconds(question_only_s),
        "rerank_over_question_only": statistics.median(rerank_s) / statistics.median(question_only_s),
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
    with tempfile.TemporaryDirectory() as folder:
        store = MemoryStore.create(
            Path(folder) / "s", tiny_compressor(seed=0), "hashing:384", memory="embedding",
            fidelity="none",
        )
        for start in range(0, len(texts), 1000):
            batch = texts[start : start + 1000]
            store.add(batch, ids=[f"p{start + i}" for i in range(len(batch))])
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
    timing.add_argument("--out", required=True)
    timing.set_defaults(func=latency)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    report = args.func(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "settings"}, indent=1))


if __name__ == "__main__":
    main()
