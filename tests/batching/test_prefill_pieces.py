"""Long prompts are prefilled in pieces that can be stopped in between; the pieces compute what
one call computes (sliding-window layers included), on both decoding paths."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from batching_helpers import PASSAGES, QUESTIONS

from memrag.batching import BatchedGenerator, RowCancelledError
from memrag.batching.state import DecodeState
from memrag.generation import GenerationOptions, PrefillStoppedError, prefill_ahead
from memrag.prompts import qa_parts

#: Far longer than the tiny model's sliding window (64 positions).
LONG_TEXT = " ".join(PASSAGES * 6)


def _prompt(contexts, kind: str) -> list:
    return qa_parts([contexts[kind][0], LONG_TEXT], QUESTIONS[0])


@pytest.mark.parametrize("kind", ["text", "embedding", "kv-exact", "kv-pruned"])
def test_pieces_compute_what_one_call_computes(compressor, contexts, kind: str) -> None:
    prompt = _prompt(contexts, kind)
    with compressor.decoder_mode() as decoder, torch.inference_mode():
        whole = compressor.build([prompt])
        uncached = whole.inputs_embeds.shape[1] - (
            whole.cache.get_seq_length() if whole.cache else 0
        )
        assert uncached > 3 * 64  # several windows, so the pieces cross window boundaries
        _, expected = DecodeState.prefill(decoder, whole)
        pieces = prefill_ahead(decoder, compressor.build([prompt]), chunk_positions=37)
        assert pieces.cache.get_seq_length() == pieces.inputs_embeds.shape[1] - 1
        state, logits = DecodeState.prefill(decoder, pieces)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert state.columns == whole.inputs_embeds.shape[1]


def test_a_short_prompt_is_left_to_one_call(compressor, contexts) -> None:
    batch = compressor.build([qa_parts([PASSAGES[0]], QUESTIONS[0])])
    with compressor.decoder_mode() as decoder:
        assert prefill_ahead(decoder, batch, chunk_positions=1024) is batch


def test_should_stop_is_asked_between_pieces(compressor, contexts) -> None:
    asked = []

    def stop_at_third() -> bool:
        asked.append(1)
        return len(asked) == 3

    with compressor.decoder_mode() as decoder, torch.inference_mode():
        batch = compressor.build([_prompt(contexts, "text")])
        with pytest.raises(PrefillStoppedError, match="stopped after 64 of"):
            prefill_ahead(decoder, batch, should_stop=stop_at_third, chunk_positions=32)
    assert len(asked) == 3


def test_both_paths_answer_as_the_eval_with_pieces(compressor, contexts, monkeypatch) -> None:
    """The server's paths (stream, batcher) prefill long prompts in pieces; the eval's
    ``generate`` in one call: the answers are the same."""
    options = GenerationOptions(max_new_tokens=12)
    prompts = [_prompt(contexts, kind) for kind in ("text", "kv-exact", "embedding")]
    expected = [g.text for g in compressor.generate(prompts[:1], options)] + [
        compressor.generate([p], options)[0].text for p in prompts[1:]
    ]
    monkeypatch.setattr("memrag.generation.PREFILL_CHUNK_POSITIONS", 40)
    assert ["".join(compressor.stream(p, options)) for p in prompts] == expected
    with BatchedGenerator(compressor, max_batch_size=1, batch_window=0) as batcher:
        assert ["".join(batcher.submit(p, options)) for p in prompts] == expected


class _SlowPieces:
    """Counts the decoder's multi-position calls (prefill pieces) and slows each down."""

    def __init__(self, compressor, monkeypatch, seconds: float) -> None:
        self.calls = 0
        self.started = threading.Event()
        real = compressor.causal_lm.forward

        def forward(*args, **kwargs):
            embeds = kwargs.get("inputs_embeds")
            if embeds is not None and embeds.shape[1] > 1:
                self.calls += 1
                self.started.set()
                time.sleep(seconds)
            return real(*args, **kwargs)

        monkeypatch.setattr(compressor.causal_lm, "forward", forward)


def test_a_row_cancelled_during_its_prefill_stops_within_one_piece(
    compressor, contexts, monkeypatch
):
    monkeypatch.setattr("memrag.generation.PREFILL_CHUNK_POSITIONS", 8)
    slow = _SlowPieces(compressor, monkeypatch, seconds=0.05)
    with BatchedGenerator(compressor, max_batch_size=2, batch_window=0) as batcher:
        handle = batcher.submit(_prompt(contexts, "text"), GenerationOptions(max_new_tokens=3))
        assert slow.started.wait(10)
        handle.cancel()
        assert handle.wait(2), "the prefill was not stopped"
        assert isinstance(handle.error, RowCancelledError) and "prefill" in str(handle.error)
        assert slow.calls < 20  # of about 60 pieces
        assert batcher.stats()["cancelled"] == 1 and batcher.stats()["rows"] == 0
        # The batcher goes on.
        monkeypatch.undo()
        assert "".join(batcher.submit(["The"], GenerationOptions(max_new_tokens=2))) is not None


def test_a_stream_cancelled_during_its_prefill_stops_within_one_piece(
    compressor, contexts, monkeypatch
):
    monkeypatch.setattr("memrag.generation.PREFILL_CHUNK_POSITIONS", 8)
    slow = _SlowPieces(compressor, monkeypatch, seconds=0.05)
    stream = compressor.stream(_prompt(contexts, "text"), GenerationOptions(max_new_tokens=3))
    pieces: list = []
    consumer = threading.Thread(target=lambda: pieces.append(list(stream)), daemon=True)
    consumer.start()
    assert slow.started.wait(10)
    time.sleep(0.1)
    started = time.monotonic()
    stream.cancel()  # from another thread, while the consumer waits for the first piece
    consumer.join(5)
    assert not consumer.is_alive(), "cancelling the stream did not stop its prefill"
    assert time.monotonic() - started < 2 and slow.calls < 20
    assert pieces == [[]]
    stream.close()


def test_a_long_kv_prompt_joining_with_others_is_prefilled_alone_in_pieces(compressor, contexts, monkeypatch):
    """Several K/V prompts are spliced in one pass; a long one is prefilled on its own, so a
    cancel reaches it between pieces, and every answer is still the one-at-a-time answer."""
    monkeypatch.setattr("memrag.generation.PREFILL_CHUNK_POSITIONS", 40)
    options = GenerationOptions(max_new_tokens=6)
    long_kv = _prompt(contexts, "kv-exact")
    short_kv = qa_parts([contexts["kv-exact"][1]], QUESTIONS[1])
    expected = ["".join(compressor.stream(p, options)) for p in (long_kv, short_kv)]
    with BatchedGenerator(compressor, max_batch_size=4, batch_window=0.2) as batcher:
        handles = [batcher.submit(p, options) for p in (long_kv, short_kv)]
        assert ["".join(h) for h in handles] == expected
        assert batcher.stats()["prefills"] == 2
