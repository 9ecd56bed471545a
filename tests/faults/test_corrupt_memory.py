"""Fault injection: damaged memory is never spliced; it is served as text, counted and repaired.

Each test damages a real (tiny-model) store the way a disk, a copy or a hand edit would, then
asks through the Python API, the OpenAI-compatible server (official client) and LangChain, and
checks what the user gets: an answer from the chunk's text, a warning, a count in ``/healthz``
and ``memrag index info``, ``verify`` naming the chunk, and ``--repair`` restoring its memory.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch

from memrag.store import MemoryStore, repair_store, verify_store

DOCUMENTS = {
    "paris": "Paris is the capital and most populous city of France.",
    "tower": "In 1889 the Eiffel Tower was completed for the World's Fair in Paris.",
    "fox": "The quick brown fox jumps over the lazy dog near the river bank.",
}
QUESTION = "When was the Eiffel Tower completed?"


@pytest.fixture(scope="module")
def compressor():
    from memrag.testing import tiny_compressor

    return tiny_compressor(seed=0)


def _store(path: Path, compressor, memory: str) -> Path:
    with MemoryStore.create(path, compressor, "hashing:64", memory=memory, fidelity="none") as store:
        store.add(list(DOCUMENTS.values()), ids=list(DOCUMENTS))
    return path


def _chunk_rows(path: Path, chunk_id: str) -> tuple[Path, int, int, int]:
    """(shard path, byte offset of the chunk's rows, their byte length, row width)."""
    from safetensors import safe_open

    with sqlite3.connect(path / "store.sqlite") as db:
        file, start, count = db.execute(
            "SELECT s.file, c.slot_start, c.slot_count FROM chunks c JOIN shards s "
            "ON s.shard_id = c.shard_id WHERE c.id = ?",
            (chunk_id,),
        ).fetchone()
    shard = path / "shards" / file
    with safe_open(str(shard), framework="pt") as handle:
        view = handle.get_slice("slots")
        width = int(view.get_shape()[1])
        item = torch.empty((), dtype=handle.get_tensor("slots").dtype).element_size()
    header = 8 + int.from_bytes(shard.read_bytes()[:8], "little")
    row = width * item
    return shard, header + start * row, count * row, row


def _flip(path: Path, chunk_id: str, *, count: int = 64) -> None:
    """Flips ``count`` bytes in the middle of a chunk's rows (the file keeps its size)."""
    shard, offset, length, _ = _chunk_rows(path, chunk_id)
    data = bytearray(shard.read_bytes())
    middle = offset + length // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))


def _negate_int8(path: Path, chunk_id: str) -> None:
    """Negates a chunk's int8 K/V payload (what a sign bug in a copy tool would do)."""
    shard, offset, length, row = _chunk_rows(path, chunk_id)
    data = bytearray(shard.read_bytes())
    for i in range(offset + row, offset + length):  # keep the first (header) row
        data[i] = (-int.from_bytes(bytes([data[i]]), "little", signed=True)) & 0xFF
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_flip, _negate_int8])
def test_a_corrupted_chunk_is_served_as_text_counted_named_and_repaired(
    tmp_path: Path, compressor, damage, caplog: pytest.LogCaptureFixture
) -> None:
    path = _store(tmp_path / "s", compressor, "kv-exact:int8")
    with MemoryStore.open(path, read_only=True) as store:
        good = store.get(["tower"])[0].slots
    damage(path, "tower")
    with caplog.at_level("WARNING"), MemoryStore.open(path, read_only=True) as store:
        records = {r.id: r for r in store.get(list(DOCUMENTS))}
        assert records["tower"].slots is None and records["tower"].use_text
        assert records["tower"].context() == DOCUMENTS["tower"]
        assert all(records[i].slots is not None for i in ("paris", "fox"))  # only its chunk
        stats = store.info()["integrity"]
        assert stats["failed_chunks"] == 1 and stats["chunks"] == ["tower"]
    assert "'tower'" in caplog.text and "verify --repair" in caplog.text
    report = verify_store(path)
    assert not report.ok and "tower" in str(report.problems[0])
    result = repair_store(path, compressor=compressor)
    assert result.after.ok and result.recompressed >= 1
    with MemoryStore.open(path, read_only=True) as store:
        repaired = store.get(["tower"])[0]
        assert repaired.slots is not None and not repaired.use_text
        torch.testing.assert_close(repaired.slots.keys, good.keys)
        assert store.integrity.stats()["failed_chunks"] == 0


def test_non_finite_memory_is_never_spliced_even_without_a_checksum(tmp_path: Path, compressor) -> None:
    """A store written before chunks had checksums still refuses inf/NaN memory."""
    path = _store(tmp_path / "s", compressor, "embedding")
    shard, offset, length, _ = _chunk_rows(path, "tower")
    data = bytearray(shard.read_bytes())
    data[offset : offset + 2] = b"\x00\x7c"  # float16 +inf
    shard.write_bytes(bytes(data))
    with sqlite3.connect(path / "store.sqlite") as db:
        db.execute("UPDATE chunks SET slot_crc32 = NULL")
    with MemoryStore.open(path, read_only=True) as store:
        (record,) = store.get(["tower"])
        assert record.slots is None and record.use_text
        assert store.integrity.stats()["by_reason"] == {"non-finite values": 1}


def test_the_server_answers_from_text_and_reports_the_failure(tmp_path: Path, compressor) -> None:
    import httpx
    import openai

    from memrag.server import ServerSettings, ServerThread, create_app

    path = _store(tmp_path / "s", compressor, "kv-exact:int8")
    _flip(path, "tower")
    with MemoryStore.open(path, compressor, read_only=True) as store:
        server = ServerThread(create_app(store, ServerSettings(default_max_tokens=4))).start()
        try:
            client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0)
            completion = client.chat.completions.create(
                model="memrag",
                messages=[{"role": "user", "content": QUESTION}],
                extra_body={"memrag": {"top_k": 3}},
            )
            spliced = {d["id"]: d["spliced"] for d in completion.model_extra["memrag_documents"]}
            assert spliced["tower"] == "text" and spliced["paris"] == "kv-exact"
            health = httpx.get(server.base_url + "/healthz").json()
            assert health["integrity"]["failed_chunks"] == 1
        finally:
            server.stop()


def test_a_truncated_or_deleted_shard_leaves_the_store_open(tmp_path: Path, compressor) -> None:
    path = _store(tmp_path / "s", compressor, "kv-exact:int8")
    (shard,) = (path / "shards").iterdir()
    shard.write_bytes(shard.read_bytes()[:100])
    with MemoryStore.open(path, read_only=True) as store:
        found = store.search(QUESTION, k=3)
        assert len(found) == 3 and all(r.use_text and r.slots is None for r in found)
        assert list(store.info()["integrity"]["damaged_shards"]) == [shard.name]
    shard.unlink()
    with MemoryStore.open(path, read_only=True) as store:
        assert all(r.use_text for r in store.search(QUESTION, k=3))
    assert repair_store(path, compressor=compressor).after.ok


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_the_finite_check_finds_one_bad_value_anywhere(bad: float) -> None:
    from memrag.memory.kv import KVSlots
    from memrag.store.integrity import finite

    keys, values = torch.randn(5, 2, 1, 4), torch.randn(5, 2, 1, 4)
    offsets = torch.arange(5).unsqueeze(1).expand(5, 2).contiguous()
    memory = KVSlots(keys=keys, values=values, offsets=offsets, span=5, kind="kv-exact", fingerprint="x")
    assert finite(memory)
    values[3, 1, 0, 2] = bad
    assert not finite(memory)
    half = torch.randn(3, 8).half()
    half[2, 7] = bad
    from types import SimpleNamespace

    assert not finite(SimpleNamespace(tensor=half)) and finite(SimpleNamespace(tensor=half[:2]))
