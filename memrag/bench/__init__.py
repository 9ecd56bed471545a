"""``memrag bench``: quality, latency and storage of every context mode, side by side.

Importing this package is cheap; its parts are imported on first use.
"""

from __future__ import annotations

from memrag.utils.lazy import lazy_exports

_EXPORTS = {
    "BenchSettings": "memrag.bench.runner",
    "BenchResult": "memrag.bench.runner",
    "RESULT_FIELDS": "memrag.bench.runner",
    "run_benchmark": "memrag.bench.runner",
    "MODES": "memrag.bench.modes",
    "AnswerTimer": "memrag.bench.timing",
    "AnswerTiming": "memrag.bench.timing",
    "percentile": "memrag.bench.timing",
    "environment": "memrag.bench.report",
    "markdown_report": "memrag.bench.report",
    "write_plots": "memrag.bench.report",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, ())
