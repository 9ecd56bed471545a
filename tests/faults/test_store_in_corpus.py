"""Fault injection: a store built inside its own corpus directory never indexes itself."""

from __future__ import annotations

from pathlib import Path

from memrag.indexing import BuildOptions, build_index
from memrag.indexing.corpus import corpus_files
from memrag.store import MemoryStore


def test_a_store_inside_its_corpus_is_skipped_on_every_run(tmp_path: Path) -> None:
    from memrag.testing import tiny_compressor

    compressor = tiny_compressor(seed=0)
    corpus = tmp_path / "docs"
    corpus.mkdir()
    for name, text in (("a.txt", "Paris is in France."), ("b.txt", "Rome is in Italy."), ("c.txt", "Oslo is in Norway.")):
        (corpus / name).write_text(text)
    store = corpus / "store"
    options = BuildOptions(show_progress=False)
    create = {"memory": "embedding", "fidelity": "none"}
    for _ in range(2):  # the second run walks a corpus that now holds the store
        build_index(corpus, store, compressor=compressor, embedder="hashing:32", options=options, create_options=create)
    _, files = corpus_files(corpus)
    assert sorted(f.name for f in files) == ["a.txt", "b.txt", "c.txt"]
    with MemoryStore.open(store, compressor, read_only=True) as opened:
        assert len(opened) == 3
        assert sorted(r.metadata["source_id"] for r in opened.get(opened.db.ids_of_sources(["a.txt", "b.txt", "c.txt"]))) == ["a.txt", "b.txt", "c.txt"]


def test_counts_tell_text_tokens_from_memory_positions(tmp_path: Path) -> None:
    from memrag.testing import tiny_compressor

    compressor = tiny_compressor(seed=0)
    texts = ["Paris is the capital and most populous city of France, on the Seine."] * 2
    with MemoryStore.create(tmp_path / "s", compressor, "hashing:32", memory="kv-pruned:0.25", fidelity="none") as store:
        store.add(texts, ids=["a", "b"])
        info = store.info()
    text_tokens = 2 * len(compressor.tokenizer(texts[0], add_special_tokens=False)["input_ids"])
    assert info["counts"]["tokens"] == text_tokens
    assert info["counts"]["positions"] < text_tokens  # a quarter of the positions are kept
    assert info["memory"]["bytes_per_token"] == info["memory"]["bytes_per_chunk"] * 2 / text_tokens


def test_the_build_progress_counts_chunks_and_projects_the_total() -> None:
    from memrag.indexing.job import BuildReport, estimated_chunks

    report = BuildReport(store="s", backend="local")
    report.documents, report.chunks_total = 1, 784  # one 1 MB document read of 3
    assert estimated_chunks(report, 3) == 784 * 3
    report.documents, report.chunks_total = 3, 790  # all read: exact
    assert estimated_chunks(report, 3) == 790
