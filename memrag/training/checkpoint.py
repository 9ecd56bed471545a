"""Resumable training checkpoints, without pickle.

A checkpoint is a directory ``checkpoint-<step>`` written atomically::

    checkpoint-0000200/
      compressor/               a loadable compressor (Compressor.from_pretrained), float32
      optimizer.safetensors     AdamW moments and step counts
      optimizer.json            param groups and any non-tensor optimizer state
      scheduler.json            the learning-rate scheduler's state
      rng.safetensors           torch CPU/CUDA RNG states, one set per process
      trainer_state.json        step, examples and tokens seen, wall time, data positions
      training_args.json        the TrainingArguments of the run

Everything is safetensors or JSON; nothing is unpickled when a checkpoint is loaded.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from memrag.compressor.config import CONFIG_NAME
from memrag.utils.atomic import atomic_directory

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
COMPRESSOR_DIR = "compressor"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_JSON = "scheduler.json"
RNG_TENSORS = "rng.safetensors"
TRAINER_STATE = "trainer_state.json"
TRAINING_ARGS = "training_args.json"

#: Every file and folder a checkpoint holds.
CHECKPOINT_FILES = (
    COMPRESSOR_DIR,
    OPTIMIZER_TENSORS,
    OPTIMIZER_JSON,
    SCHEDULER_JSON,
    RNG_TENSORS,
    TRAINER_STATE,
    TRAINING_ARGS,
)
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainerState:
    """Progress of a run, saved in every checkpoint.

    Attributes:
        step: Optimizer steps done.
        examples: Training examples seen (all processes).
        source_tokens: Text tokens compressed into slots (all processes).
        target_tokens: Target tokens the loss was taken on (all processes).
        elapsed_s: Time spent in training steps, summed over resumptions.
        wall_s: Wall time of the run including evaluation and checkpoints, summed over resumptions.
        data: The data stream position of each process (rank order).
        last_eval: The most recent evaluation metrics.
    """

    step: int = 0
    examples: int = 0
    source_tokens: int = 0
    target_tokens: int = 0
    elapsed_s: float = 0.0
    wall_s: float = 0.0
    data: list[dict[str, Any]] = field(default_factory=list)
    last_eval: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, with the checkpoint format version."""
        return {"format_version": CHECKPOINT_FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainerState":
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        version = data.pop("format_version", CHECKPOINT_FORMAT_VERSION)
        if version > CHECKPOINT_FORMAT_VERSION:
            raise ValueError(f"checkpoint format {version} is newer than this memrag supports")
        return cls(**data)


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint after ``step`` steps."""
    return f"checkpoint-{step:07d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / TRAINER_STATE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``output_dir``, if any."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Deletes all but the ``keep`` newest checkpoints."""
    for path in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
        logger.info("deleted old checkpoint %s", path)


# --------------------------------------------------------------------------- optimizer
def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Splits an optimizer's state dict into tensors (for safetensors) and JSON."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Rebuilds an optimizer state dict from :func:`optimizer_to_files` output."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _scheduler_json(scheduler: Any) -> dict[str, Any]:
    return {k: v for k, v in scheduler.state_dict().items() if isinstance(v, (int, float, str, bool, list, dict, type(None)))}


# --------------------------------------------------------------------------- rng
def rng_tensors(prefix: str = "") -> dict[str, torch.Tensor]:
    """The torch RNG states of this process (CPU and every CUDA device)."""
    states = {f"{prefix}torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"{prefix}cuda_{index}"] = state
    return states


def restore_rng(tensors: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Restores the states saved by :func:`rng_tensors`."""
    torch.set_rng_state(tensors[f"{prefix}torch_cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith(f"{prefix}cuda_")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------- save / load
def save_checkpoint(
    directory: str | Path,
    *,
    compressor: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    rng: dict[str, torch.Tensor],
    training_args: dict[str, Any],
) -> Path:
    """Writes a checkpoint directory atomically (it appears complete or not at all).

    Args:
        directory: The checkpoint directory (usually ``output_dir / checkpoint_name(step)``).
        compressor: The compressor being trained (saved in float32).
        optimizer: Its optimizer.
        scheduler: Its learning-rate scheduler.
        state: Trainer progress, including every process's data position.
        rng: RNG state tensors of every process (see :func:`rng_tensors`).
        training_args: The run's arguments, as a dict.
    """
    target = Path(directory)
    tensors, meta = optimizer_to_files(optimizer)
    with atomic_directory(target) as tmp:
        compressor.save_pretrained(tmp / COMPRESSOR_DIR)
        save_file(tensors, str(tmp / OPTIMIZER_TENSORS))
        _write_json(tmp / OPTIMIZER_JSON, meta)
        _write_json(tmp / SCHEDULER_JSON, _scheduler_json(scheduler))
        save_file({k: v.contiguous() for k, v in rng.items()}, str(tmp / RNG_TENSORS))
        _write_json(tmp / TRAINING_ARGS, training_args)
        _write_json(tmp / TRAINER_STATE, state.to_dict())
    logger.info("saved checkpoint %s", target)
    return target


def load_compressor_weights(compressor: Any, directory: str | Path) -> None:
    """Loads the learned weights of a saved compressor into ``compressor`` in place.

    Raises:
        ValueError: the saved compressor's settings differ from ``compressor``'s, or the
            loaded weights are malformed or do not reproduce the saved fingerprint
            (:class:`~memrag.compressor.model.CompressorMismatchError` is a ``ValueError``).
    """
    directory = Path(directory)
    saved = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
    mine = compressor.config.to_dict()
    differ = sorted(k for k in mine if k not in ("memrag_version",) and saved.get(k) != mine[k])
    if differ:
        raise ValueError(f"{directory}: compressor settings differ from the run's ({', '.join(differ)})")
    compressor.load_weights(directory, expected_fingerprint=saved.get("fingerprint") or None)


def load_checkpoint(
    directory: str | Path,
    *,
    compressor: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> tuple[TrainerState, dict[str, torch.Tensor], dict[str, Any]]:
    """Restores weights, optimizer and scheduler from a checkpoint.

    Returns:
        ``(trainer state, RNG state tensors, saved training arguments)``; the caller restores
        its own process's RNG and data position from them.
    """
    directory = Path(directory)
    missing = [name for name in CHECKPOINT_FILES if not (directory / name).exists()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a complete checkpoint: missing {', '.join(missing)}")
    load_compressor_weights(compressor, directory / COMPRESSOR_DIR)
    meta = json.loads((directory / OPTIMIZER_JSON).read_text(encoding="utf-8"))
    optimizer.load_state_dict(optimizer_from_files(load_file(str(directory / OPTIMIZER_TENSORS)), meta))
    scheduler.load_state_dict(json.loads((directory / SCHEDULER_JSON).read_text(encoding="utf-8")))
    state = TrainerState.from_dict(json.loads((directory / TRAINER_STATE).read_text(encoding="utf-8")))
    rng = load_file(str(directory / RNG_TENSORS))
    args = json.loads((directory / TRAINING_ARGS).read_text(encoding="utf-8"))
    logger.info("resumed from %s (step %d)", directory, state.step)
    return state, rng, args


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
