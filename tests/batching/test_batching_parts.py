"""The pieces of the batcher: the decoding state, the samplers, a row's text, its handle."""

from __future__ import annotations

import threading

import pytest
import torch

from memrag.batching import DecodeState, RowHandle, RowSampler, RowText, sample, warp_scores
from memrag.generation import Generation, GenerationOptions


def _state(rows: int, columns: int, pad: list[int], layers: int = 2) -> DecodeState:
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer in range(layers):
        keys = torch.randn(rows, 1, columns, 4)
        cache.update(keys, keys + 1, layer)
    mask = torch.ones(rows, columns, dtype=torch.long)
    for row, count in enumerate(pad):
        mask[row, :count] = 0
    return DecodeState(cache, mask, torch.arange(rows) + 10, torch.arange(rows))


def test_merge_left_pads_and_select_trims():
    a, b = _state(2, 5, [0, 2]), _state(1, 3, [1])
    merged = a.merge(b)
    assert (merged.rows, merged.columns) == (3, 5)
    assert merged.attention_mask.tolist() == [[1] * 5, [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]]
    keys = merged.cache.layers[1].keys
    assert torch.equal(keys[2, :, 2:], b.cache.layers[1].keys[0]) and not keys[2, :, :2].any()
    assert merged.next_positions.tolist() == [10, 11, 10]
    narrowed = merged.select([1, 2])  # the longest row left: its columns go
    assert narrowed.columns == 3 and narrowed.attention_mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert torch.equal(narrowed.cache.layers[0].keys[1], merged.cache.layers[0].keys[2, :, 2:])
    assert narrowed.next_tokens.tolist() == [1, 0] and merged.select([]) is None


def test_a_cache_that_does_not_fit_is_refused():
    state = _state(2, 4, [0, 0])
    with pytest.raises(ValueError, match="does not match"):
        DecodeState(state.cache, state.attention_mask[:, 1:], state.next_positions, state.next_tokens)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.8), (0.9, 20, 0.5)])
def test_warped_scores_are_those_of_transformers(temperature, top_k, top_p):
    from transformers import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = torch.randn(300, generator=torch.Generator().manual_seed(3)) * 3
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    expected = warpers(torch.zeros(1, 0, dtype=torch.long), logits.unsqueeze(0).clone())[0]
    torch.testing.assert_close(warp_scores(logits, temperature, top_k, top_p), expected)
    allowed = set(torch.isfinite(expected).nonzero().flatten().tolist())
    generator = torch.Generator().manual_seed(0)
    draws = {sample(logits, temperature, top_k, top_p, generator=generator) for _ in range(100)}
    assert draws <= allowed and len(draws) > 1


def test_row_samplers():
    logits = torch.tensor([0.1, 3.0, 0.2])
    assert RowSampler(GenerationOptions(), torch.device("cpu"))(logits) == 1
    seeded = [RowSampler(GenerationOptions(temperature=5.0, seed=3), torch.device("cpu")) for _ in range(2)]
    assert [seeded[0](logits) for _ in range(20)] == [seeded[1](logits) for _ in range(20)]


@pytest.mark.parametrize("stop", [(), ("o",), ("do",), ("e", "q")])
def test_row_text_ends_as_generate_does(tiny_compressor, stop):
    """Fed the tokens ``generate`` picks, a row stops where it stops and says what it says."""
    options = GenerationOptions(max_new_tokens=12, stop=stop)
    (expected,) = tiny_compressor.generate([["The quick brown"]], options)
    batch = tiny_compressor.build([["The quick brown"]])
    with tiny_compressor.decoder_mode() as decoder, torch.inference_mode():
        state, logits = DecodeState.prefill(decoder, batch)
        row = RowText(tiny_compressor.tokenizer, options, prompt_positions=batch.prompt_lengths[0])
        streamed = row.push(int(logits[0].argmax()))
        while not row.done:
            state.next_tokens = torch.tensor([row.tokens[-1]])
            streamed += row.push(int(state.step(decoder)[0].argmax()))
    assert row.generation() == Generation(
        expected.text, expected.num_tokens, expected.finish_reason, expected.prompt_positions, 0
    )
    assert streamed == expected.text
    with pytest.raises(RuntimeError, match="already done"):
        row.push(0)


def test_row_handle_ends_once_and_reports():
    handle = RowHandle()
    seen: list[str] = []
    consumer = threading.Thread(target=lambda: seen.extend(handle))
    consumer.start()
    handle.emit("a")
    handle.emit("")  # nothing
    handle.note_batch(3)
    handle.note_batch(1)
    handle.emit("b")
    result = Generation("ab", 2, "stop", 5)
    handle.finish(result)
    handle.fail(RuntimeError("too late"))  # the first end wins
    consumer.join(5)
    assert seen == ["a", "b"] and handle.generation is result and handle.error is None
    assert (handle.max_batch_size, handle.mean_batch_size) == (3, 2.0)
    failed = RowHandle()
    failed.fail(ValueError("bad chunk"))
    with pytest.raises(ValueError, match="bad chunk"):
        list(failed)
    with pytest.raises(RuntimeError, match="no result"):
        failed.generation
