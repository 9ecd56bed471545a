"""The Ray backend on a local Ray with two workers builds the same store as the local backend."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_helpers import assert_same_content, store_content, write_corpus

from memrag.indexing import BuildOptions, build_index
from memrag.store import MemoryStore

ray = pytest.importorskip("ray")


def test_ray_backend_equals_local_backend(tmp_path: Path, saved_compressor: Path) -> None:
    from memrag.indexing.ray_backend import RayOptions

    corpus = write_corpus(tmp_path / "corpus.jsonl", 16)
    (tmp_path / "corpus.jsonl").open("a").write('{"id": "bad", "text": ""}\nnot json\n')
    options = BuildOptions(batch_chunks=6, show_progress=False)
    local = build_index(
        corpus,
        tmp_path / "local",
        compressor=str(saved_compressor),
        embedder="hashing:64",
        options=options,
        create_options={"chunk_tokens": 24},
    )
    distributed = build_index(
        corpus,
        tmp_path / "ray",
        compressor=str(saved_compressor),
        embedder="hashing:64",
        backend="ray",
        options=options,
        create_options={"chunk_tokens": 24},
        ray_options=RayOptions(
            num_workers=2,
            num_cpus_per_worker=1,
            init_kwargs={"object_store_memory": 100 * 1024 * 1024, "log_to_driver": False},
        ),
    )
    assert not ray.is_initialized()  # the job stopped the local Ray it started
    assert distributed.backend == "ray" and distributed.chunks_written == local.chunks_written > 16
    assert distributed.corpus.skipped == local.corpus.skipped == 2
    a = MemoryStore.open(tmp_path / "local", read_only=True)
    b = MemoryStore.open(tmp_path / "ray", read_only=True)
    assert (
        a.manifest.compressor == b.manifest.compressor
        and a.manifest.embedder == b.manifest.embedder
    )
    assert_same_content(store_content(a), store_content(b))
    assert b.verify().ok
    query = a.embedder.embed_query("Document 3.")
    assert [r.id for r in a.search_by_vector(query, k=5)] == [
        r.id for r in b.search_by_vector(query, k=5)
    ]
    # Resuming on Ray skips everything already stored.
    again = build_index(
        corpus,
        tmp_path / "ray",
        backend="ray",
        options=options,
        create_options={"chunk_tokens": 24},
        ray_options=RayOptions(
            num_workers=1, init_kwargs={"object_store_memory": 100 * 1024 * 1024}
        ),
    )
    assert again.chunks_written == 0 and again.chunks_unchanged == local.chunks_total
