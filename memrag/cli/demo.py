"""``memrag demo``: RAG from memory slots next to classic text RAG (see :mod:`memrag.demo`)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from memrag.cli.app import app
from memrag.cli.common import CompressorOption, DeviceOption, DtypeOption, fail, setup_logging

logger = logging.getLogger(__name__)

StoreOption = typer.Option(
    None,
    "--store",
    help="Keep the store in this directory and reuse it on later runs (default: a temporary store).",
)


@app.command()
def demo(
    questions: int = typer.Option(
        3, "--questions", "-n", min=1, help="How many demo questions to answer."
    ),
    passages: int = typer.Option(
        None, "--passages", min=1, help="Index only this many passages (default: all 100)."
    ),
    k: int = typer.Option(
        1, "--k", "-k", min=1, help="Passages retrieved per question (1 answers best from memory)."
    ),
    compressor: str = CompressorOption,
    embedder: str = typer.Option(
        None, "--embedder", help="Retrieval embedder id (default: the embedded all-MiniLM-L6-v2)."
    ),
    store: Path = StoreOption,
    memory: str = typer.Option(
        None,
        "--memory",
        help="What the store keeps per passage: embedding or kv (a trained compressor's slots), "
        "kv-exact or kv-pruned "
        "(settings after colons, e.g. kv-pruned:0.5). Default: kv-exact:int8 "
        "(docs/RESULTS.md, 'Which memory?').",
    ),
    fidelity: str = typer.Option(
        "none",
        "--fidelity",
        help="none, or score every passage and read the low scorers as text (minutes on CPU): "
        "auto (agreement for K/V memory, reconstruct for embedding slots), agreement or reconstruct.",
    ),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Answer length limit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what is happening."),
) -> None:
    """Build a memory store over the demo corpus and answer questions from memory and from text.

    Each answer goes through the LangChain RAG chain twice, with the same retriever and model:
    once reading the retrieved passages from their stored memory (slots or K/V), once as text
    (classic RAG). The time to first token and the context positions of both are printed side
    by side.
    """
    setup_logging(verbose)
    from memrag.demo import (
        DemoSettings,
        format_answer,
        format_summary,
        run_demo,
    )

    settings = DemoSettings(
        questions=questions,
        passages=passages,
        k=k,
        max_new_tokens=max_new_tokens,
        fidelity=fidelity,
        store_path=store,
        device=device,
        dtype=dtype,
        memory=memory,
    )

    def warn(message: str) -> None:
        typer.secho(f"WARNING: {message}", fg=typer.colors.YELLOW, err=True)

    from memrag.memory.spec import resolve_memory_spec

    try:
        resolve_memory_spec(memory)
    except ValueError as err:
        fail(f"--memory: {err}")
    report = run_demo(
        settings,
        compressor=compressor,
        warn=warn,
        embedding=embedder,
        say=typer.echo,
        on_answer=lambda answer, position, total: typer.echo(
            "\n" + format_answer(answer, position, total)
        ),
    )
    typer.echo("\n" + format_summary(report))
