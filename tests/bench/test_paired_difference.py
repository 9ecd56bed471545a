"""benchmarks/paired_difference.py: paired means, difference and bootstrap interval of two runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _write(path: Path, scores: list[float], mode: str = "kv:int4c") -> Path:
    rows = [
        {"id": f"q{i}", "mode": mode, "prediction": "x", "answers": ["x"], "exact_match": s, "f1": s, "contains": s}
        for i, s in enumerate(scores)
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


def test_difference_and_interval_over_the_shared_questions(tmp_path: Path, benchmark_script) -> None:
    module = benchmark_script("paired_difference")
    first = module.load_scores(_write(tmp_path / "a.jsonl", [0.0] * 10), "kv:int4c")
    second = module.load_scores(_write(tmp_path / "b.jsonl", [1.0] * 5 + [0.0] * 5 + [1.0]), "kv:int4c")
    result = module.paired_difference(first, second, resamples=500, seed=0)
    assert result["questions"] == 10, "q10 is only in the second run"
    f1 = result["f1"]
    assert (f1["first"], f1["second"], f1["difference"]) == (0.0, 50.0, 50.0)
    low, high = f1["interval"]
    assert 0.0 < low < 50.0 < high < 100.0
    same = module.paired_difference(first, first, resamples=100, seed=0)["contains"]
    assert same["difference"] == 0.0 and same["interval"] == [0.0, 0.0]


def test_a_file_without_the_mode_is_refused_by_name(tmp_path: Path, benchmark_script) -> None:
    path = _write(tmp_path / "a.jsonl", [1.0], mode="text")
    with pytest.raises(SystemExit, match="no samples of mode 'kv:int4c'"):
        benchmark_script("paired_difference").load_scores(path, "kv:int4c")
