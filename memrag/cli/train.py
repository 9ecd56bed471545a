"""``memrag train pretrain`` and ``memrag train finetune``: the two stages of the recipe.

Every option comes from the argument dataclasses of :mod:`memrag.training.arguments`, so the
help shown here is the documentation of the Python API too. Several GPUs:
``torchrun --nproc-per-node N $(which memrag) train ...``.
"""

from __future__ import annotations

from typing import Any

import typer

from memrag.cli.app import app
from memrag.cli.common import fail, setup_logging
from memrag.cli.options import Spec, dataclass_options
from memrag.training.arguments import (
    FinetuneDataArguments,
    ModelArguments,
    PretrainDataArguments,
    TrainingArguments,
)

train_app = typer.Typer(
    help="Train a compressor: `pretrain` on plain text (autoencoding + continuation), then "
    "`finetune` on QA over slots. Writes checkpoints, log.jsonl, curves.png and final/ to --output.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

SHARED_DATA = "../shared/data"
PRETRAIN_DATA = [
    f"{SHARED_DATA}/wikipedia_en_partial/articles.jsonl.gz",
    f"{SHARED_DATA}/gutenberg_en/books.jsonl.gz",
]
_OUTPUT_FLAGS = {"output_dir": ("--output", "-o")}
_RESUME = typer.Option(
    False,
    "--resume",
    help="Continue from the newest checkpoint in --output (exactly: weights, optimizer, schedule, "
    "RNG and data position). Without it, an --output holding checkpoints is refused.",
)
_VERBOSE = typer.Option(False, "--verbose", "-v", help="Log what is happening (INFO).")


def _run(kind: str, model: ModelArguments, data: object, train: TrainingArguments, resume: bool, verbose: bool) -> None:
    setup_logging(verbose)
    from memrag.data.readers import BadRowError
    from memrag.training import recipes
    from memrag.training.trainer import FINAL_DIR, SUMMARY_NAME, OutputExistsError

    build = recipes.pretraining_trainer if kind == "pretrain" else recipes.finetuning_trainer
    try:
        trainer = build(model, data, train)  # type: ignore[arg-type]
        if not trainer.dist.is_main:
            trainer.train(resume=resume)
            return
        config = trainer.compressor.config
        typer.echo(
            f"{kind}: {config.base_model} ({_slots(config)} slots, segment {config.segment_length}, "
            f"rate {config.compression_rate}, "
            f"LoRA r={config.lora_rank}) on {trainer.device}, {trainer.dist.world_size} process(es) -> {train.output_dir}"
        )
        state = trainer.train(resume=resume)
    except (BadRowError, OutputExistsError, FileNotFoundError, ValueError) as err:
        fail(str(err))
        return
    for report in getattr(trainer.train_data, "reports", []):
        if report.rows_skipped:
            typer.secho(f"data: {report.summary()}", fg=typer.colors.YELLOW)
    typer.echo(
        f"done: {state.step} steps, {state.examples} examples, {state.source_tokens + state.target_tokens} tokens, "
        f"{state.wall_s / 60:.1f} min; compressor in {train.output_path / FINAL_DIR}, "
        f"summary in {train.output_path / SUMMARY_NAME}"
    )
    if train.max_minutes and state.step < train.max_steps:
        typer.echo(
            f"stopped at step {state.step} of {train.max_steps} (--max-minutes {train.max_minutes:g}); "
            "run the same command with --resume to continue"
        )
    if state.last_eval:
        typer.echo("last evaluation: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(state.last_eval.items())))


def _register(name: str, data_spec: Spec, train_defaults: dict[str, object], doc: str) -> None:
    """Adds ``memrag train <name>``: model, data and training options, plus --resume/--verbose."""

    def command(
        resume: bool = _RESUME,
        verbose: bool = _VERBOSE,
        *,
        model_args: ModelArguments,
        data_args: object,
        train_args: TrainingArguments,
    ) -> None:
        _run(name, model_args, data_args, train_args, resume, verbose)

    command.__doc__ = doc
    command.__name__ = name
    defaults = {"output_dir": f"runs/{name}", "eval_every": 500, "save_every": 500, **train_defaults}
    options = dataclass_options(
        model_args=Spec(ModelArguments),
        data_args=data_spec,
        train_args=Spec(TrainingArguments, defaults=defaults, flags=_OUTPUT_FLAGS),
    )
    train_app.command(name)(options(command))


_register(
    "pretrain",
    Spec(PretrainDataArguments, defaults={"data": PRETRAIN_DATA}),
    {"max_steps": 20000, "learning_rate": 1e-4, "warmup_steps": 300},
    """Pretrain a compressor on plain text: reconstruct segments from their slots, or continue them.

    Each example is a segment of --min-segment-length..--segment-length tokens; with probability
    --ae-probability the frozen decoder must reconstruct it from its slots followed by the
    reconstruct marker, otherwise produce the --continuation-length tokens that follow from its
    slots followed by the continue marker. The last --holdout-fraction of each file is never
    trained on; it gives the evaluation loss and reconstruction BLEU.
    """,
)
_register(
    "finetune",
    Spec(FinetuneDataArguments),
    {"max_steps": 5000, "learning_rate": 5e-5, "warmup_steps": 100},
    """Fine-tune a compressor on QA: answer from the slots of the gold passage among distractors.

    Start from a pretrained compressor with --init-from (e.g. runs/pretrain). Each question's
    prompt holds its gold passage's slots and 0..--max-distractors other passages' slots in
    random order, then the question (the prompt of memrag.prompts.qa_parts, rendered by the
    chat template when the model has one); the loss is on the answer tokens only.
    """,
)


def _slots(config: Any) -> str:
    if config.slot_kind != "kv":
        return config.slot_kind
    chosen = f", {config.kv_selection}" if config.scores_positions else ""
    return f"kv/{config.kv_positions}{chosen}"
