"""Reads of one store object run in parallel; a write excludes them only while it commits."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from memrag.store import MemoryStore
from memrag.utils.rwlock import ReadWriteLock

TEXTS = {
    "paris": "Paris is the capital and most populous city of France.",
    "tower": "In 1889 the Eiffel Tower was completed for the World's Fair.",
    "fox": "The quick brown fox jumps over the lazy dog.",
}


@pytest.fixture
def store(tmp_path: Path, compressor):
    with MemoryStore.create(tmp_path / "s", compressor, "hashing:64", fidelity="none") as opened:
        opened.add(list(TEXTS.values()), ids=list(TEXTS))
        yield opened


def test_readers_share_the_lock_and_a_writer_waits_for_them():
    lock = ReadWriteLock()
    inside = threading.Barrier(4, timeout=10)  # three readers and this thread
    wrote = threading.Event()

    def read() -> None:
        with lock.read(), lock.read():  # re-entrant
            inside.wait()  # three readers at once, or this times out
            inside.wait()

    def write() -> None:
        with lock.write(), lock.write(), lock.read():  # the writer may read too
            wrote.set()

    with ThreadPoolExecutor(4) as pool:
        readers = [pool.submit(read) for _ in range(3)]
        inside.wait()  # the three readers hold the lock at once
        writer = pool.submit(write)
        assert not wrote.wait(0.2)  # the readers still hold it
        inside.wait()
        for future in [*readers, writer]:
            future.result(timeout=10)
    assert wrote.is_set() and lock.readers == 0


def test_a_reader_cannot_upgrade():
    lock = ReadWriteLock()
    with lock.read(), pytest.raises(RuntimeError, match="read lock"):
        with lock.write():
            pass


def test_searches_run_in_parallel(store, monkeypatch):
    """Two searches are inside the index search at the same time (a serialising lock would
    make the barrier time out)."""
    from memrag.store.index import VectorIndex

    real = VectorIndex.search
    together = threading.Barrier(2, timeout=10)

    def search(index, *args, **kwargs):
        together.wait()
        return real(index, *args, **kwargs)

    monkeypatch.setattr(VectorIndex, "search", search)
    with ThreadPoolExecutor(2) as pool:
        results = [pool.submit(store.search, question, 2) for question in ("capital", "tower")]
        assert all(len(future.result(timeout=10)) == 2 for future in results)


def test_search_during_a_document_add(store, monkeypatch):
    """Searches go on while an add compresses; they wait only while it commits, and then see
    all of it."""
    from memrag.store.database import Database
    from memrag.store.processing import ChunkProcessor

    compressing, resume = threading.Event(), threading.Event()
    committing, commit = threading.Event(), threading.Event()
    real_process, real_insert = ChunkProcessor.process, Database.insert_chunks

    def process(processor, chunks):
        compressing.set()
        assert resume.wait(10)
        return real_process(processor, chunks)

    def insert_chunks(conn, chunks):
        committing.set()
        assert commit.wait(10)
        return real_insert(conn, chunks)

    monkeypatch.setattr(ChunkProcessor, "process", process)
    monkeypatch.setattr(Database, "insert_chunks", staticmethod(insert_chunks))
    new_doc = "The Spree flows through Berlin and the Spree is a river."
    with ThreadPoolExecutor(3) as pool:
        adding = pool.submit(store.add, [new_doc], ids=["spree"])
        assert compressing.wait(10)
        before = store.search("Spree river Berlin", k=4)  # not blocked by the compression
        assert [r.id for r in before if r.id == "spree"] == []
        assert store.get(["paris"])[0].slots is not None
        resume.set()
        assert committing.wait(10)
        during = pool.submit(store.search, "Spree river Berlin", 4)
        assert not during.done()  # waits for the commit (it may not see half of it)
        commit.set()
        adding.result(timeout=10)
        found = during.result(timeout=10)
    assert "spree" in [r.id for r in found] and len(found) == 4
    assert all(r.slots is not None for r in found)


def test_replacing_a_document_is_atomic_for_readers(store):
    """A document added again (here in fewer chunks) is never seen missing or doubled."""
    long_text = " ".join(["Rivers of Europe: the Spree, the Elbe and the Rhine flow north."] * 6)
    store.add([long_text], ids=["rivers"], chunk=True)
    live = len(store)
    stop = threading.Event()
    seen: set[int] = set()

    def search() -> None:
        while not stop.is_set():
            seen.add(len(store.search("rivers", k=100, with_slots=False)))

    with ThreadPoolExecutor(2) as pool:
        readers = [pool.submit(search) for _ in range(2)]
        for text in (long_text, "Rivers: the Spree.", long_text, "Rivers: the Elbe."):
            store.add([text], ids=["rivers"], chunk=True)
        stop.set()
        for reader in readers:
            reader.result(timeout=30)
    short = len(TEXTS) + 1
    assert seen <= {live, short} and len(store) == short
