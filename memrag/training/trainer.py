"""The training loop: AdamW over the LoRA weights and memory/task embeddings only.

:class:`Trainer` takes a compressor, an objective (:mod:`memrag.training.objectives`), a
resumable data stream (:mod:`memrag.data.examples`) and :class:`TrainingArguments`. It does
gradient accumulation (the loss is the mean over every target token of an optimizer step),
warmup + cosine/linear learning-rate decay, gradient clipping, bf16 autocast on CUDA,
periodic evaluation, checkpoints that resume exactly (weights, optimizer, scheduler, RNG and
data position), a JSONL log with a PNG plot, and a progress bar with tokens/s and ETA.
Several processes under ``torchrun`` sum their gradients after each step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from memrag.data.examples import ResumableStream, take
from memrag.training import checkpoint as ckpt
from memrag.training.arguments import TrainingArguments
from memrag.training.distributed import (
    DistInfo,
    all_reduce_gradients,
    all_reduce_sum,
    barrier,
    gather,
)
from memrag.training.history import LOG_NAME, PLOT_NAME, TrainingLog, plot_history
from memrag.training.objectives import Objective
from memrag.utils.machine import describe_device
from memrag.utils.progress import progress
from memrag.utils.torch_utils import resolve_dtype
from memrag.version import __version__

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
SUMMARY_NAME = "summary.json"
#: Redraw the plot at a checkpoint only if the last drawing is older than this.
PLOT_INTERVAL_S = 60.0


class Evaluator(Protocol):
    """Something measured on the compressor during training (see :mod:`.evaluators`)."""

    def __call__(self, compressor: Any) -> dict[str, float]: ...


class OutputExistsError(FileExistsError):
    """The output directory holds checkpoints of another run and ``resume`` was not asked."""


def lr_factor(step: int, args: TrainingArguments) -> float:
    """Learning-rate multiplier for the optimizer step after ``step`` steps."""
    if step < args.warmup_steps:
        return (step + 1) / (args.warmup_steps + 1)
    if args.schedule == "constant":
        return 1.0
    progress_ = min(1.0, (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress_)) if args.schedule == "cosine" else 1.0 - progress_
    return args.min_lr_ratio + (1.0 - args.min_lr_ratio) * decay


def trainable_parameters(compressor: Any) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """The LoRA weights and the memory/task embeddings; everything else is frozen.

    Returns:
        ``(lora parameters, embedding parameters)``.

    Raises:
        RuntimeError: a base-model weight is trainable (it must never be).
    """
    lora = [p for name, p in compressor.peft_model.named_parameters() if "lora_" in name]
    stray = [n for n, p in compressor.peft_model.named_parameters() if p.requires_grad and "lora_" not in n]
    if stray:
        raise RuntimeError(f"base-model weights are trainable, refusing to train: {stray[:3]}")
    if not lora:
        raise RuntimeError("the compressor has no LoRA weights")
    for parameter in lora:
        parameter.requires_grad_(True)
    embeddings = [compressor.memory_embeddings, compressor.task_embeddings]
    for parameter in embeddings:
        parameter.requires_grad_(True)
    return lora, embeddings


class Trainer:
    """Trains a compressor with one objective.

    Args:
        compressor: The compressor, already on its training device (float32 weights).
        objective: Loss over a micro-batch of examples.
        train_data: Endless, resumable stream of training examples (this process's shard).
        args: Optimisation, evaluation and checkpoint settings.
        evaluators: Run every ``eval_every`` steps and at the end, on the main process; their
            metrics go to the log and the plot.
        dist: This process's place among several (default: a single process).
        run_info: Extra JSON facts written to ``summary.json`` (data, model options, ...).
    """

    def __init__(
        self,
        compressor: Any,
        objective: Objective,
        train_data: ResumableStream,
        args: TrainingArguments,
        *,
        evaluators: Sequence[Evaluator] = (),
        dist: DistInfo | None = None,
        run_info: dict[str, Any] | None = None,
    ) -> None:
        self.compressor = compressor
        self.objective = objective
        self.train_data = train_data
        self.args = args
        self.evaluators = list(evaluators)
        self.dist = dist or DistInfo()
        self.run_info = run_info or {}
        self.device = compressor.device
        self.output = args.output_path
        self.log = TrainingLog(self.output / LOG_NAME)
        self.state = ckpt.TrainerState()
        self._last_plot = time.monotonic()
        lora, embeddings = trainable_parameters(compressor)
        self.parameters = lora + embeddings
        embedding_lr = args.embedding_learning_rate if args.embedding_learning_rate is not None else args.learning_rate
        self.optimizer = torch.optim.AdamW(
            [
                {"params": lora, "lr": args.learning_rate, "weight_decay": args.weight_decay},
                {"params": embeddings, "lr": embedding_lr, "weight_decay": 0.0},
            ],
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, args))

    # ------------------------------------------------------------------ resume
    def _resume(self, resume: bool | str | Path) -> None:
        existing = ckpt.latest_checkpoint(self.output)
        if resume is False or resume is None:
            if existing is not None:
                raise OutputExistsError(
                    f"{self.output} already holds checkpoints (latest {existing.name}); resume it "
                    "(--resume) or choose another output directory"
                )
            return
        path = existing if resume is True else Path(resume)
        if path is None:
            logger.warning("no checkpoint in %s to resume from; starting a new run", self.output)
            return
        state, rng, saved_args = ckpt.load_checkpoint(
            path, compressor=self.compressor, optimizer=self.optimizer, scheduler=self.scheduler
        )
        changed = sorted(
            k for k, v in self.args.to_dict().items()
            if k not in TrainingArguments.RESUMABLE_CHANGES and saved_args.get(k) != v
        )
        if changed:
            logger.warning("resuming with changed arguments: %s", ", ".join(f"{k}={saved_args.get(k)!r}->{getattr(self.args, k)!r}" for k in changed))
        if len(state.data) != self.dist.world_size:
            raise ValueError(f"{path} was written by {len(state.data)} processes; resume it with as many")
        self.train_data.load_state_dict(state.data[self.dist.rank])
        ckpt.restore_rng(rng, prefix=f"rank{self.dist.rank}.")
        self.state = state
        if self.dist.is_main:
            self.log.truncate_after(state.step)

    # ------------------------------------------------------------------ one step
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda" and self.args.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``grad_accum_steps`` micro-batches; returns its statistics."""
        self.compressor.train()
        loss_sum = 0.0
        counts = {"examples": 0, "source_tokens": 0, "target_tokens": 0}
        parts: dict[str, list[float]] = {}
        for _ in range(self.args.grad_accum_steps):
            examples = take(self.train_data, self.args.batch_size)
            with self._autocast():
                output = self.objective(self.compressor, examples)
            output.loss_sum.backward()
            loss_sum += float(output.loss_sum.detach())
            counts["examples"] += len(examples)
            counts["source_tokens"] += output.source_tokens
            counts["target_tokens"] += output.num_tokens
            for kind, (value, tokens) in output.parts.items():
                entry = parts.setdefault(kind, [0.0, 0])
                entry[0] += value
                entry[1] += tokens
        kinds = list(getattr(self.objective, "kinds", ())) or sorted(parts)
        reduced = all_reduce_sum(
            self.dist,
            [loss_sum, *counts.values(), *(v for k in kinds for v in parts.get(k, (0.0, 0)))],
            self.device,
        )
        loss_sum, examples, source, target = reduced[:4]
        all_reduce_gradients(self.dist, self.parameters)
        for parameter in self.parameters:
            if parameter.grad is not None:
                parameter.grad.div_(max(target, 1.0))
        limit = self.args.max_grad_norm if self.args.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, limit))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.compressor.invalidate_fingerprint()
        stats = {
            "loss": loss_sum / max(target, 1.0),
            "lr": lr,
            "grad_norm": grad_norm,
            "examples": int(examples),
            "source_tokens": int(source),
            "target_tokens": int(target),
        }
        for i, kind in enumerate(kinds):
            value, tokens = reduced[4 + 2 * i : 6 + 2 * i]
            if tokens:
                stats[f"loss_{kind}"] = value / tokens
        return stats

    # ------------------------------------------------------------------ evaluation / saving
    def evaluate(self) -> dict[str, float]:
        """Runs the evaluators (main process only) and logs their metrics."""
        metrics: dict[str, float] = {}
        if self.dist.is_main and self.evaluators:
            self.compressor.eval()
            with torch.no_grad(), self._autocast():
                for evaluator in self.evaluators:
                    metrics.update(evaluator(self.compressor))
            self.state.last_eval = metrics
            self.log.append({"event": "eval", "step": self.state.step, "time": time.time(), **metrics})
            logger.info("step %d eval: %s", self.state.step, _format(metrics))
        barrier(self.dist)
        return metrics

    def save_checkpoint(self) -> Path | None:
        """Writes a checkpoint of the current step (main process) and prunes old ones."""
        data = gather(self.dist, self.train_data.state_dict())
        rng = gather(self.dist, ckpt.rng_tensors())
        path = None
        if self.dist.is_main:
            self.state.data = data
            flat = {f"rank{r}.{k}": v.cpu() for r, states in enumerate(rng) for k, v in states.items()}
            path = ckpt.save_checkpoint(
                self.output / ckpt.checkpoint_name(self.state.step),
                compressor=self.compressor,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                state=self.state,
                rng=flat,
                training_args=self.args.to_dict(),
            )
            ckpt.prune_checkpoints(self.output, self.args.keep_checkpoints)
            if self.state.step < self.args.max_steps and time.monotonic() - self._last_plot >= PLOT_INTERVAL_S:
                self.plot()  # the end of the run always draws it
        barrier(self.dist)
        return path

    def plot(self) -> Path | None:
        """Redraws ``curves.png`` from the log."""
        self._last_plot = time.monotonic()
        try:
            return plot_history(self.log.read(), self.output / PLOT_NAME, title=str(self.output))
        except Exception as err:  # a plot must never stop training
            logger.warning("could not draw the training plot: %s", err)
            return None

    def _save_final(self) -> Path:
        final = self.output / FINAL_DIR
        dtype = resolve_dtype(self.args.save_dtype)
        self.compressor.save_pretrained(final, dtype=None if dtype == torch.float32 else dtype)
        summary = {
            "step": self.state.step,
            "complete": self.state.step >= self.args.max_steps,
            "examples": self.state.examples,
            "source_tokens": self.state.source_tokens,
            "target_tokens": self.state.target_tokens,
            "train_time_s": round(self.state.elapsed_s, 1),
            "wall_time_s": round(self.state.wall_s, 1),
            "processes": self.dist.world_size,
            "device": str(self.device),
            "hardware": describe_device(self.device),
            "threads": torch.get_num_threads(),
            "fingerprint": self.compressor.fingerprint,
            "last_eval": self.state.last_eval,
            "training_args": self.args.to_dict(),
            **self.run_info,
        }
        from memrag.utils.atomic import atomic_write_text

        atomic_write_text(self.output / SUMMARY_NAME, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return final

    def _start_facts(self) -> dict[str, Any]:
        changeable = sorted(TrainingArguments.RESUMABLE_CHANGES - {"progress"})
        settings = self.args.to_dict()
        return {
            **{name: settings[name] for name in changeable},
            "processes": self.dist.world_size,
            "memrag_version": __version__,
        }

    # ------------------------------------------------------------------ loop
    def train(self, resume: bool | str | Path = False) -> ckpt.TrainerState:
        """Trains until ``max_steps`` (or until ``max_minutes`` have passed); returns the state.

        Args:
            resume: ``True``: continue from the newest checkpoint in the output directory (a
                new run if there is none); a path: continue from that checkpoint; ``False``:
                start afresh (refused when the output directory already holds checkpoints).

        The final compressor is written to ``<output_dir>/final`` with ``summary.json`` beside it.
        """
        if self.args.threads:
            torch.set_num_threads(self.args.threads)
        self.output.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.args.seed + self.dist.rank)
        self._resume(resume)  # restores the RNG saved in the checkpoint, if any
        start = self.state.step
        if self.dist.is_main:
            self.args.save(self.output / ckpt.TRAINING_ARGS)
            # The run's history: which settings each (re)start trained with, from which step.
            self.log.append({"event": "start", "step": start, "time": time.time(), **self._start_facts()})
        window: list[dict[str, Any]] = []
        budget_s = self.args.max_minutes * 60 if self.args.max_minutes else None
        started = time.monotonic()
        with progress(
            total=self.args.max_steps,
            initial=start,
            desc=getattr(self.objective, "name", "train"),
            unit="step",
            disable=not (self.args.progress and self.dist.is_main),
        ) as bar:
            mark = time.perf_counter()
            for _ in range(start, self.args.max_steps):
                step_start = time.perf_counter()
                stats = self.train_step()
                stats["seconds"] = time.perf_counter() - step_start
                self.state.elapsed_s += stats["seconds"]
                self.state.step += 1
                self.state.examples += stats["examples"]
                self.state.source_tokens += stats["source_tokens"]
                self.state.target_tokens += stats["target_tokens"]
                window.append(stats)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", tok_s=f"{_tokens_per_s(window):.0f}")
                bar.update(1)
                out_of_time = budget_s is not None and self._all_agree(
                    time.monotonic() - started >= budget_s
                )
                last = out_of_time or self.state.step == self.args.max_steps
                if self.state.step % self.args.log_every == 0 or last:
                    self._log_window(window)
                    window = []
                due_eval = self.args.eval_every and self.state.step % self.args.eval_every == 0
                # (no evaluation when the time is up: it would overrun the budget)
                if due_eval or self.state.step == self.args.max_steps:
                    metrics = self.evaluate()
                    if metrics:
                        bar.write(f"step {self.state.step}: {_format(metrics)}")
                now = time.perf_counter()
                self.state.wall_s += now - mark
                mark = now
                if self.state.step % self.args.save_every == 0 or last:
                    self.save_checkpoint()
                if out_of_time:
                    self._stop_early()
                    break
        if self.dist.is_main:
            final = self._save_final()
            self.plot()
            logger.info("saved the trained compressor to %s", final)
        barrier(self.dist)
        return self.state

    def _all_agree(self, flag: bool) -> bool:
        """Whether any process raised ``flag`` (so that all processes stop at the same step)."""
        return all_reduce_sum(self.dist, [float(flag)], self.device)[0] > 0

    def _stop_early(self) -> None:
        if self.dist.is_main:
            self.log.append(
                {
                    "event": "stop",
                    "reason": "max_minutes",
                    "step": self.state.step,
                    "max_steps": self.args.max_steps,
                    "time": time.time(),
                }
            )
        logger.info(
            "stopped at step %d of %d after --max-minutes %g; --resume continues",
            self.state.step,
            self.args.max_steps,
            self.args.max_minutes,
        )

    def _log_window(self, window: list[dict[str, Any]]) -> None:
        """Logs the statistics of the steps since the last log line (training time only)."""
        if not self.dist.is_main or not window:
            return
        target = sum(s["target_tokens"] for s in window)
        elapsed = sum(s["seconds"] for s in window)
        record: dict[str, Any] = {
            "event": "train",
            "step": self.state.step,
            "time": time.time(),
            "loss": sum(s["loss"] * s["target_tokens"] for s in window) / max(target, 1),
            "lr": window[-1]["lr"],
            "grad_norm": sum(s["grad_norm"] for s in window) / len(window),
            "s_per_step": elapsed / len(window),
            "examples_per_s": sum(s["examples"] for s in window) / max(elapsed, 1e-9),
            "tokens_per_s": _tokens_per_s(window),
            "examples": self.state.examples,
            "source_tokens": self.state.source_tokens,
            "target_tokens": self.state.target_tokens,
            "elapsed_s": round(self.state.elapsed_s, 2),
        }
        for key in sorted({k for s in window for k in s if k.startswith("loss_")}):
            values = [s[key] for s in window if key in s]
            record[key] = sum(values) / len(values)
        self.log.append(record)
        logger.info("step %d: %s", self.state.step, _format({k: v for k, v in record.items() if k.startswith("loss") or k == "tokens_per_s"}))


def _tokens_per_s(window: Sequence[dict[str, Any]]) -> float:
    """Source plus target tokens per second of training time."""
    tokens = sum(s["source_tokens"] + s["target_tokens"] for s in window)
    return tokens / max(sum(s["seconds"] for s in window), 1e-9)


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items()))
