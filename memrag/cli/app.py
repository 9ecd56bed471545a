"""The root Typer application; command groups register themselves here."""

from __future__ import annotations

import typer

from memrag.version import __version__

app = typer.Typer(
    name="memrag",
    help="RAG with documents compressed offline into memory slots for a frozen LLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's plain help: a long option name gets a line of its own, where Rich's option
    # tables cut it ("--default-max-…") once the terminal is narrower than the table.
    # Command groups added with add_typer inherit it.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"memrag {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """memrag: compress documents once, answer from their memory slots many times."""


# Command modules register their commands on import.
from memrag.cli import bench as _bench  # noqa: E402,F401
from memrag.cli import compress as _compress  # noqa: E402,F401
from memrag.cli import demo as _demo  # noqa: E402,F401
from memrag.cli import eval as _eval  # noqa: E402,F401
from memrag.cli import index as _index  # noqa: E402,F401
from memrag.cli import serve as _serve  # noqa: E402,F401
from memrag.cli import train as _train  # noqa: E402,F401
