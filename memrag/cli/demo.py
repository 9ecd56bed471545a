"""``memrag demo``: the main job on the embedded defaults."""

from __future__ import annotations

import logging
import time

import typer

from memrag.cli.app import app
from memrag.cli.common import CompressorOption, DeviceOption, DtypeOption, setup_logging

logger = logging.getLogger(__name__)


@app.command()
def demo(
    questions: int = typer.Option(3, "--questions", "-n", min=1, help="How many demo questions to answer."),
    compressor: str = CompressorOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    max_new_tokens: int = typer.Option(24, "--max-new-tokens", min=1, help="Answer length limit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what is happening."),
) -> None:
    """Compress demo passages into slots and answer questions from slots and from text."""
    setup_logging(verbose)
    from memrag.compressor import Compressor
    from memrag.demo_corpus import load_demo_corpus
    from memrag.eval.metrics import squad_scores
    from memrag.generation import GenerationOptions
    from memrag.prompts import ANSWER_STOP, qa_parts

    typer.echo("loading the compressor (the first run de-quantizes the embedded model once) ...")
    try:
        model = Compressor.from_pretrained(compressor, device=device, dtype=dtype)
        trained = True
    except FileNotFoundError as err:
        if compressor is not None:
            raise
        typer.secho(
            f"{err}\nUsing an UNTRAINED compressor: answers from slots will be nonsense "
            "until a trained one is shipped or passed with --compressor.",
            fg=typer.colors.YELLOW,
        )
        model = Compressor.from_base("gemma-3-270m", device=device, dtype=dtype)
        trained = False
    passages = load_demo_corpus()
    asked = [(p, q) for p in passages for q in p.questions[:1]][:questions]
    typer.echo(f"compressing {len(asked)} passages (rate {model.config.compression_rate}) ...")
    start = time.perf_counter()
    slots = model.compress([p.text for p, _ in asked], show_progress=True)
    typer.echo(f"compressed in {time.perf_counter() - start:.1f}s")
    options = GenerationOptions(max_new_tokens=max_new_tokens, stop=ANSWER_STOP)
    for (passage, question), memory in zip(asked, slots):
        typer.echo(f"\n[{passage.title}] Q: {question.question}")
        typer.echo(f"  reference: {question.answers[0]}")
        for mode, context in (("text", passage.text), ("slots", memory)):
            start = time.perf_counter()
            (answer,) = model.generate([qa_parts([context], question.question)], options)
            elapsed = time.perf_counter() - start
            _, f1 = squad_scores(answer.text, question.answers)
            typer.echo(
                f"  {mode:5s} ({answer.prompt_positions:4d} positions, {elapsed:5.2f}s, F1 {100 * f1:5.1f}): "
                f"{answer.text.strip()}"
            )
    if not trained:
        typer.echo("\n(untrained compressor: see README for training the shipped default)")
