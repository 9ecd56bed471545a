"""Dense, lexical and hybrid search, the lexical index's upkeep, and reranking by memory."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from memrag.store import MemoryStore
from memrag.store.lexical import match_expression, query_terms
from memrag.store.retrieval import SearchSettings, reciprocal_rank_fusion
from memrag.store.verify import verify_store

DOCS = {
    "spree": ("The Spree is the river that flows through Berlin.", {"lang": "en", "n": 1}),
    "seine": ("The Seine flows through Paris, the capital of France.", {"lang": "en", "n": 2}),
    "tower": ("The Eiffel Tower was completed in 1889.", {"lang": "en", "n": 3}),
    "fluss": ("Die Spree fliesst durch Berlin.", {"lang": "de", "n": 4}),
    "alps": ("Mountains of the Alps hold glaciers and lakes.", {"lang": "en", "n": 5}),
}


@pytest.fixture
def store(tmp_path: Path, compressor):
    opened = MemoryStore.create(
        tmp_path / "s", compressor, "hashing:64", memory="kv-exact", fidelity="none"
    )
    opened.add(
        [text for text, _ in DOCS.values()],
        ids=list(DOCS),
        metadatas=[meta for _, meta in DOCS.values()],
    )
    yield opened
    opened.close()


def _ids(records) -> list[str]:
    return [r.id for r in records]


def test_every_mode_finds_the_chunk_and_filters_apply_to_each(store) -> None:
    for mode in ("dense", "lexical", "hybrid"):
        found = store.search("Which river flows through Berlin?", k=5, mode=mode, with_slots=False)
        assert found and len(set(_ids(found))) == len(found)
        scores = [r.score for r in found]
        assert scores == sorted(scores, reverse=True)
        german = store.search("Spree Berlin", k=5, mode=mode, filter={"lang": "de"})
        assert _ids(german) == ["fluss"]
        assert store.search("Spree", k=5, mode=mode, filter={"n": {"$gt": 99}}) == []
    lexical = store.search("Eiffel tower 1889", k=5, mode="lexical", with_slots=False)
    assert _ids(lexical)[0] == "tower" and "alps" not in _ids(lexical)
    # Porter stemming: "flowing" finds "flows"; stop words alone find nothing.
    assert {"spree", "seine"} <= set(_ids(store.search("flowing", k=5, mode="lexical")))
    assert store.search("the of and", k=5, mode="lexical") == []
    assert store.search('"OR" NEAR(* -', k=5, mode="lexical") == []  # no FTS5 syntax leaks


def test_hybrid_fuses_both_lists_by_reciprocal_rank(store) -> None:
    query = "Eiffel Tower completed"
    dense = _ids(store.search(query, k=5, mode="dense", with_slots=False))
    lexical = _ids(store.search(query, k=5, mode="lexical", with_slots=False))
    hybrid = store.search(query, k=5, mode="hybrid", with_slots=False)
    expected = {}
    for ranked in (dense, lexical):
        for rank, item in enumerate(ranked, start=1):
            expected[item] = expected.get(item, 0.0) + 1 / (60 + rank)
    assert {r.id: pytest.approx(r.score) for r in hybrid} == expected
    only_dense = store.search(query, k=5, mode="hybrid", weights=(1, 0), with_slots=False)
    assert _ids(only_dense) == dense
    only_lexical = store.search(query, k=5, mode="hybrid", weights="0,1", with_slots=False)
    assert _ids(only_lexical) == lexical


def test_fusion_ties_keep_the_first_lists_order() -> None:
    fused = reciprocal_rank_fusion([[(1, 0.9), (2, 0.8)], [(2, 5.0), (1, 4.0)]], [1.0, 1.0], 2)
    assert [item for item, _ in fused] == [1, 2]
    assert reciprocal_rank_fusion([[(1, 0.9)], [(3, 1.0)]], [0.0, 2.0], 5) == [(3, 2 / 61)]


@pytest.mark.parametrize(
    ("mode", "weights", "message"),
    [
        ("semantic", None, "unknown search mode 'semantic'"),
        ("hybrid", (1.0,), "two numbers"),
        ("hybrid", "a,b", "two numbers"),
        ("hybrid", (-1.0, 1.0), "dense_weight must be a finite number >= 0"),
        ("hybrid", (1.0, float("nan")), "lexical_weight must be a finite number >= 0"),
        ("hybrid", (0.0, 0.0), "at least one list"),
    ],
)
def test_bad_modes_and_weights_are_refused(store, mode, weights, message) -> None:
    with pytest.raises(ValueError, match=message):
        SearchSettings.parse(mode, weights)
    with pytest.raises(ValueError, match=message):
        store.search("river", k=2, mode=mode, weights=weights)
    with pytest.raises(ValueError, match="rerank"):
        store.search("river", k=2, rerank=-1)


def test_query_terms_are_words_without_stop_words() -> None:
    assert query_terms("What is the capital of France? France!") == ["capital", "france"]
    assert match_expression("the a of") is None
    assert match_expression('say "hi"') == '"say" OR "hi"'


def test_the_lexical_index_follows_adds_deletes_replacements_and_compaction(store) -> None:
    assert _ids(store.search("Seine", k=5, mode="lexical")) == ["seine"]
    store.delete(["seine"])
    assert store.search("Seine", k=5, mode="lexical") == []
    store.add(["The Danube flows through Vienna."], ids=["spree"])  # replaces a chunk
    assert _ids(store.search("Danube", k=5, mode="lexical")) == ["spree"]
    assert "spree" not in _ids(store.search("Berlin", k=5, mode="lexical"))
    store.compact()
    assert _ids(store.search("Danube Vienna", k=5, mode="lexical")) == ["spree"]
    assert store.db.lexical_problems() == [] and verify_store(store.path).ok


def test_a_failed_write_leaves_the_lexical_index_as_it_was(store, monkeypatch) -> None:
    from memrag.store.database import Database

    real = Database.insert_chunks

    def insert_then_fail(conn, chunks):
        real(conn, chunks)  # the rows (and, by trigger, their lexical entries) are in ...
        raise RuntimeError("disk full")  # ... when the transaction fails

    monkeypatch.setattr(Database, "insert_chunks", staticmethod(insert_then_fail))
    with pytest.raises(RuntimeError, match="disk full"):
        store.add(["Glaciers of Iceland melt."], ids=["ice"])
    monkeypatch.undo()
    assert "ice" not in _ids(store.search("Iceland glaciers", k=5, mode="lexical"))
    assert store.db.lexical_problems() == [] and verify_store(store.path).ok


def _strip_lexical_index(path: Path) -> None:
    """Makes the store look like one made before memrag kept a lexical index."""
    from memrag.store.lexical import DROP

    with sqlite3.connect(path / "store.sqlite") as conn:
        for statement in DROP:
            conn.execute(statement)


def test_an_old_store_gains_the_index_on_open_or_repair(store, caplog) -> None:
    path = store.path
    store.close()
    _strip_lexical_index(path)
    report = verify_store(path)
    assert "lexical" in report.parts() and "missing" in report.summary()
    old = MemoryStore.open(path, read_only=True)
    with caplog.at_level("WARNING"):
        assert _ids(old.search("Eiffel", k=1, with_slots=False)) == _ids(
            old.search("Eiffel", k=1, mode="dense", with_slots=False)
        )
    assert "no lexical index" in caplog.text and "--repair" in caplog.text
    with pytest.raises(Exception, match="no lexical index"):
        old.search("Eiffel", k=1, mode="lexical")
    old.close()
    from memrag.store.repair import repair_store

    repaired = repair_store(path)
    assert repaired.lexical_rebuilt and repaired.after.ok
    assert _ids(MemoryStore.open(path, read_only=True).search("Eiffel", k=1, mode="lexical")) == [
        "tower"
    ]
    _strip_lexical_index(path)
    with MemoryStore.open(path) as writable:  # opening for writing builds it, memory untouched
        assert writable.db.lexical_problems() == []
        assert _ids(writable.search("Danube Seine", k=1, mode="lexical")) == ["seine"]


def test_an_index_out_of_step_is_reported_and_rebuilt(store) -> None:
    path = store.path
    store.close()
    with sqlite3.connect(path / "store.sqlite") as conn:
        conn.execute("INSERT INTO chunks_lexical(chunks_lexical, rowid, text) VALUES "
                     "('delete', (SELECT vid FROM chunks WHERE id = 'alps'), "
                     "(SELECT text FROM chunks WHERE id = 'alps'))")
    report = verify_store(path)
    assert [p.part for p in report.problems] == ["lexical"]
    assert "1 chunk(s) missing" in report.summary()
    from memrag.store.repair import repair_store

    assert repair_store(path).after.ok
    assert _ids(MemoryStore.open(path, read_only=True).search("glaciers", k=1, mode="lexical")) == [
        "alps"
    ]


def test_reranking_orders_candidates_by_the_question_likelihood(store) -> None:
    from memrag.store.rerank import MemoryReranker

    question = "Which river flows through Berlin?"
    candidates = store.search(question, k=4, with_slots=True)
    reranker = MemoryReranker(store.compressor, batch_size=3)
    batched = reranker.scores(question, candidates)
    one_by_one = [reranker.scores(question, [c])[0] for c in candidates]
    assert batched == pytest.approx(one_by_one, abs=1e-4)
    reranked = store.search(question, k=2, rerank=4)
    best = sorted(range(4), key=lambda i: -batched[i])[:2]
    assert _ids(reranked) == [candidates[i].id for i in best]
    assert [r.score for r in reranked] == pytest.approx([batched[i] for i in best], abs=1e-4)
    # Chunks without memory are scored from their text, as they would be answered.
    texts = store.search(question, k=4, with_slots=False)
    from_text = reranker.scores(question, texts)
    flagged = [c for c in candidates]
    for record in flagged:
        record.use_text = True
    assert reranker.scores(question, flagged) == pytest.approx(from_text, abs=1e-4)
    assert _ids(store.search(question, k=3, rerank=0)) == _ids(store.search(question, k=3))
