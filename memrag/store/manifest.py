"""The store's manifest: what made the store and how to read it (``manifest.json``).

The manifest is written atomically. Counts in it are informational (refreshed after each
write); the SQLite database is the source of truth for what the store holds.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memrag.memory.kinds import MemoryKind
from memrag.store.errors import StoreCorruptError, StoreNotFoundError, StoreVersionError
from memrag.store.index import IndexSpec
from memrag.utils.atomic import atomic_write_text
from memrag.version import __version__

#: Format of a store directory. Bump on incompatible changes; older memrag refuses newer.
#: Version 2 adds K/V memory; a store of embedding slots is still written as version 1, so
#: older memrag keeps reading it.
STORE_FORMAT_VERSION = 2
EMBEDDING_STORE_FORMAT_VERSION = 1
STORE_FORMAT = "memrag-store"

MANIFEST_NAME = "manifest.json"
DATABASE_NAME = "store.sqlite"
INDEX_DIR = "index"
SHARDS_DIR = "shards"
LOCK_NAME = ".write.lock"

SLOT_DTYPES = ("float16", "bfloat16", "float32")
FIDELITY_METHODS = ("reconstruct", "agreement", "none")
#: Default threshold of each scoring method (chunks below it are served as text), chosen by
#: measurement (``benchmarks/quality_gate.py``; docs/RESULTS.md, "Quality gate").
DEFAULT_FIDELITY_THRESHOLDS = {"reconstruct": 0.5, "agreement": 0.24}


def resolve_fidelity(method: str, memory_kind: str) -> str:
    """The scoring method a store records: ``"auto"`` is ``"agreement"`` for K/V memory (what
    its answers lose against the text's) and ``"reconstruct"`` for embedding slots.

    Raises:
        ValueError: an unknown method.
    """
    if method == "auto":
        return "reconstruct" if memory_kind == "embedding" else "agreement"
    if method not in FIDELITY_METHODS:
        raise ValueError(f"fidelity must be auto or one of {', '.join(FIDELITY_METHODS)}, got {method!r}")
    return method


@dataclass
class CompressorInfo:
    """The compressor whose slots the store holds.

    Attributes:
        fingerprint: Its fingerprint; a store refuses any other compressor.
        base_model: Name or path of its base model.
        source: Directory or shipped name it was loaded from; ``None`` for an untrained
            compressor built with ``Compressor.from_base`` (seed 0), which can be rebuilt.
        slot_kind: ``"embedding"`` or ``"kv"``.
        segment_length: Tokens per compressed segment.
        compression_rate: Tokens per slot.
        hidden_size: Width of a slot.
    """

    fingerprint: str
    base_model: str
    source: str | None
    slot_kind: str
    segment_length: int
    compression_rate: int
    hidden_size: int


@dataclass
class MemoryInfo:
    """The memory the store holds for each chunk (one kind per store).

    Attributes:
        kind: ``"embedding"``, ``"kv-exact"`` or ``"kv-pruned"``.
        settings: The :class:`~memrag.memory.spec.MemorySpec` (JSON form).
        fingerprint: What chunks' memory must have been made by: the compressor's fingerprint
            for ``embedding``; for K/V kinds a hash of the base model and the settings (any
            compressor over that base model makes the same K/V memory).
        base_model: Name or path of the base model.
        base_model_signature: Shape facts and a weight checksum of the base model.
        layers: Decoder layers (K/V kinds).
        kv_heads: Key/value heads per layer (K/V kinds).
        head_dim: Width of a head (K/V kinds).
        row_bytes: Width of a stored row in bytes (K/V kinds; see :mod:`memrag.memory.codec`).
        kv_calibration: What the codec codes with, measured when the store was created: the
            channel centres and scales of ``int4c``, the transform and frequency model of
            ``tc<bits>`` (:meth:`KVCodec.calibration_text
            <memrag.memory.codec.KVCodec.calibration_text>` form, checksummed; empty for
            dtypes that need none).
    """

    kind: MemoryKind
    settings: dict[str, Any]
    fingerprint: str
    base_model: str
    base_model_signature: dict[str, Any] = field(default_factory=dict)
    layers: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    row_bytes: int = 0
    kv_calibration: str = ""

    def __post_init__(self) -> None:
        self.kind = MemoryKind.parse(self.kind)

    @property
    def packed_kv(self) -> bool:
        """Whether chunks are stored as packed keys and values (the kind's registry entry)."""
        return self.kind.packed_kv

    def spec(self) -> Any:
        """The :class:`~memrag.memory.spec.MemorySpec` this describes."""
        from memrag.memory.spec import MemorySpec

        return MemorySpec.from_dict(self.settings)

    def codec(self) -> Any:
        """The :class:`~memrag.memory.codec.KVCodec` the store's K/V rows are packed with."""
        from memrag.memory.codec import kv_codec

        codec = kv_codec(
            self.layers, self.kv_heads, self.head_dim, self.spec().kv_dtype, self.kv_calibration
        )
        if codec.needs_calibration and not self.kv_calibration:
            raise ValueError(f"memory.kv_calibration is missing ({codec.dtype} rows need it)")
        return codec

    def inconsistency(self) -> str | None:
        """What in this description contradicts itself (e.g. an edited manifest), or ``None``."""
        settings_kind = self.settings.get("kind", "embedding")
        if settings_kind != self.kind:
            return f"memory.kind is {self.kind!r} but memory.settings.kind is {settings_kind!r}"
        if self.packed_kv:
            try:
                expected = self.codec().row_bytes
            except (ValueError, TypeError) as err:
                return f"memory settings are invalid: {err}"
            if expected != self.row_bytes:
                return (
                    f"memory.row_bytes is {self.row_bytes}, but {self.layers} layers x "
                    f"{self.kv_heads} heads x {self.head_dim} head_dim as "
                    f"{self.spec().kv_dtype} take {expected}"
                )
        return None


@dataclass(frozen=True)
class ShardLayout:
    """What every slot shard of a store must hold, by its manifest.

    Attributes:
        kind: The memory kind written in each shard's header (``slot_kind``).
        width: Row width: bytes per K/V row, or the slot width of embedding slots.
        dtype: The safetensors dtype of the rows (``U8`` for K/V rows).
    """

    kind: str
    width: int
    dtype: str


#: safetensors dtype names of the embedding slot dtypes.
SAFETENSORS_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}


@dataclass
class EmbedderInfo:
    """The embedder the store's vectors were made with."""

    id: str
    dimension: int


@dataclass
class Options:
    """Store-wide settings used when chunks are added.

    Attributes:
        slot_dtype: Dtype the slots are stored in (``float16`` by default).
        fidelity: ``"reconstruct"`` (score each chunk by how well the frozen decoder
            reconstructs it from its slots), ``"agreement"`` (by how closely the decoder
            answers questions about the chunk from its memory as from its text; see
            :mod:`memrag.store.fidelity`) or ``"none"``.
        fidelity_threshold: Chunks scoring below it are flagged ``use_text``.
        fidelity_max_tokens: Reconstruct at most this many tokens of a chunk.
        fidelity_sample_tokens: Average the NLL over this many of them, evenly spaced
            (``None``: all; see :mod:`memrag.store.fidelity`).
        chunk_tokens: Chunk length in compressor tokens (new stores record it; ``None``, in
            stores made before: the segment length).
        chunk_overlap: Tokens shared by consecutive chunks of a document (``None``: an
            eighth of the chunk length).
    """

    slot_dtype: str = "float16"
    fidelity: str = "reconstruct"
    fidelity_threshold: float = 0.5
    fidelity_max_tokens: int = 512
    fidelity_sample_tokens: int | None = 32
    chunk_tokens: int | None = None
    chunk_overlap: int | None = None

    def __post_init__(self) -> None:
        if self.slot_dtype not in SLOT_DTYPES:
            raise ValueError(
                f"slot_dtype must be one of {', '.join(SLOT_DTYPES)}, got {self.slot_dtype!r}"
            )
        if self.fidelity not in FIDELITY_METHODS:
            raise ValueError(
                f"fidelity must be one of {', '.join(FIDELITY_METHODS)}, got {self.fidelity!r}"
            )
        if not 0.0 <= float(self.fidelity_threshold) <= 1.0:
            raise ValueError(f"fidelity_threshold must be in [0, 1], got {self.fidelity_threshold}")
        if self.fidelity_max_tokens < 1:
            raise ValueError(f"fidelity_max_tokens must be >= 1, got {self.fidelity_max_tokens}")
        if self.fidelity_sample_tokens is not None and self.fidelity_sample_tokens < 1:
            raise ValueError(
                f"fidelity_sample_tokens must be >= 1 or None, got {self.fidelity_sample_tokens}"
            )
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {self.chunk_tokens}")
        if self.chunk_overlap is not None and (
            self.chunk_overlap < 0
            or (self.chunk_tokens is not None and self.chunk_overlap >= self.chunk_tokens)
        ):
            raise ValueError(
                "chunk_overlap must be >= 0 and smaller than chunk_tokens, got "
                f"{self.chunk_overlap}"
            )

    def processor_kwargs(self) -> dict[str, Any]:
        """The :class:`~memrag.store.processing.ChunkProcessor` arguments these options set."""
        return {
            "slot_dtype": self.slot_dtype,
            "fidelity": self.fidelity,
            "fidelity_max_tokens": self.fidelity_max_tokens,
            "fidelity_sample_tokens": self.fidelity_sample_tokens,
        }


@dataclass
class Manifest:
    """Contents of ``manifest.json``."""

    compressor: CompressorInfo
    embedder: EmbedderInfo
    index: IndexSpec
    options: Options = field(default_factory=Options)
    counts: dict[str, int] = field(default_factory=dict)
    format: str = STORE_FORMAT
    format_version: int = EMBEDDING_STORE_FORMAT_VERSION
    memrag_version: str = __version__
    created: float = field(default_factory=time.time)
    memory: MemoryInfo | None = None

    def __post_init__(self) -> None:
        if self.memory is None:  # a version-1 store: embedding slots of its compressor
            self.memory = MemoryInfo(
                kind="embedding",
                settings={"kind": "embedding"},
                fingerprint=self.compressor.fingerprint,
                base_model=self.compressor.base_model,
            )
        if self.memory.packed_kv:
            self.format_version = max(self.format_version, STORE_FORMAT_VERSION)

    @property
    def memory_info(self) -> MemoryInfo:
        """:attr:`memory` (always set after construction)."""
        assert self.memory is not None
        return self.memory

    def shard_layout(self) -> ShardLayout:
        """What the store's shards must hold (kind in the header, row width, dtype)."""
        memory = self.memory_info
        if memory.packed_kv:
            return ShardLayout(memory.kind, memory.row_bytes, "U8")
        dtype = SAFETENSORS_DTYPES.get(self.options.slot_dtype, self.options.slot_dtype)
        return ShardLayout(memory.kind, self.compressor.hidden_size, dtype)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "format": self.format,
            "format_version": self.format_version,
            "memrag_version": self.memrag_version,
            "created": self.created,
            "compressor": dataclasses.asdict(self.compressor),
            "memory": dataclasses.asdict(self.memory_info),
            "embedder": dataclasses.asdict(self.embedder),
            "index": self.index.to_dict(),
            "options": dataclasses.asdict(self.options),
            "counts": dict(self.counts),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, path: Path | str = MANIFEST_NAME) -> Manifest:
        """Parses a manifest, refusing newer format versions and malformed content.

        Raises:
            StoreVersionError: written by a newer memrag.
            StoreCorruptError: not a memrag store manifest, or a field is missing / invalid.
        """
        if not isinstance(data, dict) or data.get("format") != STORE_FORMAT:
            raise StoreCorruptError(
                f"{path}: not a memrag store manifest (format is not {STORE_FORMAT!r})"
            )
        version = data.get("format_version")
        if not isinstance(version, int):
            raise StoreCorruptError(f"{path}: format_version is missing or not an integer")
        if version > STORE_FORMAT_VERSION:
            raise StoreVersionError(
                f"{path}: store format version {version} is newer than this memrag "
                f"({__version__}) supports ({STORE_FORMAT_VERSION}); upgrade memrag to read it"
            )
        try:
            memory = MemoryInfo(**data["memory"]) if data.get("memory") else None
            if memory is not None:
                memory.spec()  # validates the settings
            return cls(
                memory=memory,
                compressor=CompressorInfo(**data["compressor"]),
                embedder=EmbedderInfo(**data["embedder"]),
                index=IndexSpec.from_dict(data["index"]),
                options=Options(**data.get("options", {})),
                counts={str(k): int(v) for k, v in data.get("counts", {}).items()},
                format=data["format"],
                format_version=version,
                memrag_version=str(data.get("memrag_version", "")),
                created=float(data.get("created", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise StoreCorruptError(
                f"{path}: invalid manifest ({type(err).__name__}: {err})"
            ) from None

    def save(self, directory: Path) -> None:
        """Writes ``manifest.json`` into ``directory`` atomically."""
        atomic_write_text(
            directory / MANIFEST_NAME, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        )

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        """Reads ``manifest.json`` from ``directory``.

        Raises:
            StoreNotFoundError: there is no manifest (not a store).
            StoreVersionError: written by a newer memrag.
            StoreCorruptError: unreadable or invalid.
        """
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise StoreNotFoundError(
                f"{directory} is not a memrag store: {MANIFEST_NAME} is missing"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StoreCorruptError(f"{path}: unreadable manifest ({err})") from None
        return cls.from_dict(data, path=path)
