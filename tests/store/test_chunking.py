"""Sentence-aware chunking: cuts between sentences, overlaps whole sentences, spans segments."""

from __future__ import annotations

import pytest

from memrag.store.chunking import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_TOKENS, Chunker

SENTENCES = [f"Sentence number {i} tells about river {i} and its bridge." for i in range(40)]
TEXT = " ".join(SENTENCES)


def _sentences_of(text: str) -> list[str]:
    return [s for s in SENTENCES if s in text]


def test_chunks_end_between_sentences_and_share_whole_sentences(compressor) -> None:
    tokenizer = compressor.tokenizer
    per_sentence = len(tokenizer(SENTENCES[0], add_special_tokens=False)["input_ids"])
    chunker = Chunker(tokenizer, chunk_tokens=4 * per_sentence, overlap=2 * per_sentence)
    chunks = chunker.chunk(TEXT)
    assert len(chunks) > 5
    for chunk in chunks:
        assert TEXT[chunk.char_start : chunk.char_end] == chunk.text
        assert chunk.num_tokens <= chunker.chunk_tokens
        # Every chunk is whole sentences: it starts one and ends one.
        assert chunk.text.startswith("Sentence number") and chunk.text.endswith("bridge.")
    for previous, chunk in zip(chunks, chunks[1:]):
        shared = set(_sentences_of(previous.text)) & set(_sentences_of(chunk.text))
        assert len(shared) == 1  # the overlap holds one whole sentence
    covered = set().union(*(_sentences_of(c.text) for c in chunks))
    assert covered == set(SENTENCES)


def test_fixed_windows_cut_mid_sentence_where_sentence_awareness_does_not(compressor) -> None:
    tokenizer = compressor.tokenizer
    per_sentence = len(tokenizer(SENTENCES[0], add_special_tokens=False)["input_ids"])
    size = int(3.5 * per_sentence)
    aware = Chunker(tokenizer, size, 0).chunk(TEXT)
    fixed = Chunker(tokenizer, size, 0, sentence_aware=False).chunk(TEXT)
    assert all(c.text.endswith("bridge.") for c in aware)
    assert not all(c.text.endswith("bridge.") for c in fixed)


def test_a_sentence_longer_than_a_chunk_is_cut_by_tokens(compressor) -> None:
    text = " ".join(f"word{i}" for i in range(300)) + ". Short one."
    chunks = Chunker(compressor.tokenizer, chunk_tokens=40, overlap=5).chunk(text)
    assert len(chunks) > 3 and all(c.num_tokens <= 40 for c in chunks)
    assert chunks[-1].text.endswith("Short one.")


def test_a_chunk_spans_several_segments_and_its_memory_covers_all_of_it(
    tmp_path, compressor
) -> None:
    from memrag.store import MemoryStore

    segment = compressor.config.segment_length
    store = MemoryStore.create(tmp_path / "s", compressor, "hashing:64", fidelity="none")
    assert store.manifest.options.chunk_tokens == DEFAULT_CHUNK_TOKENS
    assert store.manifest.options.chunk_overlap == DEFAULT_CHUNK_OVERLAP
    text = " ".join(SENTENCES[:6])
    (chunk_id,) = store.add([text], ids=["doc"], chunk=True)
    (record,) = store.get([chunk_id])
    tokens = len(compressor.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert record.text == text and tokens > 2 * segment
    assert record.slots.num_tokens == tokens  # every segment of the chunk is in its memory
    assert record.slots.num_slots == sum(record.slots.segment_slot_counts)
    assert len(record.slots.segment_slot_counts) == -(-tokens // segment)
    store.close()


def test_bad_sizes_are_refused(compressor) -> None:
    with pytest.raises(ValueError, match="chunk_tokens"):
        Chunker(compressor.tokenizer, 0)
    with pytest.raises(ValueError, match="overlap"):
        Chunker(compressor.tokenizer, 8, 8)
