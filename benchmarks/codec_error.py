"""Round-trip error of each K/V storage codec on a compressor's real memory.

Builds the float16 K/V memory of a seeded sample of SQuAD dev passages with the compressor,
stores each chunk with every codec asked for (``memrag.memory.codec``) and decodes it again,
and reports per codec the relative error of the keys and of the values (the norm of the
difference over the norm of the original, averaged over chunks) and the bytes per position
(header rows included). It says where a codec loses precision before a QA evaluation says
whether that matters.

Usage::

    python benchmarks/codec_error.py --compressor experiments/rate8-kvzip/compressor-step400 \\
        --passages 30 --markdown-out benchmarks/results/codec-error/rate8.md

The ``experiments/rate8-kvzip/compressor-step400`` weights are not committed: re-make them first
(docs/TRAINING.md, "An experiment's weights").
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from memrag.memory.builders import build_memory, make_codec
from memrag.memory.spec import parse_memory_mode

logger = logging.getLogger("codec_error")


def relative_error(decoded: torch.Tensor, original: torch.Tensor) -> float:
    """``|decoded - original| / |original|`` (Frobenius norms, float32)."""
    original = original.float()
    return float((decoded.float() - original).norm() / original.norm().clamp(min=1e-12))


def codec_errors(compressor: object, texts: list[str], dtypes: list[str], kind: str) -> list[dict[str, float | str]]:
    """Per dtype: mean key and value relative error, and stored bytes per position."""
    memories = build_memory(compressor, parse_memory_mode(f"{kind}:float16"), texts, batch_size=4)
    codecs = {dtype: make_codec(compressor, parse_memory_mode(f"{kind}:{dtype}")) for dtype in dtypes}  # type: ignore[arg-type]
    rows_out = []
    for dtype, codec in codecs.items():
        key_errors, value_errors, stored_bytes, positions = [], [], 0, 0
        for memory in memories:
            rows = codec.encode(memory)
            decoded = codec.decode(rows, span=memory.span, kind=memory.kind)
            key_errors.append(relative_error(decoded.keys, memory.keys))
            value_errors.append(relative_error(decoded.values, memory.values))
            stored_bytes += int(rows.numel())
            positions += memory.num_slots
        rows_out.append(
            {
                "dtype": dtype,
                "key_error": sum(key_errors) / len(key_errors),
                "value_error": sum(value_errors) / len(value_errors),
                "bytes_per_position": stored_bytes / max(positions, 1),
            }
        )
    return rows_out


def markdown(results: list[dict[str, float | str]], compressor: str, passages: int) -> str:
    """The report as a markdown table."""
    lines = [
        (
            f"Codec round trip on `{compressor}`'s memory of {passages} SQuAD dev passages "
            "(relative error: |decoded - original| / |original|, mean over chunks)."
        ),
        "",
        "| codec | key error | value error | bytes / position (headers included) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in results:
        lines.append(
            f"| `{row['dtype']}` | {100 * float(row['key_error']):.1f} % | "
            f"{100 * float(row['value_error']):.1f} % | {float(row['bytes_per_position']):,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    from memrag.compressor.resolve import resolve_compressor
    from memrag.eval.qa import sample_qa_records
    from memrag.utils.atomic import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compressor", default=None, help="directory or shipped name (default: the shipped one)")
    parser.add_argument("--kind", default="kv", help="K/V memory kind: kv (trained slots) or kv-exact")
    parser.add_argument("--data", default="../shared/data/squad_v1.1/dev.jsonl.gz")
    parser.add_argument("--passages", type=int, default=30)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--dtypes", default="int8,int4,k8v4,int4r,int4c")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown-out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    compressor = resolve_compressor(args.compressor, memory_kind=args.kind)
    records = sample_qa_records(args.data, limit=4 * args.passages, seed=args.seed)
    texts = list(dict.fromkeys(r.context for r in records))[: args.passages]
    results = codec_errors(compressor, texts, args.dtypes.split(","), args.kind)
    report = markdown(results, args.compressor or "the shipped compressor", len(texts))
    logger.info("%s", report)
    if args.markdown_out is not None:
        args.markdown_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.markdown_out, report)


if __name__ == "__main__":
    main()
