"""``memrag eval qa``, ``memrag eval ae`` and ``memrag eval lm``: how well a compressor works, in numbers.

The logic lives in :mod:`memrag.eval.qa`, :mod:`memrag.eval.ae` and :mod:`memrag.eval.lm`;
these commands load the compressor, read the data, print a table and write the JSON report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from memrag.cli.app import app
from memrag.cli.common import fail, load_compressor, setup_logging
from memrag.cli.options import Spec, dataclass_options
from memrag.version import __version__

eval_app = typer.Typer(
    help="Measure a compressor: QA answered from slots against text (`qa`), reconstruction (`ae`), "
    "and continuation language modelling on any text (`lm`).",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")


def _arg(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class EvalOptions:
    """Options every evaluation command takes."""

    compressor: str | None = _arg(
        None, "Compressor directory or shipped name (default: the trained default shipped with memrag)."
    )
    untrained: bool = _arg(False, "Use a freshly initialised compressor over --base-model (a baseline).")
    base_model: str = _arg("gemma-3-270m", "Base model for --untrained.")
    limit: int | None = _arg(None, "Evaluate at most N items (a seeded random sample).", min=1)
    seed: int = _arg(0, "Seed of the sample.")
    batch_size: int = _arg(8, "Items per generate call.", min=1)
    json_out: str | None = _arg(None, "Write the JSON report to this file.")
    samples_out: str | None = _arg(None, "Write every prediction as JSON lines to this file.")
    on_bad_row: str = _arg("skip", "Bad data rows: skip (reported with file:line) or raise.")
    device: str = _arg("cpu", "Device: cpu, cuda, cuda:N or auto.")
    dtype: str = _arg("float32", "Weight dtype: float32, bfloat16 or float16.")
    threads: int = _arg(0, "Torch CPU threads (0: torch's default, one per core).", min=0)
    verbose: bool = _arg(False, "Log what is happening.")


_FLAGS = {"verbose": ("--verbose", "-v")}


def _describe(compressor: Any) -> dict[str, Any]:
    import torch

    from memrag.utils.machine import describe_device
    from memrag.utils.torch_utils import dtype_name

    return {
        # The shipped name or directory it was loaded from; none for a fresh (untrained) one.
        "compressor": getattr(compressor, "source", None) or "untrained",
        "fingerprint": compressor.fingerprint,
        "base_model": compressor.config.base_model,
        "segment_length": compressor.config.segment_length,
        "compression_rate": compressor.config.compression_rate,
        "device": str(compressor.device),
        "dtype": dtype_name(compressor.dtype),
        "threads": torch.get_num_threads(),
        "hardware": describe_device(compressor.device),
        "memrag_version": __version__,
    }


def _write(
    options: EvalOptions, report: dict[str, Any], samples: list[dict[str, Any]], *, quiet: bool = False
) -> None:
    from memrag.utils.atomic import atomic_write_text

    if options.json_out:
        atomic_write_text(Path(options.json_out), json.dumps(report, indent=2) + "\n")
        if not quiet:
            typer.echo(f"wrote {options.json_out}")
    if options.samples_out:
        atomic_write_text(Path(options.samples_out), "".join(json.dumps(s) + "\n" for s in samples))
        if not quiet:
            typer.echo(f"wrote {options.samples_out}")


def _write_markdown(path: Path | None, table: str) -> None:
    """Writes ``table`` to ``path`` atomically (``--markdown-out``), if one was given."""
    if path is None:
        return
    from memrag.utils.atomic import atomic_write_text

    atomic_write_text(path, table)
    typer.echo(f"wrote {path}")


_MARKDOWN_OUT = typer.Option(None, "--markdown-out", help="Write the scores as a markdown table to this file.")


@eval_app.command("qa")
@dataclass_options(options=Spec(EvalOptions, flags=_FLAGS))
def qa(
    data: Path = typer.Option(
        Path("../shared/data/squad_v1.1/dev.jsonl.gz"), "--data", help="SQuAD-style JSONL(.gz): context, question, answers."
    ),
    modes: str = typer.Option(
        "text,slots,kv-exact,kv-pruned,truncated,none",
        "--modes",
        help="Comma-separated: text (passage as text), slots (its memory slots), kv-exact (its "
        "pre-computed key/value cache), kv-pruned (a quarter of its positions' keys and values), "
        "truncated (its text cut to as many tokens as it has slots), none (no passage). K/V modes "
        "take settings after colons: kv-exact:int8, kv-exact:tc2, kv:int4, kv:int4c, kv:int4r, kv-pruned:0.5, kv-pruned:0.25:prefill:pool=3; "
        "kv[:int8] is a K/V compressor's slots as a store keeps them.",
    ),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Answer length limit."),
    markdown_out: Path = _MARKDOWN_OUT,
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Keep the modes an interrupted run already wrote to --json-out (same data, sample, "
        "model and settings) and run only the others.",
    ),
    *,
    options: EvalOptions,
) -> None:
    """Answer each question from its own passage read many ways; SQuAD exact match and F1 (%).

    With --json-out the report is rewritten after every mode, so a long run can be resumed.

    Same frozen decoder, same prompt wording (the one fine-tuning uses), greedy decoding.
    """
    setup_logging(options.verbose)
    from memrag.data.readers import BadRowError, ReadReport
    from memrag.eval.qa import check_modes, evaluate_qa, sample_qa_records

    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    if not chosen:
        fail("--modes is empty")
    try:
        check_modes(chosen)
    except ValueError as err:
        fail(str(err))
    report = ReadReport()
    try:
        records = sample_qa_records(data, limit=options.limit, seed=options.seed, on_error=options.on_bad_row, report=report)  # type: ignore[arg-type]
    except (BadRowError, OSError, ValueError) as err:
        fail(str(err))
        return
    if not records:
        fail(f"no usable questions in {data} ({report.summary()})")
    compressor = load_compressor(options, needs_trained="slots" in chosen)
    start = time.perf_counter()
    info = dict(
        data=str(data), limit=options.limit, seed=options.seed, modes=chosen, max_new_tokens=max_new_tokens,
        skipped_rows=report.rows_skipped, **_describe(compressor),
    )
    done = _earlier_run(options, info) if resume else None
    done_seconds = done[1] if done else 0.0

    def save(evaluation: Any) -> None:
        complete = all(mode in evaluation.results for mode in chosen)
        seconds = round(time.perf_counter() - start, 1) + done_seconds
        _write(options, evaluation.to_json(**info, seconds=seconds, complete=complete), evaluation.predictions, quiet=not complete)

    result = evaluate_qa(
        compressor, records, modes=chosen, batch_size=options.batch_size, max_new_tokens=max_new_tokens,
        show_progress=True, done=done[0] if done else None, on_mode=save if options.json_out else None,
    )
    typer.echo(result.table())
    _write_markdown(markdown_out, result.markdown())
    if not options.json_out:
        _write(options, result.to_json(**info, seconds=round(time.perf_counter() - start, 1), complete=True), result.predictions)


def _earlier_run(options: EvalOptions, info: dict[str, Any]) -> tuple[Any, float] | None:
    """The evaluation an interrupted run saved in --json-out, if it matches this one."""
    from memrag.eval.qa import QAEvaluation

    if not options.json_out or not Path(options.json_out).is_file():
        fail("--resume needs the --json-out file of the interrupted run")
    report = json.loads(Path(options.json_out).read_text())
    keys = ("data", "limit", "seed", "max_new_tokens", "fingerprint", "dtype", "device")
    different = [k for k in keys if report.get(k) != info.get(k)]
    if different:
        fail(f"--resume: {options.json_out} was written by another run (different {', '.join(different)})")
    predictions: list[dict[str, Any]] = []
    if options.samples_out and Path(options.samples_out).is_file():
        lines = Path(options.samples_out).read_text().splitlines()
        predictions = [json.loads(line) for line in lines if line.strip()]
    typer.echo(f"resuming: keeping {', '.join(report['results'])} from {options.json_out}")
    return QAEvaluation.from_json(report, predictions), float(report.get("seconds", 0.0))


# Options of the evaluations that read plain text (ae, lm).
_TEXT_DATA = typer.Option(
    [Path("../shared/data/wikipedia_en_partial/articles.jsonl.gz")], "--data", help="JSONL(.gz) text file(s)."
)
_TEXT_FIELD = typer.Option("text", "--text-field", help="Name of the text field.")
_HOLDOUT_FRACTION = typer.Option(
    0.0, "--holdout-fraction", min=0.0, max=0.99,
    help="Read only the last fraction of each file's lines (use the value pretraining held out, e.g. 0.01).",
)


@eval_app.command("ae")
@dataclass_options(options=Spec(EvalOptions, defaults={"limit": 200}, flags=_FLAGS))
def ae(
    data: list[Path] = _TEXT_DATA,
    text_field: str = _TEXT_FIELD,
    holdout_fraction: float = _HOLDOUT_FRACTION,
    min_length: int = typer.Option(16, "--min-length", min=1, help="Shortest segment (tokens)."),
    max_length: int = typer.Option(0, "--max-length", min=0, help="Longest segment (0: the compressor's segment length)."),
    *,
    options: EvalOptions,
) -> None:
    """Reconstruct text segments from their slots; BLEU-4 (0-1) and exact match (%), by segment length.

    Segment lengths are drawn uniformly between --min-length and --max-length.
    """
    setup_logging(options.verbose)
    from memrag.data.readers import BadRowError
    from memrag.eval.ae import evaluate_ae, sample_segments

    compressor = load_compressor(options, needs_trained=True)
    longest = max_length or compressor.config.segment_length
    if longest > compressor.config.segment_length:
        fail(f"--max-length {longest} exceeds the compressor's segment length {compressor.config.segment_length}")
    try:
        segments = sample_segments(
            data, compressor.tokenizer, limit=options.limit or 200, max_length=longest, min_length=min_length,
            seed=options.seed, holdout_fraction=holdout_fraction, text_field=text_field, on_error=options.on_bad_row,  # type: ignore[arg-type]
        )
    except (BadRowError, OSError, ValueError) as err:
        fail(str(err))
        return
    if not segments:
        fail(f"no text segments found in {', '.join(map(str, data))}")
    start = time.perf_counter()
    result = evaluate_ae(compressor, segments, batch_size=options.batch_size, show_progress=True)
    typer.echo(result.table())
    payload = result.to_json(
        data=[str(p) for p in data], limit=options.limit, seed=options.seed, holdout_fraction=holdout_fraction,
        min_length=min_length, max_length=longest, seconds=round(time.perf_counter() - start, 1),
        **_describe(compressor),
    )
    _write(options, payload, result.samples)


@eval_app.command("lm")
@dataclass_options(options=Spec(EvalOptions, defaults={"limit": 200}, flags=_FLAGS))
def lm(
    data: list[Path] = _TEXT_DATA,
    text_field: str = _TEXT_FIELD,
    holdout_fraction: float = _HOLDOUT_FRACTION,
    modes: str = typer.Option(
        "text,slots,truncated,none",
        "--modes",
        help="Comma-separated: text (the context as text), slots (its slots and the continue marker), "
        "truncated (its first tokens, as many as it has slots), none (no context).",
    ),
    context_tokens: int = typer.Option(
        0, "--context-tokens", min=0, help="Context length in tokens (0: twice the compressor's segment length)."
    ),
    target_tokens: int = typer.Option(32, "--target-tokens", min=1, help="Tokens scored after each context."),
    markdown_out: Path = _MARKDOWN_OUT,
    *,
    options: EvalOptions,
) -> None:
    """Predict the text that follows a context read as text, slots, truncated text or nothing.

    Mean NLL per target token, perplexity and top-1 next-token accuracy (%) of the frozen
    decoder, teacher-forced through the training objectives' splice path. Documents shorter
    than context + target are skipped (and counted).
    """
    setup_logging(options.verbose)
    from memrag.data.readers import BadRowError
    from memrag.eval.lm import (
        DEFAULT_CONTEXT_SEGMENTS,
        check_modes,
        evaluate_lm,
        sample_continuations,
    )

    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    try:
        check_modes(chosen)
    except ValueError as err:
        fail(str(err))
    compressor = load_compressor(options, needs_trained="slots" in chosen)
    context = context_tokens or DEFAULT_CONTEXT_SEGMENTS * compressor.config.segment_length
    try:
        sample = sample_continuations(
            data, compressor.tokenizer, limit=options.limit or 200, context_tokens=context,
            target_tokens=target_tokens, seed=options.seed, holdout_fraction=holdout_fraction,
            text_field=text_field, on_error=options.on_bad_row,  # type: ignore[arg-type]
        )
    except (BadRowError, OSError, ValueError) as err:
        fail(str(err))
        return
    if not sample.examples:
        fail(
            f"no document in {', '.join(map(str, data))} has {context} + {target_tokens} tokens "
            f"({sample.short_documents} too short, {sample.skipped_rows} bad rows skipped)"
        )
    if sample.short_documents:
        typer.echo(f"skipped {sample.short_documents} documents shorter than {context} + {target_tokens} tokens")
    start = time.perf_counter()
    try:
        result = evaluate_lm(compressor, sample.examples, modes=chosen, batch_size=options.batch_size, show_progress=True)
    except ValueError as err:
        fail(str(err))
        return
    typer.echo(result.table())
    segment = compressor.config.segment_length
    payload = result.to_json(
        data=[str(p) for p in data], text_field=text_field, limit=options.limit, seed=options.seed,
        holdout_fraction=holdout_fraction, modes=chosen, context_tokens=context, target_tokens=target_tokens,
        segments_per_context=-(-context // segment), short_documents=sample.short_documents,
        skipped_rows=sample.skipped_rows, seconds=round(time.perf_counter() - start, 1), **_describe(compressor),
    )
    _write_markdown(markdown_out, result.markdown())
    _write(options, payload, result.samples)
