"""``memrag index``: build, update, search, inspect, verify and compact memory stores."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from memrag.cli.app import app
from memrag.cli.common import (
    CompressorOption,
    DeviceOption,
    DtypeOption,
    SearchModeOption,
    SearchWeightsOption,
    fail,
    setup_logging,
)

index_app = typer.Typer(
    help="Build and manage memory stores (chunks + FAISS vectors + memory slots).",
    no_args_is_help=True,
)
app.add_typer(index_app, name="index")

StoreArgument = typer.Argument(..., help="Store directory.")
VerboseOption = typer.Option(False, "--verbose", "-v", help="Log what is happening.")
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")

#: Errors shown as one clean line (exit status 2) instead of a traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    ValueError,
    OSError,
    ImportError,
)


@contextlib.contextmanager
def _clean_errors() -> Iterator[None]:
    """Turns store errors, bad input and user errors into ``error: ...`` and exit status 2."""
    from memrag.data.readers import BadRowError
    from memrag.store.errors import StoreError

    try:
        yield
    except (StoreError, BadRowError, *_USER_ERRORS) as err:
        fail(str(err))


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _parse_json_object(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        fail(f"{option} must be a JSON object: {err}")
    if not isinstance(value, dict):
        fail(f"{option} must be a JSON object, got {type(value).__name__}")
    return value


def _index_options(pairs: list[str] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(f"--index-option takes KEY=VALUE, got {pair!r}")
        options[key.strip().replace("-", "_")] = json.loads(value) if value.strip() else None
    return options


def _compressor_spec(
    compressor: str | None, untrained: bool, base_model: str, device: str, dtype: str
) -> Any:
    if untrained:
        from memrag.compressor.resolve import resolve_compressor

        # A factory, so that Ray workers can build the same (seeded) untrained compressor.
        return functools.partial(resolve_compressor, untrained_base=base_model, device=device, dtype=dtype)
    return compressor


@index_app.command("build")
def build(
    corpus: Path = typer.Option(
        ..., "--corpus", help="JSONL file, text file, or directory of them."
    ),
    store: Path = typer.Option(
        ..., "--store", help="Store directory (created, or resumed / updated)."
    ),
    compressor: str = CompressorOption,
    untrained: bool = typer.Option(
        False, "--untrained", help="Use an untrained compressor over --base-model."
    ),
    base_model: str = typer.Option(
        "gemma-3-270m", "--base-model", help="Base model for --untrained."
    ),
    embedder: str = typer.Option(
        None,
        "--embedder",
        help="Embedder: sentence-transformers name/path or hashing:DIM (default all-MiniLM-L6-v2).",
    ),
    memory: str = typer.Option(
        None,
        "--memory",
        help="New stores: what to keep for each chunk: embedding or kv (a trained compressor's "
        "slots; default compressor: the shipped one of that slot kind), kv-exact (its key/value cache) or kv-pruned (a subset of its positions' keys and "
        "values). Settings after colons: kv-exact:int8, kv-exact:int4 (4-bit), kv:int4c (4-bit, no per-chunk header: the smallest; channels calibrated once per store), kv:int4r (int4c's bytes without the calibration: for one-chunk lookups only, it loses F1 when several chunks are retrieved), kv-exact:tc2 (transform codec at about 2 bits per element: a per-store transform, steps and entropy coding; tc2z codes with Zstandard: a few percent more bytes, faster reads), kv-pruned:0.5, kv-pruned:0.25:int8. "
        "Default: kv-exact:int8 (docs/RESULTS.md, 'Which memory?').",
    ),
    keep_ratio: float = typer.Option(
        None, "--keep-ratio", help="New kv-pruned stores: fraction of positions kept, in (0, 1]."
    ),
    kv_dtype: str = typer.Option(
        None, "--kv-dtype", help="New K/V stores: float16 (default), bfloat16, int8, int4, k8v4, int4c, int4r or tc<bits> (tc2, tc2z ...)."
    ),
    index: str = typer.Option("flat", "--index", help="New stores: flat (exact), hnsw or ivf."),
    index_option: list[str] = typer.Option(
        None,
        "--index-option",
        help="New stores: index parameter KEY=VALUE (hnsw_m, hnsw_ef_search, ivf_nprobe, ...).",
    ),
    slot_dtype: str = typer.Option(
        "float16", "--slot-dtype", help="New stores: float16, bfloat16 or float32."
    ),
    fidelity: bool = typer.Option(
        True, "--fidelity/--no-fidelity", help="New stores: score each chunk's memory and serve the low scorers as text "
        "(K/V memory: agreement of answers from memory and from text; embedding slots: "
        "reconstruction).",
    ),
    fidelity_method: str = typer.Option(
        "auto",
        "--fidelity-method",
        help="New stores: auto (agreement for K/V memory, reconstruct for embedding slots), "
        "agreement or reconstruct.",
    ),
    fidelity_threshold: float = typer.Option(
        None,
        "--fidelity-threshold",
        help="New stores: below it, serve text (default: the scoring method's: agreement 0.24, reconstruct 0.5).",
    ),
    fidelity_sample_tokens: int = typer.Option(
        32, "--fidelity-sample-tokens", min=0, help="New stores: tokens scored per chunk (0: all)."
    ),
    chunk_tokens: int = typer.Option(
        None,
        "--chunk-tokens",
        help="New stores: tokens per chunk at most, cut between sentences (default 512: a "
        "passage stays whole, so a retrieved chunk answers as the passage does; measured in "
        "docs/RESULTS.md, 'The default path').",
    ),
    chunk_overlap: int = typer.Option(
        None,
        "--chunk-overlap",
        help="New stores: tokens shared by neighbouring chunks, whole sentences where they fit "
        "(default 64 with the default length, else an eighth of a chunk).",
    ),
    batch_chunks: int = typer.Option(
        64, "--batch-chunks", min=1, help="Chunks per committed batch."
    ),
    compress_batch_size: int = typer.Option(
        16, "--compress-batch-size", min=1, help="Segments per encoder pass."
    ),
    backend: str = typer.Option(
        "local", "--backend", help="local, or ray (distributed over Ray workers)."
    ),
    ray_address: str = typer.Option(
        None,
        "--ray-address",
        help="Ray cluster to join ('auto', 'ray://host:10001'); default: a local Ray.",
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Ray workers (one model copy each)."),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", help="CPUs per Ray worker."),
    gpus_per_worker: float = typer.Option(
        0.0, "--gpus-per-worker", help="GPUs per Ray worker (runs on CUDA)."
    ),
    threads: int = typer.Option(
        None,
        "--threads",
        min=1,
        help="torch threads for the local backend (default: torch's; 1 can be much faster "
        "on a busy machine).",
    ),
    on_error: str = typer.Option(
        "skip", "--on-error", help="skip bad input (reported at the end) or raise."
    ),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = JsonOption,
    verbose: bool = VerboseOption,
) -> None:
    """Compress a corpus into a store. Re-run it to resume an interrupted build or to update."""
    setup_logging(verbose)
    from memrag.indexing import BuildOptions, build_index
    from memrag.indexing.ray_backend import RayOptions

    if threads:
        import torch

        torch.set_num_threads(threads)
    create_options = {
        "memory": _memory_spec(memory, keep_ratio, kv_dtype),
        "index": index,
        "index_options": _index_options(index_option),
        "slot_dtype": slot_dtype,
        "fidelity": fidelity_method if fidelity else "none",
        "fidelity_threshold": fidelity_threshold,
        "fidelity_sample_tokens": fidelity_sample_tokens or None,
        "chunk_tokens": chunk_tokens,
        "chunk_overlap": chunk_overlap,
    }
    with _clean_errors():
        options = BuildOptions(
            batch_chunks=batch_chunks,
            compress_batch_size=compress_batch_size,
            on_error=on_error,
            show_progress=not quiet,
        )
        ray_options = RayOptions(
            address=ray_address,
            num_workers=workers,
            num_cpus_per_worker=cpus_per_worker,
            num_gpus_per_worker=gpus_per_worker,
        )
        report = build_index(
            corpus,
            store,
            compressor=_compressor_spec(compressor, untrained, base_model, device, dtype),
            embedder=embedder,
            backend=backend,
            options=options,
            ray_options=ray_options,
            device=device,
            dtype=dtype,
            create_options=create_options,
        )
    if as_json:
        _echo_json(report.to_dict())
    else:
        typer.echo(report.summary())


def _memory_spec(memory: str | None, keep_ratio: float | None, kv_dtype: str | None) -> Any:
    """The ``--memory`` mode with ``--keep-ratio`` / ``--kv-dtype`` folded in (bad values fail)."""
    from memrag.memory.spec import resolve_memory_spec

    if memory is None and keep_ratio is None and kv_dtype is None:
        return None  # the store picks the default for its compressor
    try:
        spec = resolve_memory_spec(memory)
        if keep_ratio is not None:
            if spec.kind != "kv-pruned":
                fail(f"--keep-ratio needs --memory kv-pruned (memory is {spec.kind})")
            spec.pruning = type(spec.pruning)(**{**spec.pruning.__dict__, "keep_ratio": keep_ratio})
        if kv_dtype is not None:
            if not spec.packed_kv:
                fail(f"--kv-dtype needs a K/V memory kind (memory is {spec.kind})")
            spec = type(spec)(kind=spec.kind, kv_dtype=kv_dtype, pruning=spec.pruning)
    except (TypeError, ValueError) as err:
        fail(str(err))
    return spec


@index_app.command("add")
def add(
    store: Path = StoreArgument,
    text: list[str] = typer.Option(
        None, "--text", help="A document to add (repeatable; '-' reads stdin)."
    ),
    doc_id: list[str] = typer.Option(None, "--id", help="Id of each --text (default: a new UUID)."),
    metadata: str = typer.Option(
        None, "--metadata", help="JSON object of metadata for every --text."
    ),
    chunk: bool = typer.Option(
        False, "--chunk/--no-chunk", help="Cut --text documents into token chunks."
    ),
    corpus: Path = typer.Option(
        None, "--corpus", help="Add (or update) a whole corpus, like `index build`."
    ),
    compressor: str = CompressorOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    verbose: bool = VerboseOption,
) -> None:
    """Add documents to an existing store (re-adding an id replaces it)."""
    setup_logging(verbose)
    from memrag.indexing import BuildOptions, build_index
    from memrag.store import MemoryStore

    if not text and corpus is None:
        fail("give --text (one or more) or --corpus")
    meta = _parse_json_object(metadata, "--metadata")
    with _clean_errors():
        opened = MemoryStore.open(store, compressor, device=device, dtype=dtype)
        with opened:
            if corpus is not None:
                report = build_index(
                    corpus, opened, options=BuildOptions(), device=device, dtype=dtype
                )
                typer.echo(report.summary())
            if text:
                texts = [sys.stdin.read() if t == "-" else t for t in text]
                if doc_id and len(doc_id) != len(texts):
                    fail(f"got {len(texts)} --text but {len(doc_id)} --id")
                ids = opened.add(
                    texts,
                    ids=doc_id or None,
                    metadatas=[meta] * len(texts) if meta else None,
                    chunk=chunk,
                )
                typer.echo(
                    f"added {len(ids)} chunk(s): "
                    f"{', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}"
                )


@index_app.command("delete")
def delete(
    store: Path = StoreArgument,
    ids: list[str] = typer.Argument(..., help="Chunk ids (or document ids with --source)."),
    source: bool = typer.Option(
        False, "--source", help="IDS are document ids: delete all their chunks."
    ),
    verbose: bool = VerboseOption,
) -> None:
    """Delete chunks (unknown ids are ignored)."""
    setup_logging(verbose)
    from memrag.store import MemoryStore

    with _clean_errors():
        with MemoryStore.open(store) as opened:
            count = opened.delete_sources(ids) if source else opened.delete(ids)
    typer.echo(f"deleted {count} chunk(s)")


@index_app.command("set-threshold")
def set_threshold(
    store: Path = StoreArgument,
    threshold: float = typer.Argument(
        ..., min=0.0, max=1.0, help="Chunks whose stored fidelity is below it are served as text."
    ),
    verbose: bool = VerboseOption,
) -> None:
    """Re-flag every chunk against a new fidelity threshold (the scores are stored: no re-compression)."""
    setup_logging(verbose)
    from memrag.store import MemoryStore

    with _clean_errors():
        with MemoryStore.open(store) as opened:
            if opened.manifest.options.fidelity == "none":
                fail(f"{store}: the store was built without fidelity scores (--no-fidelity)")
            flagged = opened.set_fidelity_threshold(threshold)
            total = opened.db.counts()["chunks"]
    typer.echo(f"fidelity threshold {threshold:g}: {flagged} of {total} chunk(s) served as text")


@index_app.command("search")
def search(
    store: Path = StoreArgument,
    query: str = typer.Argument(..., help="Query text."),
    k: int = typer.Option(4, "-k", "--k", min=1, help="Number of results."),
    filter: str = typer.Option(
        None, "--filter", help='Metadata filter as JSON, e.g. {"lang": "en"}.'
    ),
    mode: str = SearchModeOption,
    weights: str = SearchWeightsOption,
    rerank: int = typer.Option(
        0,
        "--rerank",
        min=0,
        help="Rerank this many candidates by the decoder's likelihood of the query given each "
        "one's memory (loads the compressor; memrag serve reranks 5 by default).",
    ),
    device: str = DeviceOption,
    as_json: bool = JsonOption,
    verbose: bool = VerboseOption,
) -> None:
    """Search a store (loads the compressor only to --rerank)."""
    setup_logging(verbose)
    from memrag.store import MemoryStore
    from memrag.store.retrieval import SearchSettings

    where = _parse_json_object(filter, "--filter")
    try:
        search = SearchSettings.parse(mode, weights)
    except ValueError as err:
        fail(str(err))
    with _clean_errors():
        with MemoryStore.open(store, read_only=True, device=device) as opened:
            records = opened.search(
                query, k=k, filter=where, with_slots=True, mode=search.mode,
                weights=search.weights, rerank=rerank,
            )
    if as_json:
        _echo_json(
            [
                {
                    "id": r.id,
                    "score": r.score,
                    "fidelity": r.fidelity,
                    "use_text": r.use_text,
                    "num_slots": r.slots.num_slots if r.slots is not None else 0,
                    "metadata": r.metadata,
                    "text": r.text,
                }
                for r in records
            ]
        )
        return
    if not records:
        typer.echo("no results")
    for rank, r in enumerate(records, 1):
        slots = f"{r.slots.num_slots} slots" if r.slots is not None else "no slots"
        fid = "n/a" if r.fidelity is None else f"{r.fidelity:.3f}"
        mode = "text" if r.use_text else "slots"
        snippet = " ".join(r.text.split())[:160]
        typer.echo(
            f"{rank}. {r.score:.4f}  {r.id}  [{slots}, fidelity {fid}, serve {mode}]\n   {snippet}"
        )


@index_app.command("info")
def info(
    store: Path = StoreArgument, as_json: bool = JsonOption, verbose: bool = VerboseOption
) -> None:
    """Show what a store holds and how it was made."""
    setup_logging(verbose)
    from memrag.store import MemoryStore

    with _clean_errors():
        with MemoryStore.open(store, read_only=True) as opened:
            data = opened.info()
    if as_json:
        _echo_json(data)
        return
    manifest, counts, memory = data["manifest"], data["counts"], data["memory"]
    comp, emb, options = manifest["compressor"], manifest["embedder"], manifest["options"]
    typer.echo(
        f"store {data['path']} (format {manifest['format_version']}, memrag "
        f"{manifest['memrag_version']})"
    )
    typer.echo(
        f"  chunks {counts['chunks']:,}  text tokens {counts['tokens']:,}  memory positions "
        f"{counts.get('positions', counts['tokens']):,}  rows {counts['slots']:,}  "
        f"shards {counts['shards']}  served as text {counts['use_text']:,}"
    )
    settings = ", ".join(
        f"{k} {v}" for k, v in memory["settings"].items() if k not in ("kind", "pruning")
    )
    pruning = memory["settings"].get("pruning")
    if pruning:
        settings += ", " + ", ".join(f"{k} {v}" for k, v in pruning.items())
    typer.echo(
        f"  memory {memory['kind']}{' (' + settings + ')' if settings else ''}: "
        f"{memory['bytes_per_chunk']:,.0f} bytes per chunk, {memory['bytes_per_token']:,.0f} "
        f"per text token; fingerprint {memory['fingerprint']}"
    )
    typer.echo(
        f"  compressor {comp['fingerprint']} "
        f"({comp['source'] or 'untrained ' + comp['base_model']}; "
        f"{comp['slot_kind']} slots, width {comp['hidden_size']}, rate {comp['compression_rate']}, "
        f"segment {comp['segment_length']}); slots stored as {options['slot_dtype']}"
    )
    typer.echo(f"  embedder {emb['id']} (dimension {emb['dimension']})")
    idx = data["index"]
    typer.echo(
        f"  index {manifest['index']['type']} (now {idx['structure']}; {idx['vectors']:,} vectors, "
        f"{idx['tombstones']} tombstones, {idx['journal_pending']} journal entries since the "
        "last checkpoint)"
    )
    if data["fidelity"]:
        q = data["fidelity"]
        typer.echo(
            f"  fidelity ({options['fidelity']}, threshold {options['fidelity_threshold']}): "
            + ", ".join(f"{k} {v:.3f}" for k, v in q.items())
        )
    disk = data["disk_bytes"]
    typer.echo("  disk " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in disk.items()))
    damaged = data["integrity"]["damaged_shards"]
    if damaged:
        typer.echo(
            f"  integrity: {len(damaged)} damaged shard(s), their chunks are served as text "
            f"(run `memrag index verify --repair {store}`): " + "; ".join(damaged.values())
        )


@index_app.command("verify")
def verify(
    store: Path = StoreArgument,
    fast: bool = typer.Option(
        False, "--fast", help="Skip shard checksums and SQLite's full integrity check."
    ),
    repair: bool = typer.Option(
        False, "--repair", help="Rebuild the index / re-compress damaged chunks."
    ),
    compressor: str = CompressorOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    as_json: bool = JsonOption,
    verbose: bool = VerboseOption,
) -> None:
    """Check every file of a store; exit status 1 when something is wrong."""
    setup_logging(verbose)
    from memrag.store.repair import repair_store
    from memrag.store.verify import verify_store

    if repair:
        with _clean_errors():
            result = repair_store(store, compressor=compressor, device=device, dtype=dtype)
        report = result.after
        if not as_json:
            typer.echo(result.before.summary() if result.before is not None else "")
            typer.echo("repair: " + result.summary())
    else:
        report = verify_store(store, full=not fast)
    assert report is not None
    if as_json:
        _echo_json(report.to_dict())
    else:
        typer.echo(report.summary())
    raise typer.Exit(0 if report.ok else 1)


@index_app.command("compact")
def compact(
    store: Path = StoreArgument,
    verbose: bool = VerboseOption,
) -> None:
    """Drop deleted slots, merge small shards, rebuild the index (trains IVF, drops tombstones)."""
    setup_logging(verbose)
    from memrag.store import MemoryStore

    with _clean_errors():
        with MemoryStore.open(store) as opened:
            result = opened.compact()
    typer.echo("compacted: " + result.summary())
