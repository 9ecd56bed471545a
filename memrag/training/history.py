"""The training log (JSON lines a person or a script can read) and its plot (PNG).

Each line of ``log.jsonl`` is one event: ``{"event": "train", "step": ..., "loss": ...}`` for
training statistics and ``{"event": "eval", "step": ..., ...}`` for evaluations. On resume the
lines written after the checkpoint are dropped, so the log always tells one consistent run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memrag.utils.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

LOG_NAME = "log.jsonl"
PLOT_NAME = "curves.png"


class TrainingLog:
    """Appends events to a JSONL file.

    Args:
        path: The log file (created with its folder when missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        """Writes one event line and flushes it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """All events (lines that are not valid JSON, e.g. cut by a crash, are skipped)."""
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def truncate_after(self, step: int) -> None:
        """Drops events of steps after ``step`` (written after the checkpoint resumed from)."""
        kept = [r for r in self.read() if int(r.get("step", 0)) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def _series(records: Sequence[dict[str, Any]], event: str, key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get("event") == event and isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [float(p[1]) for p in points]


def plot_history(records: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path | None:
    """Draws losses, evaluation metrics and the learning rate against steps into a PNG.

    Returns:
        The path written, or None when there is nothing to plot yet.
    """
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    loss_keys = sorted({k for r in records for k in r if k == "loss" or k.startswith("loss_")})
    metric_keys = sorted(
        {k for r in records if r.get("event") == "eval" for k in r if k not in ("event", "step", "time") and not k.startswith("loss")}
    )
    figure = Figure(figsize=(13, 4))
    figure.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.86, wspace=0.22)
    axes = figure.subplots(1, 3)
    for key in loss_keys:
        for event, style in (("train", "-"), ("eval", "o--")):
            steps, values = _series(records, event, key)
            if steps:
                axes[0].plot(steps, values, style, label=f"{event} {key}", markersize=3)
    axes[0].set_title("loss (nats / target token)")
    for key in metric_keys:
        steps, values = _series(records, "eval", key)
        if steps:
            axes[1].plot(steps, values, "o-", label=key, markersize=3)
    axes[1].set_title("evaluation")
    steps, values = _series(records, "train", "lr")
    axes[2].plot(steps, values)
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        figure.suptitle(title)
    target = Path(path)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return target
