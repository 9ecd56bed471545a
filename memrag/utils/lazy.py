"""Lazy package exports: names resolved from their modules on first access."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], extra: tuple[str, ...] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose public names load lazily.

    Args:
        package: The package's ``__name__`` (for error messages).
        exports: Public name -> module that defines it.
        extra: Names defined eagerly in the package that ``dir()`` should list too.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted({*exports, *extra})

    return __getattr__, __dir__
