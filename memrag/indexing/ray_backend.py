"""Running the compression job on Ray: one model copy per actor, results merged by the driver.

:class:`RayExecutor` starts ``num_workers`` Ray actors. Each loads its own compressor (from
a directory, shipped name, or a factory function) and embedder once, then turns batches of
chunks into :class:`~memrag.store.processing.ProcessedBatch` es. The driver plans batches,
keeps a bounded number in flight, and writes every returned batch into the store (one shard,
one transaction), so the store is written by a single process and the result equals the
local backend's. Actors ask Ray for ``num_gpus_per_worker`` GPUs and then run on CUDA.

Pointing it at an existing cluster: start Ray on the machines (``ray start --head`` on one,
``ray start --address=<head>:6379`` on the others), install memrag (and the compressor
directory, or use a shipped name) on every node, then run the job on the head node with
``--ray-address auto`` (or from elsewhere with ``--ray-address ray://<head>:10001``). The
store directory only needs to exist where the driver runs. Without an address the job
starts a private local Ray with ``num_workers * num_cpus_per_worker`` CPUs and stops it at
the end.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from memrag.store.embedder import HashingEmbedder, SentenceTransformerEmbedder, load_embedder
from memrag.store.errors import compressor_mismatch
from memrag.store.processing import ChunkInput, ChunkProcessor, ProcessedBatch, processor_settings

logger = logging.getLogger(__name__)


@dataclass
class RayOptions:
    """Where and how wide the Ray job runs.

    Args:
        address: ``None`` starts a local Ray instance; ``"auto"`` joins the cluster this
            machine belongs to; ``"ray://host:10001"`` connects through Ray Client.
        num_workers: Actors, each with its own copy of the models.
        num_cpus_per_worker: CPUs each actor reserves (its torch thread count).
        num_gpus_per_worker: GPUs each actor reserves (``> 0`` runs the models on CUDA).
        max_in_flight: Batches submitted but not yet written (default: twice the workers).
        runtime_env: Ray runtime environment (e.g. ``{"pip": ["memrag"]}``) for clusters.
        init_kwargs: Extra ``ray.init`` arguments.
    """

    address: str | None = None
    num_workers: int = 2
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    max_in_flight: int | None = None
    runtime_env: dict[str, Any] | None = None
    init_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.num_cpus_per_worker <= 0 or self.num_gpus_per_worker < 0:
            raise ValueError("num_cpus_per_worker must be > 0 and num_gpus_per_worker >= 0")


def _pretrained(source: str, device: str, dtype: Any) -> Any:
    from memrag.compressor.resolve import resolve_compressor

    return resolve_compressor(source, device=device, dtype=dtype)


def _untrained(base_model: str, device: str, dtype: Any) -> Any:
    from memrag.compressor.resolve import resolve_compressor

    return resolve_compressor(untrained_base=base_model, device=device, dtype=dtype)


def worker_compressor_factory(spec: Any, store: Any, device: str, dtype: Any) -> Callable[[], Any]:
    """A picklable zero-argument function that loads the store's compressor on a worker.

    Args:
        spec: What the job was given: a factory, a directory / shipped name, a loaded
            compressor that records its ``source``, or ``None`` (the store's manifest).
        store: The store (its manifest names the compressor when ``spec`` is ``None``).
        device: Device to load it on.
        dtype: Weight dtype.

    Raises:
        ValueError: a compressor built in memory that workers cannot load.
    """
    if spec is not None and callable(spec) and not isinstance(spec, torch.nn.Module):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        return functools.partial(_pretrained, str(spec), device, dtype)
    source = getattr(spec, "source", None) if spec is not None else store.manifest.compressor.source
    if source:
        return functools.partial(_pretrained, str(source), device, dtype)
    if spec is None:
        return functools.partial(_untrained, store.manifest.compressor.base_model, device, dtype)
    raise ValueError(
        "the Ray backend loads the compressor on every worker: pass its directory or shipped name, "
        "or a zero-argument factory function, instead of a compressor built in memory"
    )


class _Worker:
    """A Ray actor holding one copy of the compressor and embedder."""

    def __init__(
        self,
        factory: Callable[[], Any],
        embedder: Any,
        processor_kwargs: dict[str, Any],
        threads: int,
        device: str,
    ) -> None:
        torch.set_num_threads(max(1, threads))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        compressor = factory()
        self.processor = ChunkProcessor(
            compressor, load_embedder(embedder, device=device), **processor_kwargs
        )

    def fingerprint(self) -> str:
        return str(self.processor.fingerprint)

    def process(self, chunks: list[ChunkInput]) -> ProcessedBatch:
        return self.processor.process(chunks)


class RayExecutor:
    """Processes batches on Ray actors (see the module docstring).

    Args:
        store: The store being built (for its settings and fingerprint).
        factory: Loads the compressor on a worker (:func:`worker_compressor_factory`).
        options: The job's :class:`~memrag.indexing.job.BuildOptions`.
        ray_options: Cluster address and worker resources.
        device: Device on workers without GPUs.

    Ray and the actors start when the first batch needs them (a resumed build with nothing
    left to do starts nothing).

    Raises:
        ImportError: Ray is not installed (``pip install 'memrag[ray]'``).
        CompressorMismatchError: a worker loaded a compressor other than the store's.
    """

    def __init__(
        self,
        store: Any,
        factory: Callable[[], Any],
        options: Any,
        ray_options: RayOptions,
        *,
        device: str = "cpu",
    ) -> None:
        try:
            import ray
        except ImportError as err:
            raise ImportError("the Ray backend needs Ray: pip install 'memrag[ray]'") from err
        self._ray = ray
        self.options = ray_options
        self.store = store
        self._factory = factory
        self._device = device
        self._owns_ray = False
        self.workers: list[Any] = []
        self._processor_kwargs = {
            "compress_batch_size": options.compress_batch_size,
            **processor_settings(store.manifest),
        }

    def _start(self) -> None:
        """Starts (or joins) Ray and the actors; called when the first batch needs them."""
        ray, ray_options, store = self._ray, self.options, self.store
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "logging_level": logging.WARNING,
                "runtime_env": ray_options.runtime_env,
                **ray_options.init_kwargs,
            }
            if ray_options.address is None:
                kwargs.setdefault(
                    "num_cpus",
                    max(1, int(round(ray_options.num_workers * ray_options.num_cpus_per_worker))),
                )
            ray.init(address=ray_options.address, **kwargs)
            self._owns_ray = True
        on_gpu = ray_options.num_gpus_per_worker > 0
        # Workers load a built-in embedder by its id; another one is shipped to them.
        embedder = store.embedder
        if isinstance(embedder, (HashingEmbedder, SentenceTransformerEmbedder)):
            embedder = store.manifest.embedder.id
        actor = ray.remote(
            num_cpus=ray_options.num_cpus_per_worker, num_gpus=ray_options.num_gpus_per_worker
        )(_Worker)
        threads = max(1, int(ray_options.num_cpus_per_worker))
        worker_device = "cuda" if on_gpu else self._device
        factory = _on_device(self._factory, worker_device) if on_gpu else self._factory
        self.workers = [
            actor.remote(factory, embedder, self._processor_kwargs, threads, worker_device)
            for _ in range(ray_options.num_workers)
        ]
        fingerprints = ray.get([w.fingerprint.remote() for w in self.workers])
        wrong = {f for f in fingerprints if f != store.fingerprint}
        if wrong:
            raise compressor_mismatch(
                f"Ray workers make memory {sorted(wrong)[0]}, but {store.path} holds "
                f"{store.memory.kind} memory {store.fingerprint}"
            )
        logger.info(
            "Ray executor: %d workers (%s)", len(self.workers), ray_options.address or "local Ray"
        )

    def map(self, batches: Iterable[list[ChunkInput]]) -> Iterator[ProcessedBatch]:
        """Submits batches round-robin with a bounded queue; yields results as they finish."""
        from ray.util import ActorPool

        pool = None
        limit = self.options.max_in_flight or 2 * self.options.num_workers
        in_flight = 0
        for batch in batches:
            if pool is None:
                self._start()
                pool = ActorPool(self.workers)
            while in_flight >= limit:
                yield pool.get_next_unordered()
                in_flight -= 1
            pool.submit(lambda worker, chunks: worker.process.remote(chunks), batch)
            in_flight += 1
        while in_flight and pool is not None:
            yield pool.get_next_unordered()
            in_flight -= 1

    def close(self) -> None:
        """Stops the actors, and the local Ray instance if this executor started it."""
        for worker in self.workers:
            try:
                self._ray.kill(worker)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.workers = []
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False


def _load_on(factory: Callable[[], Any], device: str) -> Any:
    return factory().to(device)


def _on_device(factory: Callable[[], Any], device: str) -> Callable[[], Any]:
    """Wraps a factory so the compressor it returns is moved to ``device``."""
    return functools.partial(_load_on, factory, device)
