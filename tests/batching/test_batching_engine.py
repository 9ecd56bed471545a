"""The batched decoder answers as the one-at-a-time path does, row by row, whatever shares the batch."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time

import pytest
import torch
from batching_helpers import PASSAGES, QUESTIONS

from memrag.batching import BatchedGenerator, BatcherClosedError, RowCancelledError
from memrag.generation import GenerationOptions
from memrag.prompts import qa_parts


def one_at_a_time(compressor, prompt, options) -> tuple:
    """What the server's one-at-a-time path (``Compressor.stream``) answers."""
    stream = compressor.stream(prompt, options)
    text = "".join(stream)
    return text, stream.num_tokens, stream.finish_reason, stream.prompt_positions


def answer(handle) -> tuple:
    """A row's streamed text, checked against its result, and the result."""
    text = "".join(handle)
    result = handle.generation
    assert text == result.text
    return text, result.num_tokens, result.finish_reason, result.prompt_positions


def mixed_prompts(contexts, count: int, seed: int = 0) -> list[tuple[list, GenerationOptions]]:
    """Prompts of one or two passages of any kind, each with its own stop strings and length."""
    rng = random.Random(seed)
    kinds = sorted(contexts)
    prompts = []
    for i in range(count):
        chosen = rng.sample(kinds, 2) if i % 3 else [rng.choice(kinds)]
        passages = [contexts[kind][rng.randrange(len(PASSAGES))] for kind in chosen]
        options = GenerationOptions(
            max_new_tokens=rng.randint(1, 24), stop=rng.choice([(), ("o",), ("the",), ("e", "a")])
        )
        prompts.append((qa_parts(passages, rng.choice(QUESTIONS)), options))
    return prompts


@pytest.mark.parametrize("architecture", ["gemma3", "llama"])
def test_greedy_batches_equal_one_at_a_time(architecture):
    """Rows joining a running batch (continuous batching) answer exactly as alone."""
    from memrag.testing import tiny_compressor

    compressor = tiny_compressor(seed=2, architecture=architecture)
    slots = compressor.compress(PASSAGES)
    rng = random.Random(1)
    prompts = [
        (qa_parts([slots[i % 4], PASSAGES[(i + 1) % 4]][: 1 + i % 2], QUESTIONS[i % 3]),
         GenerationOptions(max_new_tokens=rng.randint(1, 30)))
        for i in range(10)
    ]
    expected = [one_at_a_time(compressor, p, o) for p, o in prompts]
    with BatchedGenerator(compressor, max_batch_size=4, batch_window=0.005) as batcher:
        handles = []
        for prompt, options in prompts:
            handles.append(batcher.submit(prompt, options))
            time.sleep(rng.random() * 0.005)  # some join a running batch, some start one
        assert [answer(h) for h in handles] == expected
        stats = batcher.stats()
    assert stats["completed"] == len(prompts) and stats["failed"] == stats["cancelled"] == 0
    assert stats["mean_rows_per_step"] > 1


def test_rows_mix_every_kind_of_memory(compressor, contexts):
    """Embedding slots, K/V memory (exact and pruned) and text fallbacks in the same batches."""
    prompts = mixed_prompts(contexts, 12)
    expected = [one_at_a_time(compressor, p, o)[:3] for p, o in prompts]
    with BatchedGenerator(compressor, max_batch_size=5, batch_window=0.05) as batcher:
        handles = [batcher.submit(p, o) for p, o in prompts]
        assert [answer(h)[:3] for h in handles] == expected
    assert max(h.max_batch_size for h in handles) == 5


def test_mixed_stop_strings_and_token_limits_in_one_batch(compressor, contexts):
    base = qa_parts([contexts["embedding"][0]], QUESTIONS[0])
    unlimited = one_at_a_time(compressor, base, GenerationOptions(max_new_tokens=30))[0]
    stop = next(ch for ch in unlimited[3:] if ch.strip())  # a character the answer reaches
    rows = [
        GenerationOptions(max_new_tokens=30),
        GenerationOptions(max_new_tokens=30, stop=(stop,)),
        GenerationOptions(max_new_tokens=2),
        GenerationOptions(max_new_tokens=7, stop=("never there",)),
        GenerationOptions(max_new_tokens=30, stop=(stop, "zz")),
    ]
    with BatchedGenerator(compressor, max_batch_size=8, batch_window=0.2) as batcher:
        handles = [batcher.submit(base, options) for options in rows]
        results = [answer(h) for h in handles]
    assert all(h.max_batch_size == len(rows) for h in handles)  # they started together
    assert results == [one_at_a_time(compressor, base, options) for options in rows]
    assert results[0][0] == unlimited and stop not in results[1][0]
    assert results[1][2] == "stop" and unlimited.startswith(results[1][0])
    assert results[2][1:3] == (2, "length") and results[3][1] == 7


def test_a_cancelled_row_leaves_and_the_others_go_on(compressor, contexts):
    long_prompt = qa_parts([contexts["kv-exact"][1]], QUESTIONS[1])
    short = [(qa_parts([contexts["embedding"][i]], QUESTIONS[i % 3]), GenerationOptions(max_new_tokens=12)) for i in range(3)]
    expected = [one_at_a_time(compressor, p, o) for p, o in short]
    with BatchedGenerator(compressor, max_batch_size=4, batch_window=0.2) as batcher:
        leaving = batcher.submit(long_prompt, GenerationOptions(max_new_tokens=100_000))
        others = [batcher.submit(p, o) for p, o in short]
        assert next(leaving)  # it is decoding
        leaving.cancel()
        with pytest.raises(RowCancelledError):
            "".join(leaving)
        assert leaving.done and isinstance(leaving.error, RowCancelledError)
        assert [answer(h) for h in others] == expected
        deadline = time.monotonic() + 10
        while batcher.stats()["rows"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.stats()["rows"] == 0 and batcher.stats()["cancelled"] == 1


def test_a_waiting_row_cancelled_ends_at_once(compressor):
    with BatchedGenerator(compressor, max_batch_size=1, batch_window=0) as batcher:
        running = batcher.submit(["The"], GenerationOptions(max_new_tokens=100_000))
        next(running)
        waiting = batcher.submit(["The"], GenerationOptions(max_new_tokens=3))
        waiting.cancel()
        assert waiting.wait(5) and isinstance(waiting.error, RowCancelledError)
        running.cancel()
        assert running.wait(10)


def test_a_failing_row_fails_alone(compressor, contexts):
    from memrag.compressor import CompressorMismatchError
    from memrag.testing import tiny_compressor

    foreign = tiny_compressor(seed=5).compress(PASSAGES[:1])[0]  # another compressor's slots
    whole = contexts["kv-exact"][0]  # and K/V memory missing a layer (a damaged chunk)
    truncated = dataclasses.replace(
        whole, keys=whole.keys[:, :1], values=whole.values[:, :1], offsets=whole.offsets[:, :1]
    )
    healthy = [(qa_parts([contexts[k][i]], QUESTIONS[i % 3]), GenerationOptions(max_new_tokens=9))
               for i, k in enumerate(["embedding", "kv-pruned", "text"])]
    expected = [one_at_a_time(compressor, p, o) for p, o in healthy]
    nan_sampling = GenerationOptions(max_new_tokens=5, temperature=1.0)
    nan_sampling.temperature = float("nan")  # slips past validation: fails while sampling
    failing = [
        (qa_parts([foreign], QUESTIONS[0]), GenerationOptions(max_new_tokens=5), CompressorMismatchError),
        (qa_parts([truncated], QUESTIONS[1]), GenerationOptions(max_new_tokens=5), ValueError),
        (healthy[0][0], nan_sampling, RuntimeError),
    ]
    with BatchedGenerator(compressor, max_batch_size=8, batch_window=0.2) as batcher:
        handles = []
        for (good, options), (bad, bad_options, _) in zip(healthy, failing):
            handles += [batcher.submit(good, options), batcher.submit(bad, bad_options)]
        for handle, (_, _, error) in zip(handles[1::2], failing):
            with pytest.raises(error):
                "".join(handle)
        assert [answer(h) for h in handles[::2]] == expected
        assert batcher.stats()["failed"] == 3
        # The batcher goes on.
        assert answer(batcher.submit(*healthy[1])) == expected[1]


def test_seeded_sampling_does_not_depend_on_the_batch(compressor):
    options = GenerationOptions(max_new_tokens=12, temperature=1.3, top_p=0.9, top_k=50, seed=7)
    with BatchedGenerator(compressor, max_batch_size=4, batch_window=0) as batcher:
        alone = answer(batcher.submit(["The quick"], options))
    with BatchedGenerator(compressor, max_batch_size=4, batch_window=0.2) as batcher:
        handles = [
            batcher.submit(["Paris is"], GenerationOptions(max_new_tokens=12, temperature=1.0)),
            batcher.submit(["The quick"], options),
            batcher.submit(["In 1889"], GenerationOptions(max_new_tokens=5)),
        ]
        together = [answer(h) for h in handles]
    assert together[1] == alone and handles[1].max_batch_size == 3


def test_close_drains_or_cancels_and_answers_every_row_once(compressor):
    batcher = BatchedGenerator(compressor, max_batch_size=2, batch_window=0)
    rows = [batcher.submit(["The"], GenerationOptions(max_new_tokens=5)) for _ in range(3)]
    batcher.close(timeout=30)  # drains: every accepted row finishes
    assert all(row.done and row.error is None for row in rows)
    with pytest.raises(BatcherClosedError):
        batcher.submit(["The"])

    batcher = BatchedGenerator(compressor, max_batch_size=2, batch_window=0)
    rows = [batcher.submit(["The"], GenerationOptions(max_new_tokens=100_000)) for _ in range(3)]
    next(rows[0])
    batcher.close()  # cancels: nothing is left hanging
    assert all(isinstance(row.error, RowCancelledError) for row in rows)
    stats = batcher.stats()
    assert stats["cancelled"] == 3 and stats["rows"] == stats["pending"] == 0


def test_rows_stream_to_asyncio_without_threads(compressor):
    prompt, options = ["Paris is the"], GenerationOptions(max_new_tokens=10)
    expected = one_at_a_time(compressor, prompt, options)

    async def consume(batcher) -> list[str]:
        handle = batcher.submit(prompt, options)
        chunks = [chunk async for chunk in handle]
        await handle.wait_async()
        assert handle.generation.num_tokens == expected[1]
        return chunks

    with BatchedGenerator(compressor, batch_window=0) as batcher:
        chunks = asyncio.run(consume(batcher))
    assert "".join(chunks) == expected[0] and len(chunks) > 1


def test_a_failed_step_fails_its_rows_and_the_batcher_goes_on(compressor, monkeypatch):
    from memrag.batching.state import DecodeState

    real = DecodeState.step
    broken = threading.Event()

    def step(state, decoder):
        if not broken.is_set():
            broken.set()
            raise RuntimeError("device lost")
        return real(state, decoder)

    monkeypatch.setattr(DecodeState, "step", step)
    with BatchedGenerator(compressor, batch_window=0.1) as batcher:
        rows = [batcher.submit(["The"], GenerationOptions(max_new_tokens=4)) for _ in range(2)]
        for row in rows:
            with pytest.raises(RuntimeError, match="device lost"):
                "".join(row)
        assert answer(batcher.submit(["The"], GenerationOptions(max_new_tokens=4)))[1] == 4


def test_bad_settings_are_refused(compressor):
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchedGenerator(compressor, max_batch_size=0)
    with pytest.raises(ValueError, match="batch_window"):
        BatchedGenerator(compressor, batch_window=float("nan"))
    with BatchedGenerator(compressor) as batcher, pytest.raises(TypeError):
        batcher.submit(["The"], {"max_new_tokens": 3})
    with pytest.raises(ValueError, match="temperature"):
        GenerationOptions(temperature=float("nan"))


def test_packed_weights_decode_as_the_default_kernels(compressor):
    from memrag.batching.kernels import PackedLinears, packed_linears_supported

    if not packed_linears_supported(compressor.causal_lm):
        pytest.skip("oneDNN is not available")
    prompts = [(["Paris is"], GenerationOptions(max_new_tokens=15)), (["The quick brown"], GenerationOptions(max_new_tokens=15))]
    results = {}
    for packed in (False, True):
        with BatchedGenerator(compressor, batch_window=0.2, packed_weights=packed) as batcher:
            assert batcher.packed_weights is packed
            results[packed] = [answer(batcher.submit(p, o)) for p, o in prompts]
    assert results[True] == results[False]
    layers = PackedLinears(compressor.causal_lm)
    hidden = torch.randn(3, compressor.hidden_size)
    head = compressor.causal_lm.get_output_embeddings()
    with torch.inference_mode():
        default = head(hidden)
        with compressor.decoder_mode(), layers.active():
            assert "forward" in vars(head)
            fast = head(hidden)
    assert "forward" not in vars(head)  # restored
    torch.testing.assert_close(fast, default, rtol=1e-4, atol=1e-5)
