"""Damaged stores (verify reports, open refuses, nothing overwritten, repair); kill -9 resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from store_helpers import assert_same_content, sentence, store_content, write_corpus

from memrag.indexing import BuildOptions, build_index
from memrag.store import (
    MemoryStore,
    StoreCorruptError,
    StoreVersionError,
    repair_store,
    verify_store,
)


@pytest.fixture
def built(tmp_path: Path, compressor) -> Path:
    path = tmp_path / "store"
    with MemoryStore.create(path, compressor, "hashing:64") as store:
        for start in range(0, 12, 4):
            store.add(
                [f"Document {i}. " + sentence(i, 10) for i in range(start, start + 4)],
                ids=[f"d{i}" for i in range(start, start + 4)],
            )
    return path


def _snapshot(path: Path) -> dict[str, str]:
    """Hashes of every file except SQLite's WAL side files (opening a WAL database touches them)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm")) and p.name != ".write.lock"
    }


def _shard(path: Path) -> Path:
    return sorted((path / "shards").iterdir())[0]


def _index_file(path: Path) -> Path:
    (faiss_file,) = (path / "index").glob("*.faiss")
    return faiss_file


def test_truncated_shard_is_reported_served_as_text_and_repaired(
    built: Path, compressor, caplog: pytest.LogCaptureFixture
) -> None:
    before = {
        r.id: r.slots.tensor.clone()
        for r in MemoryStore.open(built, read_only=True).get([f"d{i}" for i in range(12)])
    }
    shard = _shard(built)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    snapshot = _snapshot(built)
    # The store stays open; the damaged shard's chunks are served as text, with a warning.
    with caplog.at_level("WARNING"), MemoryStore.open(built, read_only=True) as store:
        records = store.get(list(before))
        damaged = [r for r in records if r.slots is None]
        assert len(damaged) == 4 and all(r.use_text and r.context() == r.text for r in damaged)
        assert sum(r.slots is not None for r in records) == len(before) - 4
        stats = store.integrity.stats()
        assert stats["failed_chunks"] == 4 and sorted(stats["chunks"]) == sorted(r.id for r in damaged)
    assert shard.name in caplog.text and "verify --repair" in caplog.text
    report = verify_store(built)
    assert not report.ok and report.parts() == {"shard"}
    (problem,) = report.problems
    assert problem.affected == 4 and len(problem.chunk_ids) == 4
    assert _snapshot(built) == snapshot  # open and verify changed nothing
    result = repair_store(built, compressor=compressor)
    assert result.recompressed == 4 and result.shards_removed == 1 and result.after.ok
    after = {
        r.id: r.slots.tensor for r in MemoryStore.open(built, read_only=True).get(list(before))
    }
    for key, tensor in before.items():
        torch.testing.assert_close(after[key], tensor, atol=2e-3, rtol=1e-2)


def test_repair_without_compressor_serves_damaged_chunks_as_text(built: Path) -> None:
    shard = _shard(built)
    shard.write_bytes(b"\x00" * 16)
    result = repair_store(built, recompress=False)
    assert result.text_only == 4 and result.after.ok
    store = MemoryStore.open(built, read_only=True)
    damaged = [r for r in store.get([f"d{i}" for i in range(12)]) if r.slots is None]
    assert len(damaged) == 4 and all(r.use_text and r.context() == r.text for r in damaged)


def test_corrupted_shard_body_is_caught_by_checksums(built: Path) -> None:
    shard = _shard(built)
    data = bytearray(shard.read_bytes())
    data[-10:] = bytes(10)
    shard.write_bytes(bytes(data))
    ids = [f"d{i}" for i in range(12)]
    with MemoryStore.open(built, read_only=True) as store:  # the cheap check sees a sound file
        # The chunk whose rows hold the flipped bytes fails its checksum: served as text.
        failed = [r.id for r in store.get(ids) if r.slots is None]
        assert len(failed) == 1 and store.get(failed)[0].use_text
        assert store.integrity.stats()["by_reason"] == {"checksum mismatch": 2}
    with MemoryStore.open(built, read_only=True, check="full") as store:
        # The full check finds the shard: all its chunks are served as text.
        assert len([r for r in store.get(ids) if r.slots is None]) == 4
    report = verify_store(built)
    assert [p.part for p in report.problems] == ["shard"] and "checksum" in report.problems[
        0
    ].message
    assert verify_store(built, full=False).ok


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_sidecar"])
def test_damaged_index_is_refused_then_rebuilt(built: Path, damage: str) -> None:
    index_file = _index_file(built)
    if damage == "truncate":
        index_file.write_bytes(index_file.read_bytes()[:100])
        expected = "truncated"
    elif damage == "flip":
        data = bytearray(index_file.read_bytes())
        data[200] ^= 0xFF
        index_file.write_bytes(bytes(data))
        expected = "checksum"
    else:
        index_file.with_suffix(".json").unlink()
        expected = "no index checkpoint"
    snapshot = _snapshot(built)
    with pytest.raises(StoreCorruptError, match=expected):
        MemoryStore.open(built, read_only=True)
    report = verify_store(built)
    assert report.parts() == {"index"} and expected in report.problems[0].message
    assert _snapshot(built) == snapshot
    result = repair_store(built)
    assert result.index_rebuilt and result.after.ok
    store = MemoryStore.open(built, read_only=True)
    assert store.search("Document 5. " + sentence(5, 10), k=1)[0].id == "d5"


def test_newer_manifest_version_is_refused(built: Path) -> None:
    manifest = built / "manifest.json"
    data = json.loads(manifest.read_text())
    data["format_version"] = 99
    manifest.write_text(json.dumps(data))
    snapshot = _snapshot(built)
    with pytest.raises(StoreVersionError, match="format version 99 is newer"):
        MemoryStore.open(built)
    assert verify_store(built).parts() == {"manifest"}
    with pytest.raises(StoreCorruptError, match="cannot repair"):
        repair_store(built)
    assert _snapshot(built) == snapshot


def test_unreadable_manifest_is_refused(built: Path) -> None:
    (built / "manifest.json").write_text("{not json")
    with pytest.raises(StoreCorruptError, match="unreadable manifest"):
        MemoryStore.open(built)


def test_missing_database_is_refused_and_not_recreated(built: Path) -> None:
    for path in built.glob("store.sqlite*"):
        path.unlink()
    with pytest.raises(StoreCorruptError, match="database .* is missing"):
        MemoryStore.open(built)
    report = verify_store(built)
    assert report.parts() == {"database"} and "missing" in report.problems[0].message
    assert not list(built.glob("store.sqlite*"))


def test_debris_of_interrupted_writes_is_reported_then_removed(built: Path) -> None:
    orphan = built / "shards" / "shard-orphan.safetensors"
    orphan.write_bytes(b"partial")
    temporary = built / "index" / ".index-000000000099.faiss.x.tmp"
    temporary.write_bytes(b"partial")
    no_sidecar = built / "index" / "index-000000000098.faiss"  # killed before its sidecar
    no_sidecar.write_bytes(b"partial")
    report = verify_store(built)
    assert report.ok and len(report.warnings) == 3
    with MemoryStore.open(built) as store:
        store.delete(["d0"])
    assert not orphan.exists() and not temporary.exists() and not no_sidecar.exists()
    assert not verify_store(built).warnings


def test_checkpoint_newer_than_the_database_records_is_used(
    built: Path, compressor, monkeypatch
) -> None:
    """A writer killed after writing a checkpoint but before recording it in SQLite."""
    import memrag.store.live_index as live_index
    from memrag.store.index import list_checkpoints, write_checkpoint

    monkeypatch.setattr(live_index, "SMALL_INDEX_BYTES", 0)  # keep journal entries pending
    with MemoryStore.open(built, compressor) as store:
        store.add(["An extra document about the river bridge."], ids=["extra"])
        pending_seq = store.live_index.applied_seq
        write_checkpoint(built / "index", pending_seq, store.live_index.index)  # ... and "crash" here
        store._closed = True
        store.db.close()
    assert [c.seq for c in list_checkpoints(built / "index")][-1] == pending_seq
    reopened = MemoryStore.open(built, read_only=True)
    assert reopened.search("extra document about the river bridge", k=1)[0].id == "extra"
    assert verify_store(built).ok


BUILD_SCRIPT = """
import sys
from memrag.indexing import BuildOptions, build_index
build_index(sys.argv[1], sys.argv[2], compressor=sys.argv[3], embedder="hashing:64",
            options=BuildOptions(batch_chunks=3, window_batches=2, show_progress=False),
            create_options={"memory": sys.argv[4]})
"""


def _start_build(corpus: Path, store: Path, compressor: Path, memory: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", BUILD_SCRIPT, str(corpus), str(store), str(compressor), memory],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _shards(store: Path) -> int:
    directory = store / "shards"
    return len(list(directory.iterdir())) if directory.is_dir() else 0


@pytest.mark.parametrize("memory", ["embedding", "kv-pruned:0.5:int8"])
def test_kill_9_during_build_then_resume(tmp_path: Path, saved_compressor: Path, memory: str) -> None:
    from memrag.compressor import Compressor

    corpus = write_corpus(tmp_path / "corpus.jsonl", 24)
    store = tmp_path / "killed"
    process = _start_build(corpus, store, saved_compressor, memory)
    deadline = time.monotonic() + 120
    while _shards(store) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.07)  # land somewhere inside a later batch
    assert process.poll() is None, (
        f"the build finished before it could be killed: {process.stderr.read()}"
    )
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    report = verify_store(store)  # consistent after the kill (debris is only a warning)
    assert report.ok, report.summary()
    interrupted = MemoryStore.open(store, read_only=True)
    done_before = len(interrupted)
    assert done_before > 0
    # The lexical index holds exactly the committed chunks (it commits with them).
    committed = {r.id: r.text for r in interrupted.search("x", k=1000, mode="dense", with_slots=False)}
    assert len(committed) == done_before
    for chunk_id, text in committed.items():
        found = interrupted.search(text, k=1000, mode="lexical", with_slots=False)
        assert chunk_id in {r.id for r in found} and {r.id for r in found} <= set(committed)
    compressor = Compressor.from_pretrained(saved_compressor)
    resumed = build_index(
        corpus,
        store,
        compressor=compressor,
        embedder="hashing:64",
        options=BuildOptions(batch_chunks=3, show_progress=False),
    )
    assert (
        resumed.chunks_unchanged == done_before
        and resumed.chunks_written == resumed.chunks_total - done_before
    )
    final = verify_store(store)
    assert final.ok and not final.warnings, final.summary()
    reference = tmp_path / "reference"
    build_index(
        corpus,
        reference,
        compressor=compressor,
        embedder="hashing:64",
        options=BuildOptions(show_progress=False),
        create_options={"memory": memory},
    )
    assert MemoryStore.open(store, read_only=True).memory.settings == (
        MemoryStore.open(reference, read_only=True).memory.settings
    )
    assert_same_content(
        store_content(MemoryStore.open(store, read_only=True)),
        store_content(MemoryStore.open(reference, read_only=True)),
    )
