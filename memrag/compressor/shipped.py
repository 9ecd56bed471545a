"""Compressors shipped inside the memrag package, and resolution of compressor names."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: Name of the trained default compressor (for ``gemma-3-270m``): subset K/V slots, the slots
#: that answer best (docs/RESULTS.md, "Trained K/V slots").
DEFAULT_COMPRESSOR = "gemma-3-270m-kv-subset"

#: The shipped default for stores of ``embedding`` memory, which need embedding slots (ICAE).
DEFAULT_EMBEDDING_COMPRESSOR = "gemma-3-270m-icae"


def default_compressor(memory_kind: str | None = None) -> str:
    """The shipped compressor used when none is named, for memory of ``memory_kind``.

    ``"embedding"`` memory needs a compressor with embedding slots
    (:data:`DEFAULT_EMBEDDING_COMPRESSOR`); every other kind, and ``None``, gets
    :data:`DEFAULT_COMPRESSOR` (K/V memory of the frozen decoder only uses its base model).
    """
    kind = getattr(memory_kind, "value", memory_kind)  # a MemoryKind or its name
    return DEFAULT_EMBEDDING_COMPRESSOR if kind == "embedding" else DEFAULT_COMPRESSOR


def shipped_dir() -> Path:
    """Directory holding the compressors shipped with the package."""
    return Path(str(files("memrag").joinpath("resources", "compressors")))


def shipped_compressors() -> list[str]:
    """Names of the compressors shipped with this installation."""
    root = shipped_dir()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def resolve_compressor_path(name_or_path: str | Path | None) -> Path:
    """Turns ``None`` (the default), a shipped name, or a directory into a directory path.

    Raises:
        FileNotFoundError: the name is neither a directory nor a shipped compressor.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_COMPRESSOR
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    shipped = shipped_dir() / str(name_or_path)
    if shipped.is_dir():
        return shipped
    available = ", ".join(shipped_compressors()) or "none in this installation"
    raise FileNotFoundError(
        f"no compressor at {str(name_or_path)!r}: not a directory, and not a shipped compressor "
        f"(shipped: {available}). Train one with `memrag train` or pass a directory."
    )


def source_name(directory: str | Path) -> str:
    """How to record where a compressor was loaded from: its shipped name, or the directory.

    A shipped compressor is named (``"gemma-3-270m-kv-subset"``) rather than located, so store
    manifests and reports stay valid when the installed package moves.
    """
    path = Path(directory)
    if path.resolve().parent == shipped_dir().resolve():
        return path.name
    return str(path)

