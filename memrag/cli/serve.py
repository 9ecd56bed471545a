"""``memrag serve``: the OpenAI-compatible RAG server over a memory store."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from memrag.cli.app import app
from memrag.cli.common import (
    DeviceOption,
    DtypeOption,
    SearchModeOption,
    SearchWeightsOption,
    fail,
    setup_logging,
)

logger = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command()
def serve(
    store: Path = typer.Option(..., "--store", help="Store directory to answer from."),
    compressor: str = typer.Option(
        None,
        "--compressor",
        help="Compressor directory or shipped name (default: the one the store names).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on."),
    api_key_env: str = typer.Option(
        "MEMRAG_API_KEY",
        "--api-key-env",
        help="Environment variable holding the API key (if set, it is required).",
    ),
    api_key_file: Path = typer.Option(
        None, "--api-key-file", help="File whose first line is the API key."
    ),
    model_name: str = typer.Option(
        None, "--model-name", help="Model id shown to clients (default: derived)."
    ),
    top_k: int = typer.Option(
        1,
        "--top-k",
        min=0,
        help="Chunks retrieved per chat request (1 answered best from memory: docs/RESULTS.md).",
    ),
    max_top_k: int = typer.Option(
        16, "--max-top-k", min=1, help="Largest top_k a request may ask for."
    ),
    search_mode: str = SearchModeOption,
    search_weights: str = SearchWeightsOption,
    rerank: int = typer.Option(
        5,
        "--rerank",
        min=0,
        help="Candidates reranked by the decoder's likelihood of the question given each "
        "one's stored memory (0: none; docs/RESULTS.md 'The default path').",
    ),
    max_rerank: int = typer.Option(
        32, "--max-rerank", min=0, help="Largest rerank a request may ask for."
    ),
    default_max_tokens: int = typer.Option(
        None,
        "--default-max-tokens",
        min=1,
        help="New tokens when a request says none (default: 32 for a model without a chat "
        "template, the answer length measured best; 256 with one).",
    ),
    max_prompt_positions: int = typer.Option(
        8192,
        "--max-prompt-positions",
        min=1,
        help="Most decoder positions a prompt may take (messages + retrieved chunks); more is a "
        "400 context_length_exceeded, answered before any prefill.",
    ),
    max_tokens: int = typer.Option(
        2048, "--max-tokens", min=1, help="Largest max_tokens a request may ask for."
    ),
    max_messages: int = typer.Option(
        64, "--max-messages", min=1, help="Most messages per chat request."
    ),
    max_body_bytes: int = typer.Option(
        1 << 20, "--max-body-bytes", min=1, help="Largest request body (bytes)."
    ),
    max_batch_size: int = typer.Option(
        8,
        "--max-batch-size",
        min=1,
        help="Requests decoded together (continuous batching); 1: one at a time.",
    ),
    batch_window_ms: float = typer.Option(
        10.0,
        "--batch-window-ms",
        min=0.0,
        max=1000.0,
        help="How long an idle server waits for more requests before it starts a batch.",
    ),
    packed_weights: bool = typer.Option(
        True,
        "--packed-weights/--no-packed-weights",
        help="CPU, float32: decode batches with oneDNN-packed weights (faster; more memory).",
    ),
    max_concurrent: int = typer.Option(
        1,
        "--max-concurrent",
        min=1,
        help="Generations running at once with --max-batch-size 1.",
    ),
    max_queue: int = typer.Option(
        8, "--max-queue", min=0, help="Requests waiting for a slot before 429s."
    ),
    timeout: float = typer.Option(
        120.0, "--timeout", min=0.1, help="Seconds per request (queue + generation)."
    ),
    stop: list[str] = typer.Option(
        None,
        "--stop",
        help="Default stop string (repeatable; default: where the answer ends for the model's "
        "prompt format, a newline without a chat template).",
    ),
    context: str = typer.Option(
        "memory",
        "--context",
        help="memory (the chunks' stored memory) or text (their text: classic RAG through the "
        "same model and prompt, to compare against).",
    ),
    kv_recovery: str = typer.Option(
        None,
        "--kv-recovery",
        help="K/V stores: recompute part of each retrieved chunk with attention to the chunks "
        "before it (cacheblend[:ratio][:leading], e.g. cacheblend:0.15); default off.",
    ),
    read_only: bool = typer.Option(
        False, "--read-only", help="Open the store read-only; no document endpoints."
    ),
    cors_origin: list[str] = typer.Option(
        None, "--cors-origin", help="Browser origin allowed to call (repeatable; '*' for any)."
    ),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what is happening."),
) -> None:
    """Serve OpenAI-compatible chat completions that answer from the store's memory.

    Every request is logged as one JSON line on stderr.
    """
    setup_logging(verbose)
    from memrag.server import ServerSettings, create_app, load_api_key
    from memrag.server.middleware import configure_access_log
    from memrag.server.runner import run_server
    from memrag.store import MemoryStore
    from memrag.store.errors import StoreError
    from memrag.store.retrieval import SearchSettings

    try:
        key = load_api_key(env=api_key_env or None, file=api_key_file)
        settings = ServerSettings(
            api_key=key,
            model_name=model_name,
            top_k=top_k,
            max_top_k=max_top_k,
            search_mode=search_mode,
            search_weights=SearchSettings.parse(search_mode, search_weights).weights,
            rerank=rerank,
            max_rerank=max_rerank,
            default_max_tokens=default_max_tokens,
            max_tokens=max_tokens,
            max_prompt_positions=max_prompt_positions,
            max_messages=max_messages,
            max_body_bytes=max_body_bytes,
            max_batch_size=max_batch_size,
            batch_window_ms=batch_window_ms,
            packed_weights=packed_weights,
            max_concurrent=max_concurrent,
            max_queue=max_queue,
            request_timeout=timeout,
            stop=tuple(stop or ()),
            context=context,
            allow_writes=not read_only,
            cors_origins=tuple(cors_origin or ()),
        )
        recovery = None
        if kv_recovery:
            from memrag.memory.recovery import RecoveryConfig

            recovery = RecoveryConfig.parse(kv_recovery)
        typer.echo(f"opening {store} and loading its models ...", err=True)
        opened = MemoryStore.open(
            store, compressor, read_only=read_only, device=device, dtype=dtype
        )
        if recovery is not None:
            opened.compressor.kv_recovery = recovery
    except (StoreError, ValueError, OSError, ImportError) as err:
        fail(str(err))
        return
    with opened:
        try:
            application = create_app(opened, settings)
            application.state.memrag.warm_up()
        except (StoreError, ValueError, OSError, ImportError) as err:
            fail(str(err))
            return
        if key is None and host not in _LOOPBACK:
            logger.warning(
                "serving on %s without an API key: anyone who can reach it can use it", host
            )
        configure_access_log()
        typer.echo(
            f"serving {application.state.memrag.service.model_name} on http://{host}:{port}/v1 "
            f"({'API key required' if key else 'no API key'})",
            err=True,
        )
        run_server(application, host, port, log_level="info" if verbose else "warning")
    exit_now_if_work_lingers()


def exit_now_if_work_lingers() -> None:
    """Ends the process at once when a decoder thread outlives the graceful shutdown.

    uvicorn stops answering on SIGTERM and gives open requests a few seconds; a prefill or a
    decode still running in a worker thread after that would keep the interpreter alive until
    it finished (the thread pool is joined at exit), so the server could not be stopped.
    """
    import os
    import sys
    import threading

    lingering = [
        t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon
    ]
    if lingering:
        logger.warning(
            "stopping with %d worker thread(s) still running (%s); their requests are abandoned",
            len(lingering),
            ", ".join(t.name for t in lingering[:4]),
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
