"""What hardware a job ran on, in words, for reports and training summaries."""

from __future__ import annotations

import os
import platform

import torch


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    """The CPU, its logical core count and architecture, e.g. ``"Intel Xeon ... (2 logical CPUs, x86_64)"``."""
    return f"{cpu_model()} ({os.cpu_count()} logical CPUs, {platform.machine()})"


def describe_device(device: torch.device | str) -> str:
    """The machine, plus the GPU's name when ``device`` is a CUDA device."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} GPU on {describe_machine()}"
    return describe_machine()
