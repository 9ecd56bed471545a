"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import logging
import os

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


def fail(message: str) -> None:
    """Prints ``message`` as an error and exits with status 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)
