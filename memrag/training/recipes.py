"""The two training recipes, from argument dataclasses to a trained compressor directory.

``pretrain`` and ``finetune`` are what ``memrag train pretrain`` / ``memrag train finetune``
run; they wire a compressor, a data stream, an objective, evaluators and the :class:`Trainer`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memrag.data.examples import PretrainStream, QAStream, take
from memrag.data.mixing import InterleavedStream
from memrag.training.arguments import (
    FinetuneDataArguments,
    ModelArguments,
    PretrainDataArguments,
    TrainingArguments,
)
from memrag.training.distributed import DistInfo, setup_distributed
from memrag.training.evaluators import LossEvaluator, ReconstructionEvaluator, SquadEvaluator
from memrag.training.objectives import (
    Distillation,
    PretrainObjective,
    QAObjective,
    QAWithContinuationObjective,
)
from memrag.training.trainer import FINAL_DIR, Trainer

logger = logging.getLogger(__name__)


def resolve_init_from(path: str | Path) -> Path | str:
    """A compressor directory from a compressor, checkpoint or run directory (or a shipped name)."""
    from memrag.compressor.config import CONFIG_NAME
    from memrag.training.checkpoint import COMPRESSOR_DIR, latest_checkpoint

    directory = Path(path)
    if (directory / CONFIG_NAME).is_file():
        return directory
    if (directory / COMPRESSOR_DIR / CONFIG_NAME).is_file():
        return directory / COMPRESSOR_DIR
    if (directory / FINAL_DIR / CONFIG_NAME).is_file():
        return directory / FINAL_DIR
    latest = latest_checkpoint(directory)
    if latest is not None:
        return latest / COMPRESSOR_DIR
    return str(path)  # a shipped compressor name, or an error from from_pretrained


def build_compressor(args: ModelArguments, device: Any, *, seed: int = 0) -> Any:
    """The compressor to train: loaded from ``init_from``, or fresh over ``base_model``."""
    from memrag.compressor import Compressor, CompressorConfig
    from memrag.compressor.resolve import resolve_compressor
    from memrag.models.loading import load_base_model

    if args.init_from:
        source = resolve_init_from(args.init_from)
        logger.info("starting from compressor %s", source)
        compressor = resolve_compressor(source, device=device, dtype=args.dtype)
        if args.kv_selection and args.kv_selection != compressor.config.kv_selection:
            logger.info("subset positions chosen by %s (was %s)", args.kv_selection, compressor.config.kv_selection)
            compressor.config = dataclasses.replace(compressor.config, kv_selection=args.kv_selection)
            compressor.invalidate_fingerprint()
        rate = args.compression_rate
        if rate is not None and rate != compressor.config.compression_rate:
            logger.info("compression rate %d (was %d)", rate, compressor.config.compression_rate)
            try:
                compressor.set_compression_rate(rate)
            except ValueError as err:
                raise ValueError(f"--compression-rate {rate} for {source}: {err}") from None
        if args.lora_rank is not None and args.lora_rank != compressor.config.lora_rank:
            compressor = _grown(compressor, args, device, source)
        elif args.lora_alpha is not None and args.lora_alpha != compressor.config.lora_alpha:
            raise ValueError(
                f"--lora-alpha {args.lora_alpha} for {source}: the loaded adapter's alpha is "
                f"{compressor.config.lora_alpha}; alpha changes only with a larger --lora-rank"
            )
        return compressor
    base = load_base_model(args.base_model, device=device, dtype=args.dtype)
    config = CompressorConfig(
        base_model=base.name,
        base_model_revision=base.revision,
        segment_length=args.segment_length,
        compression_rate=args.compression_rate or 4,
        lora_rank=args.lora_rank or 16,
        lora_alpha=args.lora_alpha or 32,
        lora_dropout=args.lora_dropout,
        slot_kind=args.slot_kind,
        kv_positions=args.kv_positions,
        kv_selection=args.kv_selection or "stride",
    )
    return Compressor(base, config, seed=seed)


def _grown(compressor: Any, args: ModelArguments, device: Any, source: Any) -> Any:
    """``compressor`` with its adapter grown to ``args.lora_rank``, over a fresh base model."""
    from memrag.compressor.lora_growth import grow_lora_rank
    from memrag.models.loading import load_base_model

    config = compressor.config
    base = load_base_model(config.base_model, device=device, dtype=args.dtype, revision=config.base_model_revision)
    try:
        return grow_lora_rank(compressor, base, args.lora_rank, alpha=args.lora_alpha)
    except ValueError as err:
        raise ValueError(f"--lora-rank {args.lora_rank} for {source}: {err}") from None


def _tokenizer_fn(compressor: Any) -> Callable[[str], list[int]]:
    tokenizer = compressor.tokenizer
    return lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _distillation(train: TrainingArguments) -> Distillation | None:
    if train.distill_weight <= 0:
        return None
    return Distillation(weight=train.distill_weight, top_k=train.distill_top_k)


def _run_info(kind: str, model: ModelArguments, data: Any, compressor: Any) -> dict[str, Any]:
    return {
        "objective": kind,
        "model_args": model.to_dict(),
        "data_args": data.to_dict(),
        "compressor_config": {k: v for k, v in compressor.config.to_dict().items() if k != "base_model_signature"},
    }


def _setup(model: ModelArguments, train: TrainingArguments, compressor: Any | None) -> tuple[Any, DistInfo]:
    dist, device = setup_distributed(train.device)
    if compressor is None:
        compressor = build_compressor(model, device, seed=train.seed)
    return compressor, dist


def pretraining_trainer(
    model: ModelArguments,
    data: PretrainDataArguments,
    train: TrainingArguments,
    *,
    compressor: Any | None = None,
) -> Trainer:
    """A trainer for ICAE pretraining (autoencoding + continuation) on plain text.

    Args:
        model: Which compressor (ignored when ``compressor`` is given).
        data: Text files and how examples are cut.
        train: Optimisation settings.
        compressor: An already-built compressor (tests pass tiny ones).
    """
    compressor, dist = _setup(model, train, compressor)
    tokenize = _tokenizer_fn(compressor)
    common = dict(
        max_length=compressor.config.segment_length,
        min_length=min(data.min_segment_length, compressor.config.segment_length),
        continuation=data.continuation_length,
        weights=data.weights(),
        holdout_fraction=data.holdout_fraction,
        open_records=data.open_records,
        text_field=data.text_field,
        on_error=data.on_bad_row,
    )
    stream = PretrainStream(
        data.data, tokenize, ae_probability=data.ae_probability, seed=train.seed,
        shard=dist.rank, num_shards=dist.world_size, **common,
    )
    objective = PretrainObjective(distillation=_distillation(train))
    evaluators: list[Any] = []
    if data.holdout_fraction > 0 and dist.is_main:
        if data.eval_examples:
            heldout = PretrainStream(
                data.data, tokenize, ae_probability=data.ae_probability, split="heldout", seed=train.seed + 1, **common
            )
            evaluators.append(LossEvaluator(objective, take(heldout, data.eval_examples), batch_size=train.batch_size))
        if data.eval_ae_segments:
            segments = PretrainStream(data.data, tokenize, ae_probability=1.0, split="heldout", seed=train.seed + 2, **common)
            evaluators.append(
                ReconstructionEvaluator([e.segment for e in take(segments, data.eval_ae_segments)], batch_size=train.batch_size)
            )
    return Trainer(
        compressor, objective, stream, train, evaluators=evaluators, dist=dist,
        run_info=_run_info("pretrain", model, data, compressor),
    )


def finetuning_trainer(
    model: ModelArguments,
    data: FinetuneDataArguments,
    train: TrainingArguments,
    *,
    compressor: Any | None = None,
) -> Trainer:
    """A trainer for QA fine-tuning over slots (gold passage among distractors).

    Args:
        model: Which compressor (usually ``init_from`` a pretrained one).
        data: QA files and distractor settings.
        train: Optimisation settings.
        compressor: An already-built compressor (tests pass tiny ones).
    """
    from memrag.eval.qa import sample_qa_records

    compressor, dist = _setup(model, train, compressor)
    stream = QAStream(
        data.data, max_distractors=data.max_distractors, shuffle_buffer=data.shuffle_buffer,
        start_line=data.start_line, seed=train.seed, on_error=data.on_bad_row, shard=dist.rank, num_shards=dist.world_size,
    )
    objective: Any = QAObjective(max_answer_tokens=data.max_answer_tokens, distillation=_distillation(train))
    train_data: Any = stream
    if data.continuation_probability > 0:
        train_data, objective = _with_continuation(compressor, data, train, dist, stream, objective)
    evaluators: list[Any] = []
    if data.eval_data and dist.is_main:
        if data.eval_examples:
            heldout = QAStream(
                data.eval_data, max_distractors=data.max_distractors, shuffle_buffer=data.shuffle_buffer,
                seed=train.seed + 1, cycle=False, on_error=data.on_bad_row,
            )
            evaluators.append(LossEvaluator(objective, take(heldout, data.eval_examples), batch_size=train.batch_size))
        if data.eval_questions:
            records = sample_qa_records(data.eval_data, limit=data.eval_questions, seed=train.seed, on_error=data.on_bad_row)
            evaluators.append(SquadEvaluator(records, batch_size=train.batch_size))
    return Trainer(
        compressor, objective, train_data, train, evaluators=evaluators, dist=dist,
        run_info=_run_info("finetune", model, data, compressor),
    )


def _with_continuation(
    compressor: Any,
    data: FinetuneDataArguments,
    train: TrainingArguments,
    dist: DistInfo,
    questions: QAStream,
    qa: QAObjective,
) -> tuple[InterleavedStream, QAWithContinuationObjective]:
    """The QA stream and objective with label-free continuation examples mixed in."""
    segment_length = compressor.config.segment_length
    passages = PretrainStream(
        data.continuation_data,
        _tokenizer_fn(compressor),
        max_length=segment_length,
        min_length=max(1, segment_length // 2),
        continuation=data.continuation_length,
        ae_probability=0.0,
        holdout_fraction=data.continuation_holdout_fraction,
        seed=train.seed + 7,
        on_error=data.on_bad_row,
        shard=dist.rank,
        num_shards=dist.world_size,
    )
    stream = InterleavedStream(
        questions, passages, secondary_probability=data.continuation_probability, seed=train.seed + 11
    )
    objective = QAWithContinuationObjective(
        qa, PretrainObjective(distillation=_distillation(train)), continuation_weight=data.continuation_weight
    )
    return stream, objective
