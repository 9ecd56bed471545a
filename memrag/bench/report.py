"""Reporting the benchmark: environment, markdown table, targets, PNG plots."""

from __future__ import annotations

import logging
import math
import platform
from pathlib import Path
from typing import Any

import torch

from memrag.bench.runner import BenchResult
from memrag.utils.machine import describe_machine
from memrag.utils.torch_utils import dtype_name

logger = logging.getLogger(__name__)

#: The targets at k = 5: compressed context (the compressor's slots; K/V memory with
#: cross-chunk recovery) against text.
TARGET_TTFT_SPEEDUP = 3.0
TARGET_F1_WITHIN = 0.10
TARGET_RECOVERED_F1 = 0.95


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment(compressor: Any, *, label: str, trained: bool) -> dict[str, Any]:
    """Machine, threads, model, dtype and versions a run used.

    Args:
        compressor: The compressor under test.
        label: How to name the compressor in reports (a directory, or "UNTRAINED ...").
        trained: Whether the compressor was trained (``False``: freshly initialised).
    """
    from memrag.version import __version__

    device = compressor.device
    info: dict[str, Any] = {
        "machine": describe_machine(),
        "platform": platform.platform(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "dtype": dtype_name(compressor.dtype),
        "base_model": compressor.config.base_model,
        "compressor": label,
        "compressor_trained": trained,
        "compressor_fingerprint": compressor.fingerprint,
        "slot_kind": compressor.config.slot_kind,
        "compression_rate": compressor.config.compression_rate,
        "segment_length": compressor.config.segment_length,
        "attention": getattr(compressor.causal_lm.config, "_attn_implementation", None),
        "versions": {
            "python": platform.python_version(),
            "memrag": __version__,
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "peft": _version("peft"),
            "faiss-cpu": _version("faiss-cpu"),
            "sentence-transformers": _version("sentence-transformers"),
        },
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe_environment(env: dict[str, Any]) -> str:
    """A few lines for people."""
    get = env.get
    versions = ", ".join(f"{k} {v}" for k, v in get("versions", {}).items() if v)
    gpu = f", GPU {get('gpu')}" if get("gpu") else ""
    lines = [
        f"machine: {get('machine')}{gpu}",
        (
            f"device {get('device')}, {get('threads')} threads, dtype {get('dtype')}, "
            f"attention {get('attention')}"
        ),
        (
            f"model: {get('base_model')}; compressor: {get('compressor')} ({get('slot_kind')} "
            f"slots, rate {get('compression_rate')}, fingerprint {get('compressor_fingerprint')})"
        ),
        f"versions: {versions}",
    ]
    return "\n".join(lines)


def _cell(figures: dict[str, Any], key: str, text: str) -> str:
    """``text`` followed by the figure's ratio to the ``text`` mode's, when there is one."""
    value = (figures.get("ratios_vs_text") or {}).get(key)
    ratio = f" ({value:.2f}×)" if isinstance(value, float) and math.isfinite(value) else ""
    return text + ratio


def _bytes(value: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def markdown_table(result: BenchResult) -> str:
    """The results as a markdown table; ``(r×)`` is the ratio to the ``text`` mode's figure."""
    header = (
        "| mode | EM | F1 | contains | TTFT p50 (s) | TTFT p90 (s) | latency p50 (s) "
        "| positions prefilled | bytes / chunk | offline s / chunk | n |"
    )
    lines = [header, "|" + "---|" * 11]
    for mode in [*result.results, *(m for m in result.unavailable if m not in result.results)]:
        if mode in result.results:
            f = result.results[mode]
            cells = [
                mode,
                _cell(f, "exact_match", f"{f['exact_match']:.1f}"),
                _cell(f, "f1", f"{f['f1']:.1f}"),
                _cell(f, "contains", f"{f['contains']:.1f}") if "contains" in f else "",
                _cell(f, "ttft_p50_s", f"{f['ttft_p50_s']:.3f}"),
                _cell(f, "ttft_p90_s", f"{f['ttft_p90_s']:.3f}"),
                _cell(f, "latency_p50_s", f"{f['latency_p50_s']:.3f}"),
                _cell(f, "context_positions", f"{f['context_positions']:.0f}"),
                _cell(f, "bytes_per_chunk", _bytes(f["bytes_per_chunk"])),
                f"{f['offline_s_per_chunk']:.4f}",
                str(f["n"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        elif mode in result.unavailable:
            lines.append(f"| {mode} | {result.unavailable[mode]} |" + " |" * 9)
    limit = result.limit
    lines.append(
        f"| *limit* (question only) | | | | {limit['ttft_p50_s']:.3f} | {limit['ttft_p90_s']:.3f} | "
        f"| {limit.get('context_positions', 0):.0f} | | | |"
    )
    return "\n".join(lines)


def _speedup(text: dict[str, Any], mode: dict[str, Any]) -> float:
    return text["ttft_p50_s"] / mode["ttft_p50_s"] if mode["ttft_p50_s"] else math.inf


def targets(result: BenchResult) -> list[dict[str, Any]]:
    """The targets at k = 5, against ``text``.

    * ``slots``: TTFT p50 at least 3x faster, F1 within 10 %;
    * K/V memory with cross-chunk recovery (``kv-exact+...``): F1 at least 95 % of text's with
      TTFT p50 at least 3x faster;
    * storage: the slots' and pruned memory's bytes per chunk against ``kv-exact``'s.
    """
    checks: list[dict[str, Any]] = []
    text = result.results.get("text")
    if text is None:
        return checks
    slots = result.results.get("slots")
    if slots is not None:
        speedup = _speedup(text, slots)
        checks.append(
            {
                "target": f"slots TTFT p50 at least {TARGET_TTFT_SPEEDUP:g}x faster than text",
                "value": f"{speedup:.2f}x",
                "met": speedup >= TARGET_TTFT_SPEEDUP,
            }
        )
        drop = (text["f1"] - slots["f1"]) / text["f1"] if text["f1"] else 0.0
        checks.append(
            {
                "target": f"slots F1 within {TARGET_F1_WITHIN:.0%} of text",
                "value": f"{slots['f1']:.1f} vs {text['f1']:.1f} ({-drop:+.1%})",
                "met": drop <= TARGET_F1_WITHIN,
            }
        )
    for mode, figures in result.results.items():
        if not (mode.startswith("kv-exact") and "+" in mode):
            continue
        share = figures["f1"] / text["f1"] if text["f1"] else 0.0
        speedup = _speedup(text, figures)
        checks.append(
            {
                "target": (
                    f"{mode} F1 at least {TARGET_RECOVERED_F1:.0%} of text's with TTFT p50 at "
                    f"least {TARGET_TTFT_SPEEDUP:g}x faster"
                ),
                "value": f"F1 {figures['f1']:.1f} vs {text['f1']:.1f} ({share:.0%}), TTFT {speedup:.2f}x",
                "met": share >= TARGET_RECOVERED_F1 and speedup >= TARGET_TTFT_SPEEDUP,
            }
        )
    exact = result.results.get("kv-exact")
    if exact is not None and exact["bytes_per_chunk"]:
        for mode, figures in result.results.items():
            if mode == "kv-exact" or not figures["bytes_per_chunk"] or mode in ("text", "truncated"):
                continue
            if mode.startswith("kv-exact") and "+" in mode:
                continue
            ratio = exact["bytes_per_chunk"] / figures["bytes_per_chunk"]
            checks.append(
                {
                    "target": f"{mode} storage per chunk against kv-exact (reported)",
                    "value": f"{ratio:.1f}x smaller",
                    "met": True,
                }
            )
    return checks


def markdown_report(result: BenchResult) -> str:
    """Table, limit, retrieval, targets and environment, as markdown."""
    env, run, retrieval = result.environment.get, result.settings.get, result.retrieval.get
    search_ms = retrieval("search_p50_s", 0) * 1000
    lines = [
        (
            f"Compressor: **{env('compressor')}**; decoder {env('base_model')} ({env('dtype')}, "
            f"{env('device')}, {env('threads')} threads). {run('limit')} questions from "
            f"`{run('data')}`, k = {run('k')} of {retrieval('corpus_passages')} passages (gold "
            f"passage retrieved for {retrieval('gold_passage_recall_at_k', 0):.0%} of questions), "
            f"greedy, up to {run('max_new_tokens')} new tokens."
        ),
        "",
        markdown_table(result),
        "",
        (
            "Ratios in parentheses are against `text`. TTFT runs from the retrieved chunk ids to "
            "the first generated token (loading the mode's stored payload, splicing, prefill, "
            f"first decode step); retrieval (p50 {search_ms:.1f} ms) is the same for every mode "
            "and not included."
        ),
    ]
    for mode, why in result.unavailable.items():
        lines.append(f"- `{mode}`: {why}.")
    checks = targets(result)
    if checks:
        lines += ["", "Targets:", ""]
        lines += [
            f"- {'met' if c['met'] else 'MISSED'}: {c['target']} — {c['value']}" for c in checks
        ]
    lines += ["", "Environment:", "", "```text", describe_environment(result.environment), "```"]
    return "\n".join(lines) + "\n"


def write_plots(result: BenchResult, directory: str | Path) -> list[Path]:
    """Writes ``f1_vs_ttft.png`` and ``f1_vs_bytes.png`` into ``directory``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    env = result.environment.get
    label = f"{env('base_model')}, {env('dtype')}, {env('device')}"
    if env("compressor_trained") is False:
        label += ", UNTRAINED compressor"
    written = []
    for name, key, xlabel, log in (
        ("f1_vs_ttft.png", "ttft_p50_s", "time to first token, p50 (s)", False),
        ("f1_vs_bytes.png", "bytes_per_chunk", "bytes stored per chunk (log scale)", True),
    ):
        figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
        for mode, figures in result.results.items():
            x = figures[key]
            if log and x <= 0:
                continue
            axes.scatter([x], [figures["f1"]], s=40)
            axes.annotate(
                mode, (x, figures["f1"]), textcoords="offset points", xytext=(5, 4), fontsize=9
            )
        if key == "ttft_p50_s" and math.isfinite(result.limit["ttft_p50_s"]):
            axes.axvline(result.limit["ttft_p50_s"], linestyle="--", color="grey", linewidth=1)
            axes.annotate(
                "question only",
                (result.limit["ttft_p50_s"], 0),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
                color="grey",
                rotation=90,
            )
        if log:
            axes.set_xscale("log")
        else:
            axes.set_xlim(left=0)
        axes.set_ylim(0, max([f["f1"] for f in result.results.values()] + [0.0]) + 10)
        axes.set_xlabel(xlabel)
        axes.set_ylabel("SQuAD F1 (%)")
        axes.set_title(
            f"F1 vs {'TTFT' if key == 'ttft_p50_s' else 'storage'} — {label}", fontsize=9
        )
        axes.grid(True, alpha=0.3)
        figure.tight_layout()
        path = target / name
        figure.savefig(path)
        plt.close(figure)
        written.append(path)
    return written
