"""Benchmarks of the memory store and the offline compression job.

Three parts (``--part``):

* ``compression``: the indexing job on real text (Wikipedia articles from
  ``../shared/data`` when present, else the bundled demo corpus) cut into 128-token chunks,
  with the real default base model (Gemma 3 270M; an untrained compressor has the same
  cost) and the default embedder (all-MiniLM-L6-v2). Reports tokens/s of each step
  (embedding, compression, fidelity scoring) and of the whole job, and the bytes per chunk on
  disk (slots, vectors, text, database, index).
* ``index``: search latency (one query at a time, p50 / p99) and recall@10 against exact
  search, of the store's flat, HNSW and IVF indexes (:class:`memrag.store.index.VectorIndex`
  with the store's defaults; at 1M vectors HNSW is built with M=16, efConstruction=40 to
  keep the build time sane on two cores) over **synthetic** vectors at 100k and 1M: 384-d
  (MiniLM's width) with a low intrinsic dimension like real sentence embeddings (1,000
  clusters in a 48-d latent space, mapped linearly to 384-d, plus isotropic noise), unit
  length. Queries are timed with one FAISS (OpenMP) thread, the setting for serving single
  queries on a small, busy machine.
* ``store``: end-to-end ``MemoryStore.search_by_vector`` latency with slots (SQLite lookup
  + memory-mapped shard reads) on a flat store of synthetic vectors and synthetic
  Gemma-sized slots (32 x 640 float16 per chunk), plus MiniLM query-embedding latency.

Results go to ``benchmarks/results/store_*.json`` and a Markdown table to
``benchmarks/results/store_tables.md``. Set ``MEMRAG_CACHE_DIR`` to reuse a de-quantized
copy of the base model (the first load de-quantizes the GGUF, about two minutes).

    python benchmarks/bench_store.py --part all
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WIKIPEDIA = ROOT.parent / "shared" / "data" / "wikipedia_en_partial" / "articles.jsonl.gz"
DIMENSION = 384

logger = logging.getLogger("bench_store")


def machine() -> dict[str, Any]:
    """What the numbers were measured on (load average: other processes share the CPU)."""
    import torch

    from memrag.utils.machine import cpu_model

    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 / p99 / mean in milliseconds of samples in seconds."""
    ms = np.asarray(samples) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


# ---------------------------------------------------------------------- compression
def corpus_documents(limit_chars: int) -> Iterator[dict[str, Any]]:
    """Wikipedia articles (or the demo passages) until ``limit_chars`` characters."""
    total = 0
    if WIKIPEDIA.is_file():
        with gzip.open(WIKIPEDIA, "rt", encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                yield {"id": row["id"], "text": row["text"], "metadata": {"title": row["title"]}}
                total += len(row["text"])
                if total >= limit_chars:
                    return
    else:
        from memrag.demo_corpus import load_demo_corpus

        for i, passage in enumerate(load_demo_corpus()):
            yield {"id": f"demo{i}", "text": passage.text, "metadata": {"title": passage.title}}
            total += len(passage.text)
            if total >= limit_chars:
                return


def bench_compression(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from memrag.compressor import Compressor
    from memrag.indexing import BuildOptions, build_index
    from memrag.store import MemoryStore, load_embedder
    from memrag.store.chunking import Chunker
    from memrag.store.fidelity import FidelityScorer

    compressor, load_seconds = timed(lambda: Compressor.from_base(args.base_model))
    embedder = load_embedder(None)
    chunker = Chunker(compressor.tokenizer, 128, 16)
    # Full-length chunks only (120-128 tokens), so the numbers are those of 128-token chunks.
    chunks: list[str] = []
    for document in corpus_documents(limit_chars=args.chunks * 5000):
        chunks += [c.text for c in chunker.chunk(document["text"]) if c.num_tokens >= 120]
        if len(chunks) >= args.chunks:
            break
    chunks = chunks[: args.chunks]
    corpus = work / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": f"c{i}", "text": t}) + "\n" for i, t in enumerate(chunks)),
        encoding="utf-8",
    )
    tokens = sum(chunker.count(c) for c in chunks)
    logger.info("%d chunks, %d tokens", len(chunks), tokens)

    vectors, embed_seconds = timed(lambda: embedder.embed_documents(chunks))
    slots, compress_seconds = timed(lambda: compressor.compress(chunks, batch_size=args.batch_size))
    stored = [s.to(dtype=torch.float16) for s in slots]
    scorer = FidelityScorer(compressor)
    fidelity, fidelity_seconds = timed(lambda: scorer.score(chunks, stored))
    full_scorer = FidelityScorer(compressor, sample_tokens=None)
    sample = min(8, len(chunks))
    _, full_fidelity_seconds = timed(lambda: full_scorer.score(chunks[:sample], stored[:sample]))

    store_path = work / "store"
    report = build_index(
        corpus,
        store_path,
        compressor=compressor,
        embedder=embedder,
        options=BuildOptions(
            batch_chunks=32, compress_batch_size=args.batch_size, show_progress=False
        ),
        create_options={"chunk_tokens": 128, "chunk_overlap": 16},
    )
    store = MemoryStore.open(store_path, read_only=True)
    info = store.info()
    count = info["counts"]["chunks"]
    texts = [r.text for r in store.db.iter_rows()]
    slot_rows = info["counts"]["slots"]
    hidden = compressor.hidden_size
    disk = info["disk_bytes"]
    total_dir = sum(p.stat().st_size for p in store_path.rglob("*") if p.is_file())
    result = {
        "machine": machine(),
        "base_model": args.base_model,
        "compressor": "untrained (Compressor.from_base): same compute as a trained one",
        "embedder": embedder.model_id,
        "corpus": str(WIKIPEDIA.relative_to(ROOT.parent)) if WIKIPEDIA.is_file() else "demo corpus",
        "chunk_tokens": 128,
        "chunks": len(chunks),
        "tokens": tokens,
        "compress_batch_size": args.batch_size,
        "model_load_seconds": round(load_seconds, 1),
        "steps_tokens_per_second": {
            "embed (MiniLM)": round(tokens / embed_seconds, 1),
            "compress (encoder)": round(tokens / compress_seconds, 1),
            "fidelity, 32 sampled tokens": round(tokens / fidelity_seconds, 1),
            "fidelity, every token": round(
                sum(chunker.count(c) for c in chunks[:sample]) / full_fidelity_seconds, 1
            ),
        },
        "job": {
            "chunks_written": report.chunks_written,
            "tokens_written": report.tokens_written,
            "seconds": round(report.seconds, 1),
            "tokens_per_second": round(report.tokens_per_second, 1),
            "chunks_per_second": round(report.chunks_written / report.seconds, 3),
        },
        "bytes_per_chunk": {
            "slots (float16 shard)": round(disk["shards"] / count),
            "slots per chunk": round(slot_rows / count, 2),
            "slot bytes (theory: slots x hidden x 2)": round(slot_rows / count * hidden * 2),
            "vector in FAISS flat index": round(disk["index"] / count),
            "SQLite (text + metadata + vector + row)": round(disk["database"] / count),
            "text (UTF-8)": round(sum(len(t.encode("utf-8")) for t in texts) / count),
            "vector (float32)": DIMENSION * 4,
            "whole store directory": round(total_dir / count),
        },
        "fidelity": info["fidelity"],
        "vector_dimension": vectors.shape[1],
    }
    return result


# ---------------------------------------------------------------------- index
class SyntheticEmbeddings:
    """Unit vectors with embedding-like structure: clusters in a low-dimensional latent space.

    Args:
        seed: Random seed (the same seed gives the same distribution).
        latent: Intrinsic dimension.
        clusters: Number of cluster centres in the latent space.
    """

    def __init__(self, seed: int = 0, latent: int = 48, clusters: int = 1000) -> None:
        self.rng = np.random.default_rng(seed)
        self.latent = latent
        self.mixing = self.rng.standard_normal((latent, DIMENSION), dtype=np.float32) / np.sqrt(
            latent
        )
        self.centres = self.rng.standard_normal((clusters, latent), dtype=np.float32)

    def sample(self, n: int) -> np.ndarray:
        """``(n, 384)`` float32 unit vectors."""
        out = np.empty((n, DIMENSION), dtype=np.float32)
        for start in range(0, n, 100_000):
            m = min(n, start + 100_000) - start
            z = self.centres[self.rng.integers(0, len(self.centres), size=m)]
            z = z + 0.5 * self.rng.standard_normal((m, self.latent), dtype=np.float32)
            x = z @ self.mixing + 0.1 * self.rng.standard_normal((m, DIMENSION), dtype=np.float32)
            out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def bench_index(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from memrag.store.index import IndexSpec, VectorIndex

    source = SyntheticEmbeddings(seed=0)
    results: dict[str, Any] = {
        "machine": machine(),
        "vectors": "synthetic (clustered, 48-d latent structure, 384-d, unit length)",
        "dimension": DIMENSION,
        "faiss_search_threads": 1,
        "runs": [],
    }
    build_threads = faiss.omp_get_max_threads()
    for size in args.sizes:
        vectors = source.sample(size)
        queries = source.sample(args.queries)
        vids = np.arange(1, size + 1, dtype=np.int64)
        large = size >= 1_000_000
        specs = {
            "flat": IndexSpec("flat"),
            "hnsw": IndexSpec("hnsw", hnsw_m=16, hnsw_ef_construction=40)
            if large
            else IndexSpec("hnsw"),
            "ivf": IndexSpec("ivf", ivf_min_train=1),
        }
        truth = None
        for name, spec in specs.items():
            faiss.omp_set_num_threads(build_threads)
            index, build_seconds = timed(lambda: VectorIndex.build(spec, DIMENSION, vids, vectors))
            faiss.omp_set_num_threads(1)
            variants = [("default", spec)]
            if name == "hnsw":
                variants.append(("efSearch=128", dataclasses.replace(spec, hnsw_ef_search=128)))
            if name == "ivf":
                variants.append(("nprobe=64", dataclasses.replace(spec, ivf_nprobe=64)))
            for label, search_spec in variants:
                index.spec = search_spec
                index.search(queries[:5], 10)  # warm up
                latencies = []
                found = []
                for query in queries:
                    start = time.perf_counter()
                    _, ids = index.search(query[None, :], 10)
                    latencies.append(time.perf_counter() - start)
                    found.append(ids[0])
                found = np.asarray(found)
                if name == "flat" and label == "default":
                    truth = found
                recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))
                run = {
                    "vectors": size,
                    "index": name,
                    "setting": label,
                    "params": _params(index),
                    "build_seconds": round(build_seconds, 1),
                    "recall_at_10": round(recall, 4),
                    **percentiles(latencies),
                }
                logger.info("%s", run)
                results["runs"].append(run)
            del index
    faiss.omp_set_num_threads(build_threads)
    return results


def _params(index: Any) -> str:
    spec = index.spec
    if index.structure == "hnsw":
        construction, search = spec.hnsw_ef_construction, spec.hnsw_ef_search
        return f"M={spec.hnsw_m}, efConstruction={construction}, efSearch={search}"
    if index.structure == "ivf":
        import faiss

        inner = faiss.downcast_index(index.faiss_index.index)
        return f"nlist={inner.nlist}, nprobe={spec.ivf_nprobe}"
    return "exact inner product"


# ---------------------------------------------------------------------- store
def bench_store(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from memrag.compressor.config import CompressorConfig
    from memrag.store import HashingEmbedder, MemoryStore, load_embedder
    from memrag.store.index import normalize
    from memrag.store.processing import ChunkInput, ProcessedBatch

    class _Stub:
        """Stands in for a Gemma-sized compressor when creating the store (no model needed)."""

        config = CompressorConfig(base_model="synthetic")
        fingerprint = "synthetic-slots"
        hidden_size = 640

    import faiss

    source = SyntheticEmbeddings(seed=1)
    embedder = HashingEmbedder(DIMENSION)
    path = work / "search-store"
    store = MemoryStore.create(path, _Stub(), embedder, fidelity="none")
    batch_size = 1000
    start = time.perf_counter()
    with store.writing():
        for offset in range(0, args.store_chunks, batch_size):
            n = min(batch_size, args.store_chunks - offset)
            batch = ProcessedBatch(
                chunks=[
                    ChunkInput(f"c{offset + i}", f"synthetic chunk {offset + i}", {"n": offset + i})
                    for i in range(n)
                ],
                vectors=source.sample(n),
                slots=torch.randn(n * 32, 640, dtype=torch.float32).to(torch.float16),
                slot_counts=[32] * n,
                segment_slot_counts=[[32]] * n,
                num_tokens=[128] * n,
                fidelity=[None] * n,
                fingerprint=_Stub.fingerprint,
                slot_kind="embedding",
                embedder_id=embedder.model_id,
            )
            store.write(batch)
    write_seconds = time.perf_counter() - start
    store.close()
    reader = MemoryStore.open(path, read_only=True)
    queries = normalize(source.sample(args.queries))
    faiss.omp_set_num_threads(1)
    timings: dict[str, Any] = {}
    for k in (4, 10):
        for with_slots in (False, True):
            reader.search_by_vector(queries[0], k=k, with_slots=with_slots)
            samples = []
            for query in queries:
                t0 = time.perf_counter()
                records = reader.search_by_vector(query, k=k, with_slots=with_slots)
                samples.append(time.perf_counter() - t0)
            assert len(records) == k
            timings[f"k={k}, {'with slots' if with_slots else 'text only'}"] = percentiles(samples)
    where = {"n": {"$lt": args.store_chunks // 100}}
    samples = []
    for query in queries:
        t0 = time.perf_counter()
        reader.search_by_vector(query, k=4, filter=where)
        samples.append(time.perf_counter() - t0)
    timings["k=4, with slots, filter matching 1%"] = percentiles(samples)
    minilm = load_embedder(None)
    minilm.embed_query("warm up")
    samples = []
    for i in range(50):
        t0 = time.perf_counter()
        minilm.embed_query(f"Who founded the city number {i} on the river?")
        samples.append(time.perf_counter() - t0)
    return {
        "machine": machine(),
        "chunks": args.store_chunks,
        "slots_per_chunk": "32 x 640 float16 (synthetic, Gemma 3 270M size)",
        "vectors": "synthetic, 384-d, flat index",
        "write_seconds": round(write_seconds, 1),
        "search_by_vector": timings,
        "minilm_embed_query": percentiles(samples),
    }


# ---------------------------------------------------------------------- report
def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table; the first column is left-aligned, the others right-aligned."""
    align = ["---"] + ["---:"] * (len(header) - 1)
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
        "",
    ]


def markdown(compression: dict | None, index: dict | None, store: dict | None) -> str:
    """The tables of the README section."""
    lines: list[str] = []
    if compression:
        m, job = compression["machine"], compression["job"]
        lines += [
            f"**Compression job**: {compression['base_model']}, {compression['chunks']} chunks of "
            f"{compression['chunk_tokens']} tokens ({compression['tokens']:,} tokens of "
            f"{compression['corpus']}), {m['cpu_count']} CPU cores, {m['torch_threads']} torch "
            f"thread(s), load average {m['load_average_1m']} during the run.",
            "",
        ]
        steps = [[step, f"{v:,.1f}"] for step, v in compression["steps_tokens_per_second"].items()]
        steps.append(
            [
                "**whole job** (read, chunk, embed, compress, score, write)",
                f"**{job['tokens_per_second']:,.1f}**",
            ]
        )
        lines += table(["step", "tokens/s"], steps)
        sizes = [[name, f"{v:,}"] for name, v in compression["bytes_per_chunk"].items()]
        lines += table(["bytes per 128-token chunk on disk", "bytes"], sizes)
    if index:
        m = index["machine"]
        lines += [
            f"**Vector search**: synthetic vectors ({index['dimension']}-d, clustered, unit "
            "length), one query at a time with one FAISS thread, k = 10, recall@10 against "
            f"exact search; {m['cpu_count']} CPU cores, load average {m['load_average_1m']}.",
            "",
        ]
        runs = [
            [f"{r['vectors']:,}", r["index"], r["params"], r["build_seconds"], r["p50_ms"],
             r["p99_ms"], f"{r['recall_at_10']:.3f}"]
            for r in index["runs"]
        ]  # fmt: skip
        header = ["vectors", "index", "parameters", "build s", "p50 ms", "p99 ms", "recall@10"]
        lines += table(header, runs)
    if store:
        lines += [
            "**Store search end to end** (`MemoryStore.search_by_vector`: FAISS flat + SQLite + "
            f"memory-mapped slot shards): {store['chunks']:,} chunks, {store['slots_per_chunk']}.",
            "",
        ]
        rows = [[name, v["p50_ms"], v["p99_ms"]] for name, v in store["search_by_vector"].items()]
        q = store["minilm_embed_query"]
        rows.append(["MiniLM `embed_query` (one question)", q["p50_ms"], q["p99_ms"]])
        lines += table(["query", "p50 ms", "p99 ms"], rows)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["compression", "index", "store", "all"], default="all")
    parser.add_argument("--base-model", default="gemma-3-270m")
    parser.add_argument("--chunks", type=int, default=48, help="128-token chunks to compress.")
    parser.add_argument("--batch-size", type=int, default=16, help="Segments per encoder pass.")
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100_000, 1_000_000]
    )
    parser.add_argument("--queries", type=int, default=300, help="Queries per latency measurement.")
    parser.add_argument("--store-chunks", type=int, default=20_000)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)."
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_store_"))
    parts: dict[str, dict | None] = {"compression": None, "index": None, "store": None}
    try:
        for part, run in (
            ("compression", bench_compression),
            ("index", bench_index),
            ("store", bench_store),
        ):
            if args.part in (part, "all"):
                logger.info("running %s", part)
                result = run(args, work) if part != "index" else run(args)
                parts[part] = result
                (args.out / f"store_{part}.json").write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Keep the tables of parts not re-run this time.
    for part in parts:
        saved = args.out / f"store_{part}.json"
        if parts[part] is None and saved.is_file():
            parts[part] = json.loads(saved.read_text())
    table = markdown(parts["compression"], parts["index"], parts["store"])
    (args.out / "store_tables.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
