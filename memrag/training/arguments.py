"""Arguments of a training run, kept apart from the trainer and the objectives.

Every field carries its help text in ``metadata["help"]``; the CLI builds its options from
these dataclasses (see :func:`memrag.cli.train_options.dataclass_options`), so the help of
``memrag train ... --help`` and the Python API never drift apart.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Schedule = Literal["cosine", "linear", "constant"]


def _arg(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **kwargs})


class _JsonMixin:
    """JSON round trip shared by the argument dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """The arguments as a JSON-serialisable dict."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Builds the arguments from :meth:`to_dict` output; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: Path) -> None:
        """Writes the arguments as JSON (atomically)."""
        from memrag.utils.atomic import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


@dataclass
class TrainingArguments(_JsonMixin):
    """How to optimise: steps, batch, learning rate, evaluation, checkpoints, device.

    One optimizer step sees ``batch_size * grad_accum_steps`` examples per process (times the
    number of processes under torchrun). The loss is the mean over all target tokens of the
    step, however they are split into micro-batches and processes.
    """

    output_dir: str = _arg("runs/train", "Directory for checkpoints, the log, the plot and the final compressor.")
    max_steps: int = _arg(1000, "Number of optimizer steps.", min=1)
    max_minutes: float | None = _arg(
        None,
        "Stop this invocation once this many minutes of wall time have passed, at the end of a "
        "step: a checkpoint and the compressor so far (final/) are written, without the final "
        "evaluation, and --resume continues towards --max-steps (the schedule follows it).",
        min=0.0,
    )
    batch_size: int = _arg(8, "Examples per micro-batch (per process).", min=1)
    grad_accum_steps: int = _arg(1, "Micro-batches accumulated into one optimizer step.", min=1)
    learning_rate: float = _arg(1e-4, "Peak learning rate of the LoRA weights.", min=0.0)
    embedding_learning_rate: float | None = _arg(
        None, "Peak learning rate of the memory/task embeddings (default: --learning-rate)."
    )
    weight_decay: float = _arg(0.0, "AdamW weight decay of the LoRA weights (embeddings get none).", min=0.0)
    adam_beta1: float = _arg(0.9, "AdamW beta1.")
    adam_beta2: float = _arg(0.999, "AdamW beta2.")
    adam_epsilon: float = _arg(1e-8, "AdamW epsilon.")
    schedule: str = _arg("cosine", "Learning-rate schedule after warmup: cosine, linear or constant.")
    warmup_steps: int = _arg(100, "Steps of linear warmup from 0 to the peak learning rate.", min=0)
    min_lr_ratio: float = _arg(0.1, "Final learning rate as a fraction of the peak (cosine and linear).")
    max_grad_norm: float = _arg(1.0, "Clip the global gradient norm to this (0: no clipping).", min=0.0)
    log_every: int = _arg(10, "Write a training log line every N steps.", min=1)
    eval_every: int = _arg(200, "Evaluate every N steps, and at the end (0: only at the end).", min=0)
    save_every: int = _arg(200, "Write a resumable checkpoint every N steps, and at the end.", min=1)
    keep_checkpoints: int = _arg(3, "How many recent checkpoints to keep (older ones are deleted).", min=1)
    seed: int = _arg(0, "Seed of the data order, distractor sampling and torch.")
    device: str = _arg("auto", "Device: cpu, cuda, cuda:N or auto (under torchrun: cuda:LOCAL_RANK).")
    bf16: bool = _arg(True, "bfloat16 autocast on CUDA (weights and optimizer stay float32); ignored on CPU.")
    save_dtype: str = _arg("float32", "Dtype of the final compressor's weights: float32 or bfloat16.")
    threads: int = _arg(0, "CPU threads for torch (0: torch's default).", min=0)
    distill_weight: float = _arg(
        0.0,
        "Weight of the distillation term: KL from the frozen decoder reading the text to the "
        "decoder reading the slots, on answer and continuation tokens (0: off).",
        min=0.0,
    )
    distill_top_k: int = _arg(32, "Teacher tokens kept per position for distillation.", min=1)
    progress: bool = _arg(True, "Show a progress bar with tokens/s and ETA.")

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("max_steps", "batch_size", "grad_accum_steps", "log_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")

    @property
    def output_path(self) -> Path:
        """``output_dir`` as a path."""
        return Path(self.output_dir)

    #: Fields that may differ between a run and its resumption without changing the math
    #: already done (a longer run, more or fewer checkpoints, another progress setting).
    RESUMABLE_CHANGES = frozenset(
        {
            "max_steps",
            "max_minutes",
            "log_every",
            "eval_every",
            "save_every",
            "keep_checkpoints",
            "progress",
            "threads",
            "device",
        }
    )


@dataclass
class ModelArguments(_JsonMixin):
    """Which compressor to train: a fresh one over a base model, or a saved one to continue."""

    base_model: str = _arg("gemma-3-270m", "Base model: embedded name, Hugging Face id or local directory.")
    init_from: str | None = _arg(
        None,
        "Start from this saved compressor (a directory written by `memrag train`, a checkpoint "
        "or a run directory); the compressor options below are then taken from it.",
    )
    dtype: str = _arg("float32", "Weight dtype of the base model (float32 recommended for training).")
    segment_length: int = _arg(128, "Tokens per compressed segment (fresh compressor).", min=1)
    compression_rate: int | None = _arg(
        None,
        "Text tokens per memory slot (default 4 for a fresh compressor). With --init-from it "
        "changes the rate of a compressor whose slots are a subset of the text's own K/V "
        "positions (its weights do not depend on the rate); other slot kinds refuse it.",
        min=1,
    )
    lora_rank: int | None = _arg(
        None,
        "LoRA rank of the encoder (default 16 for a fresh compressor). With --init-from a larger "
        "rank grows the loaded adapter: its trained directions are kept and the new ones start "
        "at zero, so training starts from exactly the loaded compressor's answers.",
        min=1,
    )
    lora_alpha: int | None = _arg(
        None,
        "LoRA alpha (default 32 for a fresh compressor; when --lora-rank grows a loaded adapter, "
        "the alpha that keeps its scale alpha/rank).",
        min=1,
    )
    lora_dropout: float = _arg(0.0, "LoRA dropout (fresh compressor).", min=0.0)
    slot_kind: str = _arg(
        "embedding",
        "Slot kind (fresh compressor): embedding (last hidden states) or kv (per-layer keys and "
        "values, spliced as a cache prefix).",
    )
    kv_positions: str = _arg(
        "memory",
        "Where kv slots are read (fresh compressor): memory (appended memory tokens, "
        "500xCompressor) or subset (every rate-th token of the text itself, KV-Distill).",
    )
    kv_selection: str | None = _arg(
        None,
        "Which positions subset slots keep: stride (every rate-th token), prefill or kvzip (per "
        "layer, the best-scored by the frozen decoder, as kv-pruned memory chooses them), "
        "prefill-salient or kvzip-salient (the same, with the tokens holding a digit or starting "
        "a capitalised word kept in every layer, at most half of the slots). Also "
        "changes a compressor loaded with --init-from (default: stride, or the loaded one's).",
    )


@dataclass
class PretrainDataArguments(_JsonMixin):
    """Where pretraining text comes from and how it is cut into examples."""

    data: list[str] = _arg(
        None,
        "JSONL(.gz) files with a text field (repeat the option for several; each is a source "
        "sampled with equal probability unless --source-weights says otherwise).",
    )
    text_field: str = _arg("text", "Name of the text field.")
    source_weights: str | None = _arg(None, "Comma-separated sampling weights, one per --data file.")
    holdout_fraction: float = _arg(
        0.01, "Last fraction of each file's lines held out for evaluation (never trained on).", min=0.0
    )
    min_segment_length: int = _arg(
        16, "Shortest segment; lengths are drawn uniformly up to the compressor's segment length.", min=1
    )
    continuation_length: int = _arg(64, "Target tokens of a continuation (language-modelling) example.", min=1)
    ae_probability: float = _arg(0.5, "Probability that an example is autoencoding (else continuation).")
    open_records: int = _arg(16, "Documents read in parallel per source, for a well-mixed stream.", min=1)
    on_bad_row: str = _arg("skip", "What to do with bad data rows: skip (log file:line) or raise.")
    eval_examples: int = _arg(64, "Held-out examples for the evaluation loss.", min=0)
    eval_ae_segments: int = _arg(16, "Held-out segments reconstructed for BLEU at each evaluation (0: none).", min=0)

    def __post_init__(self) -> None:
        if self.data is None:
            self.data = []
        if not 0.0 <= self.ae_probability <= 1.0:
            raise ValueError(f"ae_probability must be in [0, 1], got {self.ae_probability}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")

    def weights(self) -> list[float]:
        """Sampling weight of each source."""
        if not self.source_weights:
            return [1.0] * len(self.data)
        weights = [float(w) for w in self.source_weights.split(",")]
        if len(weights) != len(self.data) or any(w < 0 for w in weights) or not sum(weights):
            raise ValueError(
                f"--source-weights needs {len(self.data)} non-negative numbers, got {self.source_weights!r}"
            )
        return weights


@dataclass
class FinetuneDataArguments(_JsonMixin):
    """Where QA data comes from and how prompts are mixed with distractor passages."""

    data: str = _arg("../shared/data/squad_v1.1/train.jsonl.gz", "SQuAD-style JSONL(.gz) training file.")
    eval_data: str | None = _arg(
        "../shared/data/squad_v1.1/dev.jsonl.gz", "SQuAD-style JSONL(.gz) file for evaluation during training."
    )
    max_distractors: int = _arg(4, "Each example adds 0..N distractor passages, in random order with the gold one.", min=0)
    shuffle_buffer: int = _arg(1024, "Questions held in the shuffle buffer (distractors are drawn from it too).", min=1)
    start_line: int = _arg(
        1,
        "First line of --data to read (1-based; each epoch restarts there): a later training stage "
        "can start on articles the earlier stages did not see.",
        min=1,
    )
    max_answer_tokens: int = _arg(48, "Truncate answer targets to this many tokens.", min=1)
    continuation_data: list[str] = _arg(
        None,
        "Plain-text JSONL(.gz) files (e.g. Wikipedia, Gutenberg) for label-free continuation "
        "examples mixed into fine-tuning: the decoder reading a segment's slots continues it "
        "(distilled from the decoder reading its text when --distill-weight > 0). Repeat the "
        "option for several files.",
    )
    continuation_probability: float = _arg(
        0.0, "Share of training examples that are continuation examples (needs --continuation-data)."
    )
    continuation_length: int = _arg(64, "Target tokens of a continuation example.", min=1)
    continuation_weight: float = _arg(1.0, "Weight of the continuation loss against the QA loss.", min=0.0)
    continuation_holdout_fraction: float = _arg(
        0.01,
        "Each continuation file's last lines kept out of training, for `memrag eval lm "
        "--holdout-fraction` with the same value.",
    )
    on_bad_row: str = _arg("skip", "What to do with bad data rows: skip (log file:line) or raise.")
    eval_examples: int = _arg(64, "Evaluation examples for the held-out loss.", min=0)
    eval_questions: int = _arg(32, "Evaluation questions answered from slots for SQuAD EM/F1 (0: none).", min=0)

    def __post_init__(self) -> None:
        if self.continuation_data is None:
            self.continuation_data = []
        if not 0.0 <= self.continuation_probability <= 1.0:
            raise ValueError(f"continuation_probability must be in [0, 1], got {self.continuation_probability}")
        if self.continuation_probability > 0 and not self.continuation_data:
            raise ValueError("--continuation-probability > 0 needs --continuation-data files")
        if not 0.0 <= self.continuation_holdout_fraction < 1.0:
            raise ValueError(
                f"continuation_holdout_fraction must be in [0, 1), got {self.continuation_holdout_fraction}"
            )
