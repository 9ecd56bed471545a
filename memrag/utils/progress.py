"""Progress bars for long work (tqdm), quiet when not attached to a terminal if asked."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


def progress(*, total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar with memrag's defaults (usable as a context manager)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, **kwargs)
