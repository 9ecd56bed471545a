"""End-to-end on the real embedded gemma-3-270m (slow: the first load de-quantizes the GGUF).

Uses a fresh, untrained compressor: the answers are nonsense, but shapes, determinism and the
model cache are real.
"""

from __future__ import annotations

import logging
import time

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_compressor():
    from memrag.compressor import Compressor
    from memrag.models.loading import load_base_model

    load_base_model("gemma-3-270m")  # builds the cache if this machine has none yet
    return Compressor.from_base("gemma-3-270m", seed=0)


def test_second_load_hits_the_cache(caplog) -> None:
    from memrag.models.loading import load_base_model

    load_base_model("gemma-3-270m")
    caplog.set_level(logging.INFO, logger="memrag")
    start = time.perf_counter()
    base = load_base_model("gemma-3-270m")
    elapsed = time.perf_counter() - start
    assert "de-quantizing" not in caplog.text
    assert elapsed < 60, f"a cached load took {elapsed:.0f}s"
    assert base.model.config.hidden_size == 640


def test_compress_and_generate_through_the_splice(real_compressor) -> None:
    from memrag.generation import GenerationOptions
    from memrag.prompts import ANSWER_STOP, qa_parts

    passage = (
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
        "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
        "from 1887 to 1889."
    )
    (memory,) = real_compressor.compress(passage)
    config = real_compressor.config
    assert memory.tensor.shape == (config.slots_for(memory.num_tokens), 640)
    assert torch.isfinite(memory.tensor).all()
    prompt = qa_parts([memory], "Who is the tower named after?")
    options = GenerationOptions(max_new_tokens=8, stop=ANSWER_STOP)
    first = real_compressor.generate([prompt], options)[0]
    second = real_compressor.generate([prompt], options)[0]
    assert first.text == second.text
    assert first.prompt_positions < len(real_compressor.tokenizer(passage)["input_ids"])
    streamed = "".join(real_compressor.stream(prompt, options))
    assert streamed == first.text
