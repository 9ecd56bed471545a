"""Shared fixtures: tiny in-process models (no network), paths to the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


#: Test folders whose tiny models run on one torch thread.
ONE_THREAD_FOLDERS = ("store", "batching")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(request):
    """Tiny models run fastest on one thread (more only adds sync overhead on a busy box)."""
    if request.path.parent.name not in ONE_THREAD_FOLDERS:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def tiny_compressor():
    """A fresh tiny compressor with random LoRA weights (function-scoped: tests mutate it)."""
    from memrag.testing import tiny_compressor as build

    return build(seed=0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests needing it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA
