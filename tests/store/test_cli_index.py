"""``memrag index build | add | delete | set-threshold | search | info | verify | compact``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from store_helpers import write_corpus
from typer.testing import CliRunner

from memrag.cli import app
from memrag.store import MemoryStore


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def _ok(runner: CliRunner, *args: str) -> str:
    """Standard output of a successful command (logs and progress go to standard error)."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_index_commands_end_to_end(
    tmp_path: Path, runner: CliRunner, saved_compressor: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 8)
    with corpus.open("a") as handle:
        handle.write("not json\n")
    store = tmp_path / "store"
    common = [
        "--store",
        str(store),
        "--compressor",
        str(saved_compressor),
        "--embedder",
        "hashing:64",
        "--quiet",
    ]
    output = _ok(runner, "index", "build", "--corpus", str(corpus), *common, "--batch-chunks", "5")
    assert "8 documents" in output and "corpus.jsonl:9: invalid JSON" in output
    report = json.loads(_ok(runner, "index", "build", "--corpus", str(corpus), *common, "--json"))
    assert (
        report["chunks_written"] == 0
        and report["chunks_unchanged"] >= 8
        and len(report["skipped"]) == 1
    )

    info = json.loads(_ok(runner, "index", "info", str(store), "--json"))
    chunks = info["counts"]["chunks"]
    assert (
        chunks == report["chunks_unchanged"] and info["manifest"]["embedder"]["id"] == "hashing:64"
    )
    assert "served as text" in _ok(runner, "index", "info", str(store))

    doc3 = json.loads(corpus.read_text().splitlines()[3])["text"]
    hits = json.loads(_ok(runner, "index", "search", str(store), doc3, "-k", "3", "--json"))
    assert hits[0]["id"] == "doc3#0" and hits[0]["num_slots"] > 0 and len(hits) == 3
    for mode in ("dense", "lexical"):
        found = json.loads(
            _ok(runner, "index", "search", str(store), doc3, "--search", mode, "-k", "2", "--json")
        )
        assert found[0]["id"] == "doc3#0"
    reranked = json.loads(
        _ok(runner, "index", "search", str(store), doc3, "--rerank", "4", "-k", "2", "--json")
    )
    assert len(reranked) == 2 and all(r["score"] < 0 for r in reranked)  # log-probabilities
    bad = runner.invoke(app, ["index", "search", str(store), "x", "--search", "fuzzy"])
    assert bad.exit_code != 0 and "unknown search mode 'fuzzy'" in bad.output
    bad = runner.invoke(app, ["index", "search", str(store), "x", "--search-weights", "1"])
    assert bad.exit_code != 0 and "two numbers" in bad.output
    filtered = json.loads(
        _ok(
            runner,
            "index",
            "search",
            str(store),
            "Document",
            "-k",
            "50",
            "--filter",
            '{"even": true}',
            "--json",
        )
    )
    assert filtered and all(h["metadata"]["even"] is True for h in filtered)
    assert "1. " in _ok(runner, "index", "search", str(store), "Document 3.")

    assert "added 1 chunk(s): note" in _ok(
        runner, "index", "add", str(store), "--text", "A short note.", "--id", "note"
    )
    assert "deleted 1 chunk(s)" in _ok(runner, "index", "delete", str(store), "note", "missing")
    doc1_chunks = MemoryStore.open(store, read_only=True).db.ids_of_sources(["doc1"])
    assert len(doc1_chunks) >= 1
    assert f"deleted {len(doc1_chunks)} chunk(s)" in _ok(
        runner, "index", "delete", str(store), "doc1", "--source"
    )

    assert "compacted: shards" in _ok(runner, "index", "compact", str(store))
    verify = runner.invoke(app, ["index", "verify", str(store)])
    assert verify.exit_code == 0 and "OK" in verify.output

    shard = sorted((store / "shards").iterdir())[0]
    shard.write_bytes(shard.read_bytes()[:50])
    damaged = runner.invoke(app, ["index", "verify", str(store), "--json"])
    assert damaged.exit_code == 1 and json.loads(damaged.stdout)["problems"][0]["part"] == "shard"
    # The store stays open: only the damaged shard's chunks lose their memory (served as text).
    degraded = runner.invoke(app, ["index", "search", str(store), "x", "--json"])
    assert degraded.exit_code == 0, degraded.output
    found = json.loads(degraded.stdout)
    assert found and all(r["use_text"] and r["num_slots"] == 0 for r in found)
    repaired = runner.invoke(
        app, ["index", "verify", str(store), "--repair", "--compressor", str(saved_compressor)]
    )
    assert repaired.exit_code == 0 and "chunks re-compressed" in repaired.output


def test_index_errors_are_one_clean_line(tmp_path: Path, runner: CliRunner) -> None:
    missing = runner.invoke(app, ["index", "info", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "is not a memrag store" in missing.output
    bad_filter = runner.invoke(app, ["index", "search", str(tmp_path), "q", "--filter", "[1]"])
    assert bad_filter.exit_code == 2 and "--filter must be a JSON object" in bad_filter.output
    no_corpus = runner.invoke(
        app,
        [
            "index",
            "build",
            "--corpus",
            str(tmp_path / "none"),
            "--store",
            str(tmp_path / "s"),
            "--untrained",
            "--base-model",
            "tiny-not-a-model",
            "--quiet",
        ],
    )
    assert no_corpus.exit_code == 2 and "error:" in no_corpus.output


def test_low_fidelity_build_warns_and_set_threshold_re_flags(
    tmp_path: Path, runner: CliRunner, saved_compressor: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 4)
    store = tmp_path / "store"
    common = ["--compressor", str(saved_compressor), "--embedder", "hashing:64", "--quiet"]
    # A random compressor reconstructs nothing: every chunk falls below the default 0.5.
    report = json.loads(
        _ok(runner, "index", "build", "--corpus", str(corpus), "--store", str(store), *common, "--json")
    )
    total = report["chunks_written"]
    assert total > 0 and report["flagged_use_text"] == total
    assert "memrag index set-threshold" in report["fidelity_warning"]

    assert f"0 of {total} chunk(s) served as text" in _ok(
        runner, "index", "set-threshold", str(store), "0"
    )
    info = json.loads(_ok(runner, "index", "info", str(store), "--json"))
    assert info["counts"]["use_text"] == 0
    assert info["manifest"]["options"]["fidelity_threshold"] == 0.0
    assert f"{total} of {total} chunk(s) served as text" in _ok(
        runner, "index", "set-threshold", str(store), "1"
    )

    plain = tmp_path / "plain"
    built = json.loads(
        _ok(runner, "index", "build", "--corpus", str(corpus), "--store", str(plain), *common,
            "--no-fidelity", "--json")
    )
    assert built["flagged_use_text"] == 0 and built["fidelity_warning"] is None
    result = runner.invoke(app, ["index", "set-threshold", str(plain), "0.1"])
    assert result.exit_code == 2 and "without fidelity scores" in result.output
