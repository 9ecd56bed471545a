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


PASSAGE = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889 as the centerpiece of the 1889 World's Fair."
)
QUESTION = "\nQuestion: Who designed the Eiffel Tower?\nAnswer:"


def test_kv_memory_on_the_real_model_equals_the_text_and_moves(real_compressor) -> None:
    """Gemma 3 270M (float32): a passage's K/V memory computed after the prompt's opening text
    gives the text prompt's next-token logits, and K/V memory moved to another position (after
    other text) answers like the text there with the passage masked from it."""
    from memrag.generation import GenerationOptions
    from memrag.memory.anatomy import decoder_anatomy
    from memrag.memory.builders import build_memory
    from memrag.memory.capture import capture_kv
    from memrag.memory.kv import KVSlots
    from memrag.memory.spec import MemorySpec

    compressor = real_compressor
    assert decoder_anatomy(compressor.causal_lm).layer_types.count("sliding_attention") == 15
    tokenize = compressor.splicer.tokenize
    ids = tokenize(PASSAGE)
    with compressor.decoder_mode() as decoder:
        (captured,) = capture_kv(
            decoder, [ids], context=[compressor.tokenizer.bos_token_id] + tokenize("Passage: ")
        )
    offsets = torch.arange(len(ids)).unsqueeze(1).expand(len(ids), 18).clone()
    memory = KVSlots(captured.keys, captured.values, offsets, len(ids), num_tokens=len(ids))
    text = compressor.build([["Passage: ", PASSAGE, QUESTION]])
    batch = compressor.build([["Passage: ", memory, QUESTION]])
    cached = batch.cache.get_seq_length()
    with compressor.decoder_mode() as decoder, torch.inference_mode():
        expected = decoder(inputs_embeds=text.inputs_embeds).logits[0, -1]
        got = decoder(
            inputs_embeds=batch.inputs_embeds[:, cached:],
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids[:, cached:],
            cache=batch.cache,
        ).logits[0, -1]
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-3)
    options = GenerationOptions(max_new_tokens=8)
    (stored,) = build_memory(compressor, MemorySpec("kv-exact"), [PASSAGE])
    moved = compressor.generate([["Some unrelated opening words. Passage: ", stored, QUESTION]], options)
    assert "Eiffel" in moved[0].text or "Gustave" in moved[0].text, moved[0].text
