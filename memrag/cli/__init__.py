"""The ``memrag`` command line. Each command group lives in its own module."""

from __future__ import annotations

from memrag.cli.app import app


def main() -> None:
    """Entry point of the ``memrag`` console script."""
    app()


__all__ = ["app", "main"]
