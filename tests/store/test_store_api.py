"""MemoryStore API: add / get / search / delete / filters / chunking / fidelity / mismatches."""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from memrag.compressor import CompressorMismatchError
from memrag.memory.slots import Slots
from memrag.splice import Task
from memrag.store import (
    EmbedderMismatchError,
    HashingEmbedder,
    InvalidDocumentsError,
    MemoryStore,
    StoreExistsError,
    StoreReadOnlyError,
)
from memrag.store.fidelity import FidelityScorer

TEXTS = [
    "Paris is the capital and most populous city of France.",
    "The Eiffel Tower was completed in 1889 for the World's Fair.",
    "Memory slots compress a document into a few vectors for a frozen decoder.",
    "The quick brown fox jumps over the lazy dog.",
]


@dataclass
class Doc:
    """A LangChain-like document."""

    page_content: str
    metadata: dict = field(default_factory=dict)
    id: str | None = None


@pytest.fixture
def store(tmp_path: Path, compressor) -> MemoryStore:
    s = MemoryStore.create(tmp_path / "store", compressor, "hashing:64")
    s.add(
        TEXTS,
        ids=["paris", "eiffel", "slots", "fox"],
        metadatas=[{"i": i, "topic": t} for i, t in enumerate("ggmm")],
    )
    yield s
    s.close()


def test_create_writes_the_documented_layout(tmp_path: Path, compressor) -> None:
    with MemoryStore.create(tmp_path / "s", compressor, "hashing:32") as s:
        s.add(["hello world"], ids=["h"])
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert {"manifest.json", "store.sqlite", "index", "shards"} <= set(names)
    assert [p.suffix for p in (tmp_path / "s" / "shards").iterdir()] == [".safetensors"]
    assert sorted(p.suffix for p in (tmp_path / "s" / "index").iterdir()) == [".faiss", ".json"]
    assert not list((tmp_path / "s").rglob("*.pkl")) and not list(
        (tmp_path / "s").rglob("*.pickle")
    )
    info = MemoryStore.open(tmp_path / "s", read_only=True).info()
    manifest = info["manifest"]
    assert manifest["compressor"]["fingerprint"] == compressor.fingerprint
    assert manifest["embedder"] == {"id": "hashing:32", "dimension": 32}
    assert manifest["index"]["type"] == "flat" and manifest["options"]["slot_dtype"] == "float16"
    assert manifest["counts"]["chunks"] == 1


def test_get_returns_requested_order_and_skips_unknown(store: MemoryStore) -> None:
    records = store.get(["fox", "missing", "paris", "fox"])
    assert [r.id for r in records] == ["fox", "paris"]
    assert records[1].text == TEXTS[0]
    assert records[1].metadata == {"i": 0, "topic": "g"}
    assert store.get([]) == []
    assert "paris" in store and "nope" not in store and len(store) == 4


def test_slots_round_trip_as_float16(store: MemoryStore, compressor) -> None:
    (expected,) = compressor.compress([TEXTS[1]])
    (record,) = store.get(["eiffel"])
    assert isinstance(record.slots, Slots)
    assert record.slots.tensor.dtype == torch.float16
    assert record.slots.fingerprint == compressor.fingerprint
    assert record.slots.segment_slot_counts == expected.segment_slot_counts
    assert record.slots.num_tokens == expected.num_tokens
    torch.testing.assert_close(record.slots.tensor, expected.tensor.to(torch.float16))
    assert store.get(["eiffel"], with_slots=False)[0].slots is None
    # The stored slots splice into the decoder like fresh ones.
    batch = compressor.build([[record.slots, Task.RECONSTRUCT]], [TEXTS[1]])
    assert torch.isfinite(compressor.decoder_forward(batch).loss)


def test_float32_slots_are_exact(tmp_path: Path, compressor) -> None:
    with MemoryStore.create(tmp_path / "s", compressor, "hashing:32", slot_dtype="float32") as s:
        s.add([TEXTS[0]], ids=["a"])
        (record,) = s.get(["a"])
    (expected,) = compressor.compress([TEXTS[0]])
    assert torch.equal(record.slots.tensor, expected.tensor)


def test_search_scores_and_k(store: MemoryStore) -> None:
    results = store.search("capital city of France Paris", k=2)
    assert results[0].id == "paris"
    assert len(results) == 2 and results[0].score >= results[1].score
    assert all(r.slots is not None for r in results)
    assert len(store.search("anything", k=50)) == 4
    assert store.search("anything", k=0) == []
    by_vector = store.search_by_vector(
        store.embedder.embed_query("Eiffel Tower 1889"), k=1, with_slots=False
    )
    assert by_vector[0].id == "eiffel" and by_vector[0].slots is None
    with pytest.raises(ValueError, match="dimension"):
        store.search_by_vector(np.zeros(7), k=1)


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"topic": "g"}, {"paris", "eiffel"}),
        ({"topic": {"$in": ["m"]}}, {"slots", "fox"}),
        ({"i": {"$gte": 1, "$lt": 3}}, {"eiffel", "slots"}),
        ({"$or": [{"i": 0}, {"i": 3}]}, {"paris", "fox"}),
        ({"topic": {"$ne": "g"}}, {"slots", "fox"}),
        ({"i": {"$nin": [0, 1]}}, {"slots", "fox"}),
        ({"missing": {"$exists": False}}, {"paris", "eiffel", "slots", "fox"}),
        ({"topic": "nothing"}, set()),
    ],
)
def test_metadata_filters(store: MemoryStore, where: dict, expected: set) -> None:
    assert {r.id for r in store.search("document", k=10, filter=where)} == expected


def test_filter_distinguishes_types_and_rejects_bad_filters(tmp_path: Path, compressor) -> None:
    with MemoryStore.create(tmp_path / "s", compressor, "hashing:32") as s:
        s.add(
            ["one", "two", "three"],
            ids=["a", "b", "c"],
            metadatas=[{"v": True}, {"v": 1}, {"v": None}],
        )
        assert {r.id for r in s.search("x", k=5, filter={"v": True})} == {"a"}
        assert {r.id for r in s.search("x", k=5, filter={"v": 1})} == {"b"}
        assert {r.id for r in s.search("x", k=5, filter={"v": None})} == {"c"}
        with pytest.raises(ValueError, match="unknown filter operator"):
            s.search("x", filter={"v": {"$regex": "a"}})
        with pytest.raises(ValueError, match="values must be"):
            s.search("x", filter={"v": [1, 2]})


def test_readding_an_id_replaces_it(store: MemoryStore) -> None:
    store.add(
        ["A totally different text about rivers and bridges."],
        ids=["paris"],
        metadatas=[{"new": True}],
    )
    (record,) = store.get(["paris"])
    assert record.text.startswith("A totally different") and record.metadata == {"new": True}
    assert len(store) == 4
    top = store.search("capital city of France Paris", k=4)
    assert all(r.text != TEXTS[0] for r in top)


def test_delete_ignores_unknown_ids(store: MemoryStore) -> None:
    assert store.delete(["paris", "unknown"]) == 1
    assert store.delete(["unknown"]) == 0
    assert store.delete([]) == 0
    assert store.get(["paris"]) == []
    assert "paris" not in {r.id for r in store.search("capital of France", k=4)}
    assert len(store) == 3


def test_documents_ids_and_metadata_round_trip(tmp_path: Path, compressor) -> None:
    metadata = {"id": 1, "score": 0.5, "tags": ["a", "b"], "nested": {"x": None}, "flag": False}
    with MemoryStore.create(tmp_path / "s", compressor, "hashing:32") as s:
        ids = s.add([Doc("first doc", metadata, id="d1"), Doc("second doc")])
        assert ids[0] == "d1" and len(ids[1]) == 32  # generated UUID
        assert s.get(["d1"])[0].metadata == metadata
        assert s.get([ids[1]])[0].metadata == {}
        assert s.add([]) == []


@pytest.mark.parametrize(
    ("docs", "kwargs", "message"),
    [
        (["ok", "   \n"], {}, r"#1 .*empty or whitespace-only text"),
        (["ok", ""], {}, r"#1 .*empty"),
        (["a", "b"], {"ids": ["x", "x"]}, r"#1 \(id 'x'\): duplicate id \(also at #0\)"),
        (["a", 3], {}, r"#1 .*text must be a string, got int"),
        (
            ["a"],
            {"metadatas": [{"when": datetime.date(2020, 1, 1)}]},
            r"metadata field 'when' has type date",
        ),
        (["a"], {"metadatas": [{"raw": b"\x00"}]}, r"metadata field 'raw' has type bytes"),
        (["a"], {"metadatas": [{"x": math.nan}]}, r"JSON cannot represent"),
        (["a"], {"metadatas": [{1: "x"}]}, r"metadata key 1 is not a string"),
        (["a"], {"metadatas": ["not a dict"]}, r"metadata must be a JSON object"),
    ],
)
def test_bad_documents_are_refused_and_nothing_is_written(
    tmp_path: Path, compressor, docs: list, kwargs: dict, message: str
) -> None:
    with MemoryStore.create(tmp_path / "s", compressor, "hashing:32") as s:
        with pytest.raises(InvalidDocumentsError, match=message):
            s.add(docs, **kwargs)
        assert len(s) == 0


def test_length_mismatch_is_an_error(store: MemoryStore) -> None:
    with pytest.raises(ValueError, match="2 documents but 1 ids"):
        store.add(["a", "b"], ids=["x"])


def test_chunked_documents_keep_source_and_offsets(tmp_path: Path, compressor) -> None:
    text = " ".join(f"word{i}" for i in range(120))
    with MemoryStore.create(
        tmp_path / "s", compressor, "hashing:32", chunk_tokens=24, chunk_overlap=4
    ) as s:
        ids = s.add([text], ids=["long"], metadatas=[{"lang": "en"}], chunk=True)
        assert len(ids) > 3 and ids[:2] == ["long#0", "long#1"]
        records = s.get(ids)
        for index, record in enumerate(records):
            meta = record.metadata
            assert (
                meta["source_id"] == "long"
                and meta["chunk_index"] == index
                and meta["lang"] == "en"
            )
            assert text[meta["char_start"] : meta["char_end"]] == record.text
        # Consecutive chunks overlap, and together they cover the document.
        assert records[1].metadata["char_start"] < records[0].metadata["char_end"]
        assert records[0].metadata["char_start"] == 0 and records[-1].metadata["char_end"] == len(
            text
        )
        # Re-adding a shorter version removes the chunks that no longer exist.
        short = s.add([text[:60]], ids=["long"], chunk=True)
        assert len(short) < len(ids) and short == ids[: len(short)]
        assert s.get(ids[len(short) :]) == [] and len(s) == len(short)
        with pytest.raises(InvalidDocumentsError, match="reserved"):
            s.add(["x y"], metadatas=[{"source_id": "z"}], chunk=True)


def test_fidelity_flags_low_scores(tmp_path: Path, compressor) -> None:
    with MemoryStore.create(tmp_path / "s", compressor, "hashing:32", fidelity_threshold=0.0) as s:
        s.add(TEXTS, ids=["a", "b", "c", "d"])
        records = s.get(["a", "b", "c", "d"])
        assert all(0.0 < r.fidelity <= 1.0 and not r.use_text for r in records)
        assert all(r.context() is r.slots for r in records)
        # The untrained tiny compressor reconstructs nothing well: a threshold of 0.5 flags all.
        assert s.set_fidelity_threshold(0.5) == 4
        assert all(r.use_text and r.context() == r.text for r in s.get(["a", "b", "c", "d"]))
    reopened = MemoryStore.open(tmp_path / "s", read_only=True)
    assert reopened.manifest.options.fidelity_threshold == 0.5


def test_fidelity_can_be_turned_off(tmp_path: Path, compressor) -> None:
    with MemoryStore.create(tmp_path / "s", compressor, "hashing:32", fidelity="none") as s:
        s.add(["x y z"], ids=["a"])
        (record,) = s.get(["a"])
    assert record.fidelity is None and not record.use_text


def test_fidelity_equals_the_decoders_reconstruction_loss(compressor) -> None:
    texts = [TEXTS[0], TEXTS[2], "short"]
    slots = [s.to(dtype=torch.float16) for s in compressor.compress(texts)]
    scores = FidelityScorer(compressor, sample_tokens=None).score(texts, slots)
    for text, memory, score in zip(texts, slots, scores):
        with torch.no_grad():
            batch = compressor.build([[memory, Task.RECONSTRUCT]], [text])
            loss = float(compressor.decoder_forward(batch).loss)
        assert score == pytest.approx(math.exp(-loss), rel=1e-4)
    # A tiny logits budget splits the batch into single rows without changing the scores.
    single = FidelityScorer(compressor, sample_tokens=None, logits_budget=1).score(texts, slots)
    assert single == pytest.approx(scores, rel=1e-5)


def test_sampled_fidelity_scores_every_row(compressor) -> None:
    long_text = " ".join(TEXTS * 3)
    texts = [long_text, "short", TEXTS[1]]
    slots = [s.to(dtype=torch.float16) for s in compressor.compress(texts)]
    full = FidelityScorer(compressor, sample_tokens=None).score(texts, slots)
    sampled = FidelityScorer(compressor, sample_tokens=4).score(texts, slots)
    assert all(0.0 < value < 1.0 for value in sampled)  # no row is left without scored tokens
    # A few evenly spaced tokens estimate the mean NLL of the whole chunk.
    for a, b in zip(full, sampled):
        assert abs(math.log(a) - math.log(b)) < 0.35 * abs(math.log(a))
    alone = [
        FidelityScorer(compressor, sample_tokens=4).score([t], [m])[0] for t, m in zip(texts, slots)
    ]
    assert alone == pytest.approx(sampled, rel=1e-4)


def test_open_with_another_compressor_names_both_fingerprints(
    tmp_path: Path, store: MemoryStore
) -> None:
    from memrag.testing import tiny_compressor

    other = tiny_compressor(seed=3)
    with pytest.raises(CompressorMismatchError) as info:
        MemoryStore.open(store.path, other)
    assert store.fingerprint in str(info.value) and other.fingerprint in str(info.value)


def test_slots_of_another_compressor_are_refused(store: MemoryStore) -> None:
    from memrag.store.processing import ChunkInput, ChunkProcessor
    from memrag.testing import tiny_compressor

    batch = ChunkProcessor(tiny_compressor(seed=3), store.embedder).process(
        [ChunkInput("z", "text")]
    )
    with pytest.raises(CompressorMismatchError, match="cannot go into"):
        store.write(batch)


def test_open_with_another_embedder_is_refused(store: MemoryStore) -> None:
    with pytest.raises(EmbedderMismatchError, match="hashing:64"):
        MemoryStore.open(store.path, embedder=HashingEmbedder(32))


def test_create_refuses_an_existing_store(store: MemoryStore, compressor) -> None:
    with pytest.raises(StoreExistsError):
        MemoryStore.create(store.path, compressor, "hashing:64")


def test_read_only_store_refuses_writes(store: MemoryStore) -> None:
    reader = MemoryStore.open(store.path, read_only=True)
    with pytest.raises(StoreReadOnlyError):
        reader.add(["x"])
    with pytest.raises(StoreReadOnlyError):
        reader.delete(["paris"])
    assert reader.search("Eiffel Tower", k=1)[0].id == "eiffel"


def test_open_without_a_loadable_compressor_explains(store: MemoryStore) -> None:
    reader = MemoryStore.open(store.path, read_only=True)
    with pytest.raises(CompressorMismatchError, match="pass compressor="):
        _ = reader.compressor
