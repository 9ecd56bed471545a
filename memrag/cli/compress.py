"""``memrag compress``: compress text and show the slots it becomes."""

from __future__ import annotations

import sys

import typer

from memrag.cli.app import app
from memrag.cli.common import CompressorOption, DeviceOption, DtypeOption, fail, setup_logging


@app.command()
def compress(
    texts: list[str] = typer.Argument(None, help="Texts to compress ('-' or nothing: read one from stdin)."),
    compressor: str = CompressorOption,
    untrained: bool = typer.Option(
        False, "--untrained", help="Use a freshly initialised compressor over the default base model."
    ),
    base_model: str = typer.Option("gemma-3-270m", "--base-model", help="Base model for --untrained."),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what is happening."),
) -> None:
    """Compress TEXTS into memory slots and print slot counts and shapes."""
    setup_logging(verbose)
    from memrag.compressor.resolve import resolve_compressor
    from memrag.memory.kv import KVSlots

    if not texts or texts == ["-"]:
        texts = [sys.stdin.read()]
    try:
        model = resolve_compressor(
            compressor, untrained_base=base_model if untrained else None, device=device, dtype=dtype
        )
        slots = model.compress(texts)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
        return
    typer.echo(f"compressor {model.fingerprint} (rate {model.config.compression_rate}, "
               f"segment {model.config.segment_length} tokens, {model.config.slot_kind} slots)")
    for index, memory in enumerate(slots):
        if isinstance(memory, KVSlots):  # keys and values of every layer: (slots, layers, heads, dim)
            tensor, detail = memory.keys, "keys and values each"
        else:
            tensor, detail = memory.tensor, f"segments {memory.segment_slot_counts}"
        typer.echo(
            f"text {index}: {memory.num_tokens} tokens -> {memory.num_slots} slots "
            f"shape {tuple(tensor.shape)} dtype {str(tensor.dtype).removeprefix('torch.')} {detail}"
        )
