"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol

import typer

DeviceOption = typer.Option("cpu", "--device", help="Device: cpu, cuda, cuda:N or auto.")
DtypeOption = typer.Option("float32", "--dtype", help="Weight dtype: float32, bfloat16 or float16.")
SearchModeOption = typer.Option(
    "hybrid",
    "--search",
    help="How chunks are found: hybrid (dense and BM25 fused by reciprocal rank: the right "
    "passage first most often, docs/RESULTS.md 'The default path'), dense or lexical.",
)
SearchWeightsOption = typer.Option(
    "1,1", "--search-weights", help="DENSE,LEXICAL weights of a hybrid search."
)
CompressorOption = typer.Option(
    None,
    "--compressor",
    help="Compressor directory or shipped name (default: the trained default shipped with memrag).",
)


def setup_logging(verbose: bool) -> None:
    """Logs to stderr: INFO with --verbose, else WARNING (progress bars show the work)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def fail(message: str) -> None:
    """Prints ``message`` as an error and exits with status 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


class CompressorChoice(Protocol):
    """The options that say which compressor a command loads (``memrag.cli.eval.EvalOptions``)."""

    compressor: str | None
    untrained: bool
    base_model: str
    device: str
    dtype: str
    threads: int


def load_compressor(options: CompressorChoice, *, needs_trained: bool) -> Any:
    """Loads the compressor ``options`` name, or exits with a readable error.

    Args:
        options: Which compressor (``--compressor``, ``--untrained``, ``--base-model``) and
            where to run it (``--device``, ``--dtype``, ``--threads``).
        needs_trained: Whether the command needs trained slots; when it does not and no
            compressor was named, a missing shipped default falls back to an untrained one
            over ``options.base_model`` (with a warning).

    Returns:
        The loaded compressor.
    """
    import torch

    from memrag.compressor.resolve import resolve_compressor

    if options.threads:
        torch.set_num_threads(options.threads)
    may_fall_back = options.compressor is None and not needs_trained
    try:
        return resolve_compressor(
            options.compressor,
            untrained_base=options.base_model if options.untrained else None,
            fallback_base=options.base_model if may_fall_back else None,
            on_fallback=lambda why: typer.secho(
                f"{why} (fine for these modes)", fg=typer.colors.YELLOW
            ),
            device=options.device,
            dtype=options.dtype,
        )
    except FileNotFoundError as err:
        fail(f"{err}\n(pass --compressor DIR, or --untrained for a baseline)")
        raise  # not reached: fail() exits
