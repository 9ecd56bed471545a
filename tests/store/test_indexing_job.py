"""The corpus reader, the chunker and the local indexing job, with the bad input they survive."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from store_helpers import sentence, write_corpus

from memrag.data.readers import BadRowError
from memrag.indexing import BuildOptions, CorpusReader, build_index, count_documents
from memrag.store import MemoryStore
from memrag.store.chunking import Chunker

QUIET = BuildOptions(batch_chunks=8, show_progress=False)


def _bad_corpus(root: Path, segment_tokens_text: str) -> Path:
    """A directory with every kind of bad input next to good documents."""
    root.mkdir()
    lines = [
        json.dumps(
            {
                "id": "good1",
                "text": "Paris is the capital of France.",
                "metadata": {"year": 2020, "tags": ["a"]},
            }
        ),
        json.dumps({"id": "empty", "text": ""}),
        json.dumps({"id": "blank", "text": "  \n\t "}),
        "{this is not json",
        json.dumps({"id": "good1", "text": "a duplicate id"}),
        json.dumps({"id": "nometa", "text": "metadata is a string", "metadata": "oops"}),
        json.dumps(
            {"id": "reserved", "text": "uses a reserved key", "metadata": {"source_id": "x"}}
        ),
        json.dumps({"id": ["list"], "text": "bad id type"}),
        json.dumps({"id": "notext", "body": "no text field"}),
        json.dumps({"id": "numtext", "text": 42}),
        json.dumps(
            {
                "id": 7,
                "text": "An integer id and a title.",
                "title": "Seven",
                "metadata": {"score": 0.5, "ok": True},
            }
        ),
        json.dumps({"id": "long", "text": segment_tokens_text}),
    ]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    bad_utf8 = b'{"id": "latin1", "text": "caf\xe9"}\n'
    (root / "docs.jsonl").write_bytes(
        data + bad_utf8 + b'{"id": "good2", "text": "The last good row."}\n'
    )
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    (root / "notes.txt").write_bytes(
        "Notes about the Eiffel Tower, built in 1889. Caf".encode() + b"\xe9 au lait."
    )
    (root / "empty.txt").write_text("   \n")
    sub = root / "sub"
    sub.mkdir()
    (sub / "more.md").write_text("# More\nA markdown file in a subdirectory.")
    (root / ".hidden.txt").write_text("ignored")
    with gzip.open(root / "extra.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "gz1", "text": "A gzip-compressed row."}) + "\n")
    return root


def test_corpus_reader_skips_and_reports_every_kind_of_bad_input(tmp_path: Path) -> None:
    corpus = _bad_corpus(tmp_path / "corpus", "word " * 50)
    reader = CorpusReader(corpus)
    documents = {d.id: d for d in reader}
    assert sorted(documents) == ["7", "good1", "good2", "gz1", "long", "notes.txt", "sub/more.md"]
    assert documents["7"].metadata == {"title": "Seven", "score": 0.5, "ok": True}
    assert documents["good1"].metadata == {"year": 2020, "tags": ["a"]}
    assert documents["sub/more.md"].metadata == {"path": "sub/more.md"}
    assert "\ufffd" in documents["notes.txt"].text
    report = reader.report
    reasons = {row.line: row.reason for row in report.rows.bad_rows}
    assert reasons == {
        2: "empty or whitespace-only text",
        3: "empty or whitespace-only text",
        4: "invalid JSON (Expecting property name enclosed in double quotes)",
        5: f"duplicate id 'good1' (first seen at {corpus / 'docs.jsonl'}:1); kept the first",
        6: "field 'metadata' must be a JSON object, got str",
        7: "metadata key 'source_id' is reserved by memrag "
        "(reserved: source_id, chunk_index, char_start, char_end)",
        8: "field 'id' must be a non-empty string or an integer, got ['list']",
        9: "missing field 'text'",
        10: "field 'text' must be a string, got int",
        13: "invalid UTF-8 (invalid continuation byte)",
    }
    assert all(row.path == corpus / "docs.jsonl" for row in report.rows.bad_rows)
    skipped = dict(report.skipped_files)
    assert skipped == {
        str(corpus / "empty.txt"): "empty or whitespace-only file",
        str(corpus / "image.png"): "binary file (NUL bytes), not text",
    }
    assert [w for w, _ in report.warnings] == [str(corpus / "notes.txt")]
    assert "invalid UTF-8 at byte 48" in report.warnings[0][1]
    assert report.rows.rows_read == report.rows.rows_ok + report.rows.rows_skipped
    assert count_documents(corpus) >= len(documents)


def test_corpus_reader_can_raise_at_the_first_bad_row(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        json.dumps({"id": "a", "text": "ok"}) + "\n" + json.dumps({"id": "b", "text": " "}) + "\n"
    )
    with pytest.raises(BadRowError, match=r"c\.jsonl:2: empty or whitespace-only text"):
        list(CorpusReader(corpus, on_error="raise"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CorpusReader(tmp_path / "missing")


def test_build_indexes_the_good_documents_and_reports_the_rest(tmp_path: Path, compressor) -> None:
    long_text = " ".join(sentence(i, 12) for i in range(40))
    assert (
        len(compressor.tokenizer(long_text)["input_ids"]) > 100 * compressor.config.segment_length
    )
    corpus = _bad_corpus(tmp_path / "corpus", long_text)
    report = build_index(
        corpus, tmp_path / "store", compressor=compressor, embedder="hashing:64", options=QUIET
    )
    assert (
        report.documents == 7 and report.corpus.skipped == 12 and len(report.corpus.warnings) == 1
    )
    summary = report.summary()
    assert "docs.jsonl:4: invalid JSON" in summary and "image.png: binary file" in summary
    store = MemoryStore.open(tmp_path / "store", read_only=True)
    sources = {r.metadata["source_id"] for r in store.search("anything", k=1000, with_slots=False)}
    assert sources == {"7", "good1", "good2", "gz1", "long", "notes.txt", "sub/more.md"}
    long_chunks = store.get([f"long#{i}" for i in range(1000)])
    # Chunks of the default length span many of the tiny compressor's segments.
    segment = compressor.config.segment_length
    assert len(long_chunks) > 2 and max(c.slots.num_tokens for c in long_chunks) > 4 * segment
    assert all(
        c.metadata["source_id"] == "long"
        and long_text[c.metadata["char_start"] : c.metadata["char_end"]] == c.text
        for c in long_chunks
    )
    assert report.chunks_written == report.chunks_total == len(store)
    assert store.verify().ok


def test_rebuild_skips_unchanged_and_updates_changed_documents(tmp_path: Path, compressor) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 10)
    first = build_index(
        corpus, tmp_path / "store", compressor=compressor, embedder="hashing:64", options=QUIET,
        create_options={"chunk_tokens": 24},
    )
    assert first.chunks_written == first.chunks_total > 10
    again = build_index(corpus, tmp_path / "store", compressor=compressor, options=QUIET)
    assert again.chunks_written == 0 and again.chunks_unchanged == first.chunks_total
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    long_doc = max(rows, key=lambda r: len(r["text"]))
    long_doc["text"] = long_doc["text"][:30]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    third = build_index(corpus, tmp_path / "store", compressor=compressor, options=QUIET)
    assert third.chunks_written == 1 and third.chunks_removed > 0
    store = MemoryStore.open(tmp_path / "store", read_only=True)
    assert store.get([f"{long_doc['id']}#0"])[0].text == long_doc["text"]
    assert len(store) == third.chunks_total and store.verify().ok


def test_build_refuses_a_store_of_another_compressor(tmp_path: Path, compressor) -> None:
    from memrag.compressor import CompressorMismatchError
    from memrag.testing import tiny_compressor

    corpus = write_corpus(tmp_path / "corpus.jsonl", 2)
    build_index(
        corpus, tmp_path / "store", compressor=compressor, embedder="hashing:64", options=QUIET
    )
    other = tiny_compressor(seed=5)
    with pytest.raises(CompressorMismatchError, match=compressor.fingerprint):
        build_index(corpus, tmp_path / "store", compressor=other, options=QUIET)
    with MemoryStore.open(tmp_path / "store", compressor) as opened:
        with pytest.raises(CompressorMismatchError, match=other.fingerprint):
            build_index(corpus, opened, compressor=other, options=QUIET)


def test_build_with_an_hnsw_index_and_options(tmp_path: Path, compressor) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 6)
    build_index(
        corpus,
        tmp_path / "store",
        compressor=compressor,
        embedder="hashing:64",
        options=QUIET,
        create_options={
            "index": "hnsw",
            "index_options": {"hnsw_m": 8},
            "chunk_tokens": 12,
            "chunk_overlap": 0,
        },
    )
    store = MemoryStore.open(tmp_path / "store", read_only=True)
    assert store.info()["index"]["structure"] == "hnsw" and store.manifest.index.hnsw_m == 8
    assert all(r.slots.num_tokens <= 12 for r in store.search("Document", k=100))


def test_chunker_windows_offsets_and_overlap(compressor) -> None:
    text = "  " + " ".join(f"token{i}" for i in range(60)) + "  "
    chunker = Chunker(compressor.tokenizer, chunk_tokens=20, overlap=5)
    chunks = chunker.chunk(text)
    assert len(chunks) > 2
    for previous, chunk in zip(chunks, chunks[1:]):
        assert chunk.char_start < previous.char_end  # overlapping windows cover the text
    for chunk in chunks:
        assert text[chunk.char_start : chunk.char_end] == chunk.text == chunk.text.strip()
        assert (
            chunk.num_tokens
            == len(compressor.tokenizer(chunk.text, add_special_tokens=False)["input_ids"])
            <= 20
        )
    assert chunks[0].char_start == 2 and chunks[-1].char_end == len(text) - 2
    assert chunker.chunk("   ") == [] and chunker.chunk("") == []
    assert [c.text for c in chunker.chunk("short text")] == ["short text"]
    with pytest.raises(ValueError, match="overlap"):
        Chunker(compressor.tokenizer, chunk_tokens=4, overlap=4)
