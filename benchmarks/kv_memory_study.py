"""Side-by-side QA study of K/V memory settings (pruning selections, keep ratios, storage dtypes).

Runs ``memrag eval qa``'s evaluation one mode at a time on the same seeded sample of SQuAD
dev questions (each question with its own passage), writes one JSON report per mode (so an
interrupted study resumes where it stopped), and a markdown table of all of them:

    python benchmarks/kv_memory_study.py --limit 200 --out benchmarks/results/kv-study \\
        --modes text,none,truncated,kv-exact,kv-pruned:0.25:stride,kv-pruned:0.25:kvzip

Every figure in the README's K/V tables comes from this script or ``memrag eval qa``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from memrag.compressor import Compressor
from memrag.eval.qa import QAEvaluation, check_modes, evaluate_qa, sample_qa_records
from memrag.memory.builders import MemoryReuse
from memrag.memory.spec import MemorySpec, describe_memory, parse_memory_mode
from memrag.utils.atomic import atomic_write_text
from memrag.utils.machine import describe_device


def _file(out: Path, mode: str) -> Path:
    return out / "modes" / (mode.replace(":", "_").replace("=", "-") + ".json")


def table(out: Path, modes: list[str]) -> str:
    """A markdown table of every finished mode, with F1 against ``text`` and ``truncated``."""
    merged = QAEvaluation(results={}, passage_positions={}, prompt_positions={})
    labels = {}
    for mode in modes:
        if _file(out, mode).is_file():
            report = json.loads(_file(out, mode).read_text())
            merged.merge(QAEvaluation.from_json(report))
            if report.get("spec"):  # every setting spelled out: defaults may change
                labels[mode] = describe_memory(MemorySpec.from_dict(report["spec"]))
    return merged.markdown(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/squad_v1.1/dev.jsonl.gz")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", required=True, help="Comma-separated eval qa modes.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compressor", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    check_modes(modes)
    if args.threads:
        torch.set_num_threads(args.threads)
    records = sample_qa_records(args.data, limit=args.limit, seed=args.seed)
    compressor = Compressor.from_pretrained(args.compressor, dtype=args.dtype)
    environment = {
        "data": args.data,
        "limit": args.limit,
        "seed": args.seed,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "hardware": describe_device(compressor.device),
        "compressor": getattr(compressor, "source", None),
        "fingerprint": compressor.fingerprint,
    }
    reuse = MemoryReuse()  # each passage's keys, values and scores, computed once for every mode
    for mode in modes:
        target = _file(args.out, mode)
        if target.is_file():
            logging.info("%s: done already (%s)", mode, target)
            continue
        started = time.perf_counter()
        result = evaluate_qa(
            compressor, records, modes=[mode], batch_size=args.batch_size, show_progress=True, reuse=reuse
        )
        spec = parse_memory_mode(mode).to_dict() if mode.startswith("kv-") else None
        report = result.to_json(seconds=round(time.perf_counter() - started, 1), spec=spec, **environment)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(report, indent=2) + "\n")
        atomic_write_text(args.out / "table.md", table(args.out, modes))
        logging.info("%s: %s", mode, result.results[mode])
    print(table(args.out, modes))


if __name__ == "__main__":
    main()
