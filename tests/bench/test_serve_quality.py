"""benchmarks/serve_quality.py: a bench report stands beside a server run only when both asked
the same questions over the same corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_quality.py"
SETTINGS = {"data": "../shared/data/squad_v1.1/dev.jsonl.gz", "limit": 100, "corpus_size": 500, "seed": 0}


def _serve_run(out: Path) -> Path:
    result = {"arm": "kv:int8", "top_k": 5, "exact_match": 10.0, "f1": 20.0, "contains": 14.0}
    result |= {"mean_answer_tokens": 6.0, "seconds_p50": 0.5, "stopped": 1.0, "n": 100}
    report = {"settings": SETTINGS, "results": [result], "bench": {}, "bench_k": None, "answers": {}}
    out.mkdir()
    (out / "serve_quality.json").write_text(json.dumps(report))
    return out


def _bench_report(path: Path, **changed: object) -> Path:
    settings = {**SETTINGS, "data": "/elsewhere/squad_v1.1/dev.jsonl.gz", "k": 5, **changed}
    figures = {"kv:int8": {"f1": 19.0, "exact_match": 9.0, "contains": 13.0, "n": settings["limit"]}}
    path.write_text(json.dumps({"settings": settings, "results": figures}))
    return path


def _render(out: Path, bench: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), "--render-only", "--out", str(out), "--bench-json", str(bench)]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)


def test_a_bench_of_the_same_questions_is_put_beside_the_server_run(tmp_path: Path) -> None:
    out = _serve_run(tmp_path / "serve")
    done = _render(out, _bench_report(tmp_path / "bench.json"))
    assert done.returncode == 0, done.stderr
    assert "19.0 / 13.0" in (out / "serve_quality.md").read_text()


def test_a_bench_of_other_questions_is_refused_naming_the_setting(tmp_path: Path) -> None:
    out = _serve_run(tmp_path / "serve")
    before = (out / "serve_quality.json").read_text()
    done = _render(out, _bench_report(tmp_path / "bench.json", limit=300))
    assert done.returncode != 0
    assert "limit is 300" in done.stderr and "the server run's is 100" in done.stderr
    assert (out / "serve_quality.json").read_text() == before, "nothing rewritten"
    assert not (out / "serve_quality.md").exists()
