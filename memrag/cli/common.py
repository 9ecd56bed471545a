"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import logging
import os
from typing import Any

import typer

DeviceOption = typer.Option("cpu", "--device", help="Device: cpu, cuda, cuda:N or auto.")
DtypeOption = typer.Option("float32", "--dtype", help="Weight dtype: float32, bfloat16 or float16.")
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


def load_compressor(name: str | None, device: str, dtype: str, *, fresh_base: str | None = None) -> Any:
    """Loads a compressor by directory or shipped name, or builds an untrained one over a base.

    Args:
        name: Directory or shipped name (``None``: the shipped default).
        device: Device for the base model.
        dtype: Dtype for the base model.
        fresh_base: When given, ignore ``name`` and build an untrained compressor over this base.
    """
    from memrag.compressor import Compressor

    if fresh_base is not None:
        return Compressor.from_base(fresh_base, device=device, dtype=dtype)
    return Compressor.from_pretrained(name, device=device, dtype=dtype)


def fail(message: str) -> None:
    """Prints ``message`` as an error and exits with status 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)
