"""The FAISS vector index of a store: int64 vector ids, inner product on unit vectors.

Vectors are L2-normalised, so the inner product is the cosine similarity and a higher
score is closer. The FAISS index is wrapped in an ``IndexIDMap2`` whose ids are the
``vid`` column of the store's SQLite database; SQLite maps them to chunk ids.

Three structures are selectable (:class:`IndexSpec`): ``flat`` (exact, the default),
``hnsw`` (graph; FAISS cannot remove from it, so deleted ids become *tombstones* that
searches exclude until :meth:`MemoryStore.compact` rebuilds it) and ``ivf`` (inverted lists;
it needs training, so an ``ivf`` store searches exactly with a flat index until it holds
``ivf_min_train`` vectors, then is trained and converted at the next checkpoint).

The index on disk is a derived artifact: checkpoints ``index-<seq>.faiss`` (written
atomically, with a JSON sidecar holding its SHA-256) plus the database's journal of adds
and deletes after ``seq`` give the current index. No pickle: FAISS's own serialisation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memrag.store.errors import StoreCorruptError
from memrag.utils.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "hnsw", "ivf")
METRIC = "inner_product"
_CHECKPOINT_RE = re.compile(r"^index-(\d{12})\.json$")
_ADD_BATCH = 65_536


@dataclass
class IndexSpec:
    """Which FAISS structure a store uses, and its parameters.

    Args:
        type: ``"flat"`` (exact), ``"hnsw"`` or ``"ivf"``.
        hnsw_m: Neighbours per HNSW node.
        hnsw_ef_construction: HNSW build-time beam width.
        hnsw_ef_search: HNSW search-time beam width.
        ivf_nlist: Number of IVF lists; ``None`` picks ``sqrt(n)`` when trained.
        ivf_nprobe: IVF lists visited per query.
        ivf_min_train: An ``ivf`` store stays flat (exact) until it holds this many vectors.
    """

    type: str = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64
    ivf_nlist: int | None = None
    ivf_nprobe: int = 16
    ivf_min_train: int = 10_000

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise ValueError(
                f"index type must be one of {', '.join(INDEX_TYPES)}, got {self.type!r}"
            )
        for name in (
            "hnsw_m",
            "hnsw_ef_construction",
            "hnsw_ef_search",
            "ivf_nprobe",
            "ivf_min_train",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"index option {name} must be >= 1, got {getattr(self, name)}")
        if self.ivf_nlist is not None and self.ivf_nlist < 1:
            raise ValueError(f"index option ivf_nlist must be >= 1, got {self.ivf_nlist}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in the manifest)."""
        return {"metric": METRIC, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IndexSpec":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        data = {k: v for k, v in data.items() if k != "metric"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown index options: {', '.join(unknown)}")
        return cls(**data)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Float32, C-contiguous, L2-normalised copy of ``(n, d)`` vectors (zero rows stay zero)."""
    array = np.array(vectors, dtype=np.float32, copy=True, ndmin=2)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    np.divide(array, norms, out=array, where=norms > 0)
    return np.ascontiguousarray(array)


def _ivf_nlist(spec: IndexSpec, n: int) -> int:
    if spec.ivf_nlist is not None:
        return max(1, min(spec.ivf_nlist, n))
    return max(1, min(int(math.sqrt(n)), n // 39))


class VectorIndex:
    """A FAISS ``IndexIDMap2`` plus the tombstones of ids deleted from an HNSW graph.

    Args:
        spec: The structure and its parameters.
        dimension: Vector width.
        faiss_index: An existing ``IndexIDMap2`` (from :meth:`deserialize`); a fresh empty
            index (flat, or HNSW for ``hnsw``) when omitted.
        tombstones: Ids still inside the graph but deleted (HNSW only).
    """

    def __init__(
        self,
        spec: IndexSpec,
        dimension: int,
        faiss_index: Any | None = None,
        tombstones: set[int] | None = None,
    ) -> None:
        import faiss

        self.spec = spec
        self.dimension = int(dimension)
        if faiss_index is None:
            if spec.type == "hnsw":
                inner = faiss.IndexHNSWFlat(self.dimension, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                inner.hnsw.efConstruction = spec.hnsw_ef_construction
            else:
                inner = faiss.IndexFlatIP(self.dimension)
            faiss_index = faiss.IndexIDMap2(inner)
        if faiss_index.d != self.dimension:
            raise StoreCorruptError(
                f"the FAISS index has dimension {faiss_index.d}, the store says {self.dimension}"
            )
        self.faiss_index = faiss_index
        self.tombstones: set[int] = set(tombstones or ())

    # ------------------------------------------------------------------ facts
    @property
    def structure(self) -> str:
        """The structure actually in use: ``flat``, ``hnsw`` or ``ivf``."""
        import faiss

        inner = faiss.downcast_index(self.faiss_index.index)
        if isinstance(inner, faiss.IndexHNSW):
            return "hnsw"
        if isinstance(inner, faiss.IndexIVF):
            return "ivf"
        return "flat"

    @property
    def ntotal(self) -> int:
        """Vectors in the FAISS index, tombstones included."""
        return int(self.faiss_index.ntotal)

    @property
    def live_count(self) -> int:
        """Vectors that searches can return."""
        return self.ntotal - len(self.tombstones)

    def ids(self) -> np.ndarray:
        """All int64 ids inside the FAISS index (tombstones included)."""
        import faiss

        return faiss.vector_to_array(self.faiss_index.id_map).astype(np.int64, copy=False)

    def wants_training(self) -> bool:
        """True for an ``ivf`` store still searching flat although it now has enough vectors."""
        return (
            self.spec.type == "ivf"
            and self.structure == "flat"
            and self.live_count >= self.spec.ivf_min_train
        )

    # ------------------------------------------------------------------ changes
    def add(self, vids: np.ndarray, vectors: np.ndarray) -> None:
        """Adds vectors (normalised here) under int64 ids."""
        vids = np.ascontiguousarray(vids, dtype=np.int64)
        if len(vids) == 0:
            return
        vectors = normalize(vectors)
        if vectors.shape != (len(vids), self.dimension):
            raise ValueError(
                f"expected vectors of shape ({len(vids)}, {self.dimension}), got {vectors.shape}"
            )
        for start in range(0, len(vids), _ADD_BATCH):
            self.faiss_index.add_with_ids(
                vectors[start : start + _ADD_BATCH], vids[start : start + _ADD_BATCH]
            )
        if self.tombstones:
            self.tombstones.difference_update(int(v) for v in vids)

    def remove(self, vids: np.ndarray) -> None:
        """Removes ids (HNSW: marks them as tombstones). Unknown ids are ignored."""
        import faiss

        vids = np.ascontiguousarray(vids, dtype=np.int64)
        if len(vids) == 0:
            return
        if self.structure == "hnsw":
            present = np.intersect1d(vids, self.ids())
            self.tombstones.update(int(v) for v in present)
        else:
            self.faiss_index.remove_ids(faiss.IDSelectorBatch(vids))

    # ------------------------------------------------------------------ search
    def search(
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids and scores for each query row.

        Args:
            queries: ``(n, d)`` query vectors (normalised here).
            k: Results per query.
            allowed: When given, only these ids may be returned (a metadata filter).

        Returns:
            ``(scores, ids)``, each ``(n, k)``; missing results have id ``-1``.
        """
        import faiss

        queries = normalize(queries)
        if queries.shape[1] != self.dimension:
            raise ValueError(
                f"query vectors have dimension {queries.shape[1]}, the index {self.dimension}"
            )
        if self.ntotal == 0 or k <= 0:
            empty = np.full((len(queries), max(k, 0)), -1, dtype=np.int64)
            return np.zeros(empty.shape, dtype=np.float32), empty
        keep: list[Any] = []  # selectors must outlive the search call
        selector = None
        if allowed is not None:
            allowed = np.ascontiguousarray(allowed, dtype=np.int64)
            if self.tombstones:
                allowed = np.setdiff1d(allowed, np.fromiter(self.tombstones, dtype=np.int64))
            selector = faiss.IDSelectorBatch(allowed)
            keep.append(allowed)
        elif self.tombstones:
            dead = np.fromiter(self.tombstones, dtype=np.int64)
            batch = faiss.IDSelectorBatch(dead)
            selector = faiss.IDSelectorNot(batch)
            keep.extend([dead, batch])
        structure = self.structure
        if structure == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.spec.hnsw_ef_search, k))
        elif structure == "ivf":
            params = faiss.SearchParametersIVF(nprobe=self.spec.ivf_nprobe)
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        keep.append(selector)
        scores, ids = self.faiss_index.search(queries, int(k), params=params)
        return scores, ids

    # ------------------------------------------------------------------ build / io
    @classmethod
    def build(
        cls, spec: IndexSpec, dimension: int, vids: np.ndarray, vectors: np.ndarray
    ) -> "VectorIndex":
        """A fresh index over the given vectors (an ``ivf`` spec is trained when large enough)."""
        import faiss

        vectors = normalize(vectors) if len(vids) else np.zeros((0, dimension), dtype=np.float32)
        if spec.type == "ivf" and len(vids) >= spec.ivf_min_train:
            nlist = _ivf_nlist(spec, len(vids))
            quantizer = faiss.IndexFlatIP(dimension)
            inner = faiss.IndexIVFFlat(quantizer, dimension, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = vectors
            limit = 64 * nlist  # FAISS wants >= 39 training points per list
            if len(vectors) > limit:
                rows = np.random.default_rng(0).choice(len(vectors), size=limit, replace=False)
                sample = vectors[np.sort(rows)]
            logger.info("training IVF index: %d lists on %d vectors", nlist, len(sample))
            inner.train(sample)
            # faiss's Python wrappers keep ``quantizer`` and ``inner`` referenced by their owners.
            index = cls(spec, dimension, faiss.IndexIDMap2(inner))
        else:
            index = cls(spec, dimension)
        index.add(vids, vectors)
        return index

    def serialize(self) -> np.ndarray:
        """The FAISS index as bytes (a ``uint8`` array), FAISS's own format."""
        import faiss

        return faiss.serialize_index(self.faiss_index)

    @classmethod
    def deserialize(
        cls, spec: IndexSpec, dimension: int, data: np.ndarray, tombstones: set[int] | None = None
    ) -> "VectorIndex":
        """Inverse of :meth:`serialize`.

        Raises:
            StoreCorruptError: FAISS cannot read the bytes.
        """
        import faiss

        try:
            faiss_index = faiss.deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))
        except RuntimeError as err:
            raise StoreCorruptError(
                f"FAISS cannot read the index: {str(err).splitlines()[0]}"
            ) from None
        if not isinstance(faiss_index, faiss.IndexIDMap2):
            raise StoreCorruptError(
                f"the index file holds a {type(faiss_index).__name__}, not an IndexIDMap2"
            )
        return cls(spec, dimension, faiss_index, tombstones)


# ---------------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class Checkpoint:
    """One index checkpoint on disk: the index after journal entry ``seq``."""

    seq: int
    sidecar: Path
    file: Path
    sha256: str
    bytes: int
    ntotal: int
    structure: str
    tombstones: tuple[int, ...]


def checkpoint_name(seq: int) -> str:
    """Base name (without suffix) of the checkpoint after journal entry ``seq``."""
    return f"index-{seq:012d}"


def list_checkpoints(directory: Path) -> list[Checkpoint]:
    """Checkpoints whose sidecar is readable, oldest first (their index files are not read).

    A sidecar that disappears while the directory is listed (a writer superseded it) is
    skipped.

    Raises:
        StoreCorruptError: a sidecar exists but is not valid JSON of the expected shape.
    """
    found: list[Checkpoint] = []
    if not directory.is_dir():
        return found
    for path in sorted(directory.iterdir()):
        match = _CHECKPOINT_RE.match(path.name)
        if not match:
            continue
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue  # deleted by a writer after a newer checkpoint
        except ValueError as err:
            raise StoreCorruptError(f"{path}: unreadable index sidecar ({err})") from None
        try:
            found.append(
                Checkpoint(
                    seq=int(info["seq"]),
                    sidecar=path,
                    file=directory / str(info["file"]),
                    sha256=str(info["sha256"]),
                    bytes=int(info["bytes"]),
                    ntotal=int(info["ntotal"]),
                    structure=str(info["structure"]),
                    tombstones=tuple(int(v) for v in info.get("tombstones", [])),
                )
            )
        except (ValueError, KeyError, TypeError) as err:
            raise StoreCorruptError(f"{path}: unreadable index sidecar ({err})") from None
    return sorted(found, key=lambda c: c.seq)


def write_checkpoint(directory: Path, seq: int, index: VectorIndex) -> Checkpoint:
    """Writes ``index`` as the checkpoint after journal entry ``seq`` (file, then sidecar)."""
    data = index.serialize()
    name = checkpoint_name(seq)
    file = directory / f"{name}.faiss"
    with atomic_path(file) as tmp:
        data.tofile(tmp)
    info = {
        "seq": seq,
        "file": file.name,
        "bytes": int(data.nbytes),
        "sha256": hashlib.sha256(data).hexdigest(),
        "ntotal": index.ntotal,
        "structure": index.structure,
        "tombstones": sorted(index.tombstones),
    }
    sidecar = directory / f"{name}.json"
    atomic_write_text(sidecar, json.dumps(info) + "\n")
    return Checkpoint(
        seq,
        sidecar,
        file,
        info["sha256"],
        info["bytes"],
        index.ntotal,
        index.structure,
        tuple(info["tombstones"]),
    )


def remove_checkpoint(checkpoint: Checkpoint) -> None:
    """Deletes a checkpoint: its sidecar first, so a listed sidecar always has its file."""
    checkpoint.sidecar.unlink(missing_ok=True)
    checkpoint.file.unlink(missing_ok=True)


def read_checkpoint(checkpoint: Checkpoint, spec: IndexSpec, dimension: int) -> VectorIndex:
    """Loads a checkpoint, checking its size and SHA-256 before FAISS parses it.

    Raises:
        StoreCorruptError: the file is missing, truncated, corrupt or unreadable.
    """
    try:
        data = np.fromfile(checkpoint.file, dtype=np.uint8)
    except FileNotFoundError:
        raise StoreCorruptError(f"index file {checkpoint.file} is missing") from None
    if data.nbytes != checkpoint.bytes:
        raise StoreCorruptError(
            f"index file {checkpoint.file} has {data.nbytes} bytes, expected "
            f"{checkpoint.bytes} (truncated?)"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != checkpoint.sha256:
        raise StoreCorruptError(
            f"index file {checkpoint.file} does not match its checksum (corrupt)"
        )
    try:
        index = VectorIndex.deserialize(spec, dimension, data, set(checkpoint.tombstones))
    except StoreCorruptError as err:
        raise StoreCorruptError(f"index file {checkpoint.file}: {err}") from None
    if index.ntotal != checkpoint.ntotal:
        raise StoreCorruptError(
            f"index file {checkpoint.file} holds {index.ntotal} vectors, its sidecar says "
            f"{checkpoint.ntotal}"
        )
    return index
