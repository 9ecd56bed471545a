"""Several processes through ``torchrun``: rank discovery, device choice, collectives.

Launch with ``torchrun --nproc-per-node N -m memrag.cli train ...`` (or the ``memrag``
script). Every process holds the full compressor; gradients of the (small) trainable
parameters are summed across processes after each step, and each process reads its own shard
of the data. With ``WORLD_SIZE`` unset or 1 everything here is a no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from memrag.utils.torch_utils import resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands among the processes of a run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, logs and evaluations."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Reads torchrun's environment, joins the process group, and picks this process's device.

    Args:
        device: The requested device; under torchrun with CUDA, ``cuda:LOCAL_RANK`` is used.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device != "cpu":
        torch.cuda.set_device(local)
        chosen = torch.device("cuda", local)
        backend = "nccl"
    else:
        chosen = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    logger.info("process %d/%d on %s", rank, world, chosen)
    return DistInfo(rank=rank, world_size=world, local_rank=local), chosen


def all_reduce_sum(info: DistInfo, values: Sequence[float], device: torch.device) -> list[float]:
    """Sums a few numbers over all processes."""
    if not info.enabled:
        return list(values)
    import torch.distributed as dist

    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_gradients(info: DistInfo, parameters: Sequence[torch.nn.Parameter]) -> None:
    """Sums the gradients of ``parameters`` over all processes (in one flat buffer)."""
    if not info.enabled:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for parameter, grad in zip(parameters, grads):
        size = grad.numel()
        parameter.grad = flat[offset : offset + size].view_as(parameter).clone()
        offset += size


def gather(info: DistInfo, value: Any) -> list[Any]:
    """Every process's ``value``, in rank order (on every process)."""
    if not info.enabled:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * info.world_size
    dist.all_gather_object(values, value)
    return values


def barrier(info: DistInfo) -> None:
    """Waits for all processes."""
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()
