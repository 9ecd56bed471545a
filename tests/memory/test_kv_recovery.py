"""Cross-chunk recovery (CacheBlend-style) inside the K/V prefill."""

from __future__ import annotations

import pytest
import torch
from test_kv_splice import (
    ATOL,
    CHUNK_A,
    CHUNK_B,
    QUESTION,
    _compressor,
    _kv_last_logits,
    _reference_logits,
)

from memrag.generation import GenerationOptions
from memrag.memory.builders import build_memory
from memrag.memory.kv import KVSlots
from memrag.memory.recovery import RecoveryConfig
from memrag.memory.spec import MemorySpec


def _alone(compressor, text: str) -> KVSlots:
    from memrag.memory.capture import capture_kv

    with compressor.decoder_mode() as decoder:
        (captured,) = capture_kv(decoder, [compressor.splicer.tokenize(text)])
    span = captured.keys.shape[0]
    offsets = torch.arange(span).unsqueeze(1).expand(span, captured.keys.shape[1]).clone()
    return KVSlots(captured.keys, captured.values, offsets, span, num_tokens=span, text=text)


@pytest.mark.parametrize("architecture", ["gemma3", "llama"])
@pytest.mark.parametrize("selection", ["deviation", "leading"])
def test_recomputing_a_whole_chunk_equals_reading_it_as_text(architecture: str, selection: str) -> None:
    """With ratio 1 the second chunk is recomputed in full: the prompt then equals the first
    chunk cached on its own followed by the second as text."""
    compressor = _compressor(architecture)
    tokenize = compressor.splicer.tokenize
    bos = compressor.tokenizer.bos_token_id
    first, second = _alone(compressor, CHUNK_A), _alone(compressor, CHUNK_B)
    compressor.kv_recovery = RecoveryConfig(ratio=1.0, selection=selection)
    recovered = _kv_last_logits(compressor, ["Passage: ", first, "\nPassage: ", second, QUESTION])
    reference = _reference_logits(
        compressor,
        [
            ([bos] + tokenize("Passage: "), "text"),
            (tokenize(CHUNK_A), "chunk"),
            (tokenize("\nPassage: "), "text"),
            (tokenize(CHUNK_B), "text"),
            (tokenize(QUESTION), "text"),
        ],
    )
    torch.testing.assert_close(recovered, reference, rtol=0, atol=ATOL)


def test_recovery_recomputes_the_chosen_share_and_reports_it() -> None:
    compressor = _compressor()
    memories = build_memory(compressor, MemorySpec("kv-exact"), [CHUNK_A, CHUNK_B, CHUNK_A + " " + CHUNK_B])
    prompt = ["Passage: ", memories[0], "\nPassage: ", memories[1], "\nPassage: ", memories[2], QUESTION]
    compressor.build([prompt])  # computes and keeps the leading text's memory
    plain = compressor.build([prompt], recovery=None)
    blended = compressor.build([prompt], recovery=RecoveryConfig(ratio=0.25))
    recomputed = sum(-(-m.span // 4) for m in memories[1:])
    assert blended.prefilled_lengths[0] - plain.prefilled_lengths[0] == recomputed
    assert blended.prompt_lengths == plain.prompt_lengths
    assert blended.cache.get_seq_length() == plain.cache.get_seq_length()
    options = GenerationOptions(max_new_tokens=5)
    assert compressor.generate([prompt], options)[0].text  # runs with the compressor default (off)
    compressor.kv_recovery = RecoveryConfig(ratio=0.25)
    together = compressor.generate([prompt, ["Passage: ", memories[1], "\nPassage: ", memories[0], QUESTION]], options)
    alone = [compressor.generate([p], options)[0] for p in (prompt, ["Passage: ", memories[1], "\nPassage: ", memories[0], QUESTION])]
    assert [g.text for g in together] == [g.text for g in alone]


@pytest.mark.parametrize("text", ["cacheblend:2", "blend", "cacheblend:0.1:sideways"])
def test_bad_recovery_settings_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="recovery"):
        RecoveryConfig.parse(text)
    assert RecoveryConfig.parse("cacheblend:0.1:leading") == RecoveryConfig(0.1, "leading")
