"""One way to get a compressor from what a user passes: every entry point calls
:func:`resolve_compressor` (the CLI, the demo, the store, the indexing job, training)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

import torch

if TYPE_CHECKING:
    from memrag.compressor.model import Compressor

logger = logging.getLogger(__name__)

#: What names a compressor: an instance, a zero-argument factory, a directory or shipped
#: name, or ``None`` for the shipped default.
CompressorSource = Union["Compressor", Callable[[], "Compressor"], str, "os.PathLike[str]", None]


def resolve_compressor(
    source: CompressorSource = None,
    *,
    memory_kind: Any = None,
    untrained_base: str | None = None,
    fallback_base: str | None = None,
    on_fallback: Callable[[str], None] | None = None,
    device: Any = "cpu",
    dtype: Any = "float32",
) -> Compressor:
    """The compressor ``source`` names.

    Args:
        source: A compressor or an object that wraps one (anything with ``config`` and
            ``fingerprint``; returned as it is), a zero-argument factory (called), a
            directory or shipped name (loaded), or ``None``: the shipped default for memory of
            ``memory_kind`` (:func:`~memrag.compressor.shipped.default_compressor`).
        memory_kind: The memory the compressor is for (a :class:`~memrag.memory.kinds.MemoryKind`
            or its name); only used when ``source`` is ``None``.
        untrained_base: Build a freshly initialised compressor over this base model instead
            (``source`` is ignored): a baseline, or K/V memory of the frozen decoder, which
            uses only the base model.
        fallback_base: When the compressor to load cannot be found, build an untrained one
            over this base instead of raising; ``on_fallback`` (default: a logged warning) is
            told why.
        on_fallback: Receives the message of a fallback.
        device: Device of a loaded or built compressor.
        dtype: Weight dtype of a loaded or built compressor.

    Raises:
        FileNotFoundError: ``source`` is neither a directory nor a shipped compressor (and
            there is no ``fallback_base``).
        TypeError: ``source`` is of another type.
    """
    from memrag.compressor.model import Compressor
    from memrag.compressor.shipped import default_compressor

    if untrained_base is not None:
        return Compressor.from_base(untrained_base, device=device, dtype=dtype)
    if isinstance(source, torch.nn.Module) or _is_compressor_like(source):
        return source  # type: ignore[return-value]
    if source is None:
        source = default_compressor(memory_kind)
    if isinstance(source, (str, os.PathLike)):
        try:
            return Compressor.from_pretrained(str(source), device=device, dtype=dtype)
        except FileNotFoundError as err:
            if fallback_base is None:
                raise
            (on_fallback or logger.warning)(
                f"{err}; using an untrained compressor over {fallback_base} instead"
            )
            return Compressor.from_base(fallback_base, device=device, dtype=dtype)
    if callable(source):
        return source()
    raise TypeError(
        "compressor must be a Compressor, a factory, a directory or shipped name, or None, "
        f"got {type(source).__name__}"
    )


def _is_compressor_like(source: Any) -> bool:
    """A compressor or a wrapper of one (it has the compressor's ``config`` and ``fingerprint``)."""
    return (
        source is not None
        and not isinstance(source, (str, os.PathLike))
        and all(hasattr(source, name) for name in ("config", "fingerprint"))
    )
