"""Every command's ``--help`` shows every option name whole on an 80-column terminal (and a
narrower one)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from memrag.cli import app


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(argument path, command) of a Click command (typer's own copy of Click) and of every
    command below it."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def test_the_walk_finds_the_commands_of_the_issue() -> None:
    paths = {" ".join(path) for path, _ in COMMANDS}
    assert {"serve", "index build", "train finetune", "eval qa", "bench"} <= paths


@pytest.mark.parametrize("width", [80, 50])
@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "memrag" for p, _ in COMMANDS]
)
def test_help_shows_every_option_name_whole(
    path: tuple[str, ...], command: Any, width: int
) -> None:
    result = CliRunner().invoke(
        app, [*path, "--help"], env={"COLUMNS": str(width)}, terminal_width=width
    )
    assert result.exit_code == 0, result.output
    names = ["--help"] + [
        name
        for param in command.params
        if param.param_type_name == "option" and not param.hidden
        for name in (*param.opts, *param.secondary_opts)
    ]
    # Whole: not followed by more of a name ("--max-prompt-p…" is not --max-prompt-positions).
    missing = [
        name
        for name in names
        if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", result.output)
    ]
    assert missing == [], result.output
    assert "…" not in result.output, result.output


def test_memrag_serve_defaults_are_the_server_settings_defaults() -> None:
    import inspect

    from memrag.cli.serve import serve
    from memrag.server import ServerSettings

    options = inspect.signature(serve).parameters
    defaults = ServerSettings()
    for name in ("top_k", "max_top_k", "search_mode", "rerank", "max_rerank"):
        assert options[name].default.default == getattr(defaults, name), name
    weights = options["search_weights"].default.default
    assert tuple(float(w) for w in weights.split(",")) == defaults.search_weights
