"""Index structures, journal replay, checkpoints, compaction, concurrency, the writer lock."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from store_helpers import sentence

import memrag.store.live_index as live_index
from memrag.store import IndexSpec, MemoryStore, StoreLockedError
from memrag.store.index import VectorIndex, list_checkpoints


def _docs(count: int, start: int = 0) -> tuple[list[str], list[str]]:
    return [f"Document {i}. " + sentence(i, 6 + i % 9) for i in range(start, start + count)], [
        f"d{i}" for i in range(start, start + count)
    ]


def test_vector_index_flat_hnsw_agree_and_hnsw_uses_tombstones() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vids = np.arange(1000, 1300)
    flat = VectorIndex.build(IndexSpec("flat"), 16, vids, vectors)
    hnsw = VectorIndex.build(IndexSpec("hnsw", hnsw_ef_search=200), 16, vids, vectors)
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    _, exact = flat.search(queries, 5)
    _, approx = hnsw.search(queries, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact, approx)])
    assert recall > 0.9
    hnsw.remove(np.array([exact[0][0], 5]))  # 5 is unknown: ignored
    assert hnsw.tombstones == {int(exact[0][0])} and hnsw.live_count == 299
    _, after = hnsw.search(queries[:1], 5)
    assert exact[0][0] not in after[0]
    _, allowed = hnsw.search(queries[:1], 3, allowed=np.array([1001, 1002, exact[0][0]]))
    assert set(allowed[0].tolist()) == {1001, 1002, -1}  # only two allowed ids are live


def test_hnsw_store_deletes_survive_reopen_and_compact(tmp_path: Path, compressor) -> None:
    texts, ids = _docs(40)
    with MemoryStore.create(tmp_path / "s", compressor, "hashing:64", index="hnsw") as s:
        s.add(texts, ids=ids)
        target = s.search(texts[7], k=1)[0].id
        assert target == "d7"
        s.delete(["d7"])
        assert "d7" not in {r.id for r in s.search(texts[7], k=5)}
    reopened = MemoryStore.open(tmp_path / "s", compressor)
    assert reopened.info()["index"]["tombstones"] == 1
    assert "d7" not in {r.id for r in reopened.search(texts[7], k=5)}
    report = reopened.compact()
    assert report.tombstones_dropped == 1 and report.index_structure == "hnsw"
    assert reopened.info()["index"]["tombstones"] == 0
    assert reopened.verify().ok
    reopened.close()


def test_ivf_store_searches_flat_until_trained(tmp_path: Path, compressor) -> None:
    texts, ids = _docs(60)
    options = {"ivf_min_train": 40, "ivf_nlist": 4, "ivf_nprobe": 4}
    with MemoryStore.create(
        tmp_path / "s", compressor, "hashing:64", index="ivf", index_options=options
    ) as s:
        s.add(texts[:20], ids=ids[:20])
        assert s.info()["index"]["structure"] == "flat"
        s.add(texts[20:], ids=ids[20:])
        assert s.info()["index"]["structure"] == "ivf"
        assert s.search(texts[33], k=1)[0].id == "d33"
        # nprobe = nlist: IVF is exact here; filters on IVF are answered exactly too.
        hits = s.search(texts[33], k=3, filter={"missing": {"$exists": False}})
        assert hits[0].id == "d33"
        s.delete(["d33"])
        assert "d33" not in {r.id for r in s.search(texts[33], k=5)}
    assert MemoryStore.open(tmp_path / "s", read_only=True).verify().ok


def test_readers_catch_up_through_the_journal(tmp_path: Path, compressor, monkeypatch) -> None:
    monkeypatch.setattr(live_index, "SMALL_INDEX_BYTES", 0)  # no checkpoint: the journal must do it
    texts, ids = _docs(12)
    writer = MemoryStore.create(tmp_path / "s", compressor, "hashing:64")
    reader = MemoryStore.open(tmp_path / "s", read_only=True)
    writer.add(texts[:6], ids=ids[:6])
    assert reader.search(texts[3], k=1)[0].id == "d3"
    writer.delete(["d3"])
    assert "d3" not in {r.id for r in reader.search(texts[3], k=6)}
    checkpoints = list_checkpoints(tmp_path / "s" / "index")
    assert [c.seq for c in checkpoints] == [0]  # nothing checkpointed yet
    fresh = MemoryStore.open(tmp_path / "s", read_only=True)  # replays the whole journal
    assert {r.id for r in fresh.search("Document", k=20)} == {"d0", "d1", "d2", "d4", "d5"}
    writer.flush()
    assert [c.seq for c in list_checkpoints(tmp_path / "s" / "index")] == [writer.live_index.applied_seq]
    writer.add(texts[6:], ids=ids[6:])
    # The reader's journal position was folded into the new checkpoint: it reloads it.
    assert reader.search(texts[9], k=1)[0].id == "d9"
    writer.close()
    assert MemoryStore.open(tmp_path / "s", read_only=True).verify().ok


def test_compact_drops_dead_slots_and_keeps_content(tmp_path: Path, compressor) -> None:
    texts, ids = _docs(30)
    with MemoryStore.create(tmp_path / "s", compressor, "hashing:64") as s:
        for start in range(0, 30, 5):
            s.add(texts[start : start + 5], ids=ids[start : start + 5])
        s.delete(ids[::2])
        before = {r.id: r.slots.tensor.clone() for r in s.get(ids)}
        report = s.compact()
        assert report.shards_before == 6 and report.shards_after == 1
        assert report.slots_dropped > 0 and report.shard_bytes_after < report.shard_bytes_before
        after = {r.id: r.slots.tensor for r in s.get(ids)}
        assert sorted(after) == sorted(before)
        for key in before:
            assert torch.equal(before[key], after[key])
        assert s.search(texts[5], k=1)[0].id == "d5"
    assert len(list((tmp_path / "s" / "shards").iterdir())) == 1
    assert MemoryStore.open(tmp_path / "s", read_only=True).verify().ok


def test_concurrent_readers_while_one_writer_adds(tmp_path: Path, compressor) -> None:
    texts, ids = _docs(40)
    writer = MemoryStore.create(tmp_path / "s", compressor, "hashing:64")
    writer.add(texts[:4], ids=ids[:4])
    errors: list[BaseException] = []
    seen: list[int] = []
    stop = threading.Event()

    def read() -> None:
        reader = MemoryStore.open(tmp_path / "s", read_only=True)
        try:
            while not stop.is_set():
                results = reader.search("Document", k=50)
                assert all(r.slots is not None and r.slots.num_slots > 0 for r in results)
                seen.append(len(results))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for start in range(4, 40, 4):
        writer.add(texts[start : start + 4], ids=ids[start : start + 4])
    writer.delete(ids[:2])
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert seen and max(seen) <= 40
    assert len(MemoryStore.open(tmp_path / "s", read_only=True).search("Document", k=50)) == 38
    writer.close()


def test_a_reader_whose_checkpoint_is_superseded_mid_read_reads_the_newer_one(
    tmp_path: Path, compressor, monkeypatch
) -> None:
    texts, ids = _docs(8)
    writer = MemoryStore.create(tmp_path / "s", compressor, "hashing:64")
    writer.add(texts[:4], ids=ids[:4])
    real_read = live_index.read_checkpoint
    superseded: list[int] = []

    def read_while_a_writer_checkpoints(checkpoint, spec, dimension):
        if not superseded:  # the writer commits, checkpoints and deletes this one meanwhile
            superseded.append(checkpoint.seq)
            writer.add(texts[4:], ids=ids[4:])
            assert not checkpoint.sidecar.exists() and not checkpoint.file.exists()
        return real_read(checkpoint, spec, dimension)

    monkeypatch.setattr(live_index, "read_checkpoint", read_while_a_writer_checkpoints)
    reader = MemoryStore.open(tmp_path / "s", read_only=True)
    assert superseded
    assert reader.search(texts[6], k=1)[0].id == "d6"
    assert len(reader.search("Document", k=50)) == 8
    writer.close()


def test_a_sidecar_deleted_while_listing_is_skipped(tmp_path: Path, compressor, monkeypatch) -> None:
    with MemoryStore.create(tmp_path / "s", compressor, "hashing:64") as s:
        s.add(*_docs(3))
    directory = tmp_path / "s" / "index"
    present = [c.seq for c in list_checkpoints(directory)]
    ghost = directory / "index-000000000000.json"
    assert present and present != [0] and not ghost.exists()
    real_iterdir = Path.iterdir

    def iterdir_listing_a_ghost(self: Path):  # the ghost was deleted after the listing
        listed = list(real_iterdir(self))
        return iter(listed + [ghost] if self == directory else listed)

    monkeypatch.setattr(Path, "iterdir", iterdir_listing_a_ghost)
    assert [c.seq for c in list_checkpoints(directory)] == present


def test_reader_in_another_process_sees_committed_writes(tmp_path: Path, compressor) -> None:
    texts, ids = _docs(6)
    with MemoryStore.create(tmp_path / "s", compressor, "hashing:64") as s:
        s.add(texts, ids=ids)
    code = (
        "from memrag.store import MemoryStore; import sys; "
        f"s = MemoryStore.open({str(tmp_path / 's')!r}, read_only=True); "
        f"r = s.search({texts[2]!r}, k=1); print(r[0].id, r[0].slots.num_slots)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "d2" and int(out.stdout.split()[1]) > 0


def test_a_second_writer_waits_then_fails_clearly(tmp_path: Path, compressor) -> None:
    with MemoryStore.create(tmp_path / "s", compressor, "hashing:64") as s:
        s.add(["first"], ids=["a"])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import filelock, sys, time; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
            "print('locked', flush=True); time.sleep(60)",
            str(tmp_path / "s" / ".write.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        store = MemoryStore.open(tmp_path / "s", compressor, lock_timeout=0.3)
        with pytest.raises(StoreLockedError, match="being written by another process"):
            store.add(["second"], ids=["b"])
        assert [r.id for r in store.search("first", k=5)] == ["a"]  # reading needs no lock
    finally:
        holder.kill()
        holder.wait()
    store.add(["second"], ids=["b"])
    assert len(store) == 2
    store.close()
