"""``memrag bench``: quality, latency and storage of every context mode, side by side.

The logic lives in :mod:`memrag.bench`; this command loads the compressor, runs the
benchmark, prints the environment and the markdown report and writes the JSON, markdown and
PNG outputs.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

from memrag.cli.app import app
from memrag.cli.common import fail, load_compressor, setup_logging
from memrag.cli.eval import EvalOptions
from memrag.cli.options import Spec, dataclass_options

_MODES_HELP = (
    "Comma-separated modes: text (chunks as text), slots (the compressor's memory slots), "
    "kv-exact (each chunk's pre-computed key/value cache), kv-pruned (a quarter of its "
    "positions' keys and values), truncated (text cut to the slots' positions), none. K/V modes "
    "take settings (kv-exact:int8, kv-exact:tc2, kv:int4, kv:int4c, kv:int4r, kv-pruned:0.5) and cross-chunk recovery "
    "(kv-exact+cacheblend, kv-exact+cacheblend:0.1)."
)


@app.command("bench")
@dataclass_options(
    options=Spec(
        EvalOptions,
        defaults={"limit": 300},
        exclude=frozenset({"batch_size"}),
        flags={"verbose": ("--verbose", "-v")},
    )
)
def bench(
    data: Path = typer.Option(
        Path("../shared/data/squad_v1.1/dev.jsonl.gz"),
        "--data",
        help="SQuAD-style JSONL(.gz): context, question, answers.",
    ),
    k: int = typer.Option(5, "--k", min=1, help="Chunks retrieved per question."),
    corpus_size: int = typer.Option(
        500,
        "--corpus-size",
        min=1,
        help="Passages in the store: the questions' own plus distractors from the same file.",
    ),
    modes: str = typer.Option(
        "text,slots,kv-exact,kv-exact+cacheblend,kv-pruned,truncated,none",
        "--modes",
        help=_MODES_HELP,
    ),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Answer length limit."),
    warmup: int = typer.Option(
        1, "--warmup", min=0, help="Warm-up rounds (every mode answers once; not counted)."
    ),
    embedder: str = typer.Option(
        None,
        "--embedder",
        help="Retrieval embedder (default all-MiniLM-L6-v2; 'hashing:256' for a model-free one).",
    ),
    work_dir: Path = typer.Option(
        None,
        "--work-dir",
        help="Keep the store and caches here (default: a temporary directory, removed).",
    ),
    plots_dir: Path = typer.Option(
        None, "--plots-dir", help="Write f1_vs_ttft.png and f1_vs_bytes.png here."
    ),
    markdown_out: Path = typer.Option(
        None, "--markdown-out", help="Write the markdown report to this file."
    ),
    *,
    options: EvalOptions,
) -> None:
    """Compare context modes on QA: EM/F1, time to first token, latency, storage and offline cost.

    Same frozen decoder, same retrieved chunks, same prompt wording, greedy decoding; warm-up
    excluded; modes interleaved per question.
    """
    setup_logging(options.verbose)

    from memrag.bench.report import describe_environment, environment, markdown_report, write_plots
    from memrag.bench.runner import BenchSettings, run_benchmark
    from memrag.data.readers import BadRowError
    from memrag.utils.atomic import atomic_write_text

    if options.limit is None:
        fail("--limit is required")
    try:
        settings = BenchSettings(
            data=data,
            limit=int(options.limit),
            k=k,
            corpus_size=corpus_size,
            modes=[m.strip() for m in modes.split(",") if m.strip()],
            seed=options.seed,
            max_new_tokens=max_new_tokens,
            warmup=warmup,
            embedder=embedder,
            on_bad_row=options.on_bad_row,
            show_progress=True,
        )
    except ValueError as err:
        fail(str(err))
        return
    if not data.is_file():
        fail(f"no such data file: {data}")
    if work_dir is not None and work_dir.exists() and any(work_dir.iterdir()):
        fail(f"--work-dir {work_dir} is not empty")
    compressor = load_compressor(options, needs_trained="slots" in settings.modes)
    trained = getattr(compressor, "source", None) is not None
    label = (
        compressor.source
        if trained
        else f"UNTRAINED (freshly initialised over {compressor.config.base_model})"
    )
    env = environment(compressor, label=label, trained=trained)
    typer.echo(describe_environment(env))
    if not trained:
        typer.secho(
            "the compressor is UNTRAINED: slot figures check the pipeline, they are not results",
            fg=typer.colors.YELLOW,
        )
    with tempfile.TemporaryDirectory(prefix="memrag-bench-") as scratch:
        try:
            result = run_benchmark(compressor, settings, work_dir or Path(scratch), environment=env)
        except (BadRowError, OSError, ValueError) as err:
            fail(str(err))
            return
    report = markdown_report(result)
    typer.echo(report)
    timing = result.timing
    typer.echo(
        f"setup {timing['setup_s']:.1f}s, warm-up {timing['warmup_s']:.1f}s, "
        f"measured {timing['measure_s']:.1f}s ({timing['s_per_question_all_modes']:.2f}s per "
        f"question, all modes), total {timing['total_s']:.1f}s"
    )
    if options.json_out:
        atomic_write_text(Path(options.json_out), json.dumps(result.to_json(), indent=2) + "\n")
        typer.echo(f"wrote {options.json_out}")
    if options.samples_out:
        atomic_write_text(
            Path(options.samples_out), "".join(json.dumps(p) + "\n" for p in result.predictions)
        )
        typer.echo(f"wrote {options.samples_out}")
    if markdown_out:
        atomic_write_text(markdown_out, report)
        typer.echo(f"wrote {markdown_out}")
    if plots_dir:
        for path in write_plots(result, plots_dir):
            typer.echo(f"wrote {path}")
