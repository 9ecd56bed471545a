"""``memrag bench``: quality, latency and storage of every context mode, side by side.

Importing this package is cheap; its parts are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BenchSettings": "memrag.bench.runner",
    "BenchResult": "memrag.bench.runner",
    "RESULT_FIELDS": "memrag.bench.runner",
    "run_benchmark": "memrag.bench.runner",
    "MODES": "memrag.bench.modes",
    "AnswerTimer": "memrag.bench.timing",
    "AnswerTiming": "memrag.bench.timing",
    "percentile": "memrag.bench.timing",
    "FullKVStore": "memrag.bench.full_kv",
    "environment": "memrag.bench.report",
    "markdown_report": "memrag.bench.report",
    "write_plots": "memrag.bench.report",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'memrag.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
