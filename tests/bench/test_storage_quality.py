"""benchmarks/storage_quality.py: bytes against F1 / contains, k = 1 reports joined with k = 5 benches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "storage_quality.py"


def _eval_report(path: Path, results: dict, *, stored: dict, compressor: str = "c") -> Path:
    positions = {mode: 160.0 if mode.startswith(("text", "kv-exact")) else 40.0 for mode in results}
    memory = {mode: {"bytes_per_passage": size} for mode, size in stored.items()}
    report = {"limit": 4, "compressor": compressor, "results": results, "passage_positions": positions, "memory": memory}
    path.write_text(json.dumps(report))
    return path


def _rows(markdown: str) -> dict[str, list[str]]:
    table = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line][1:]
    return {cells[2].strip(): [c.strip() for c in cells[1:-1]] for cells in (line.split("|") for line in table)}


def test_k1_rows_get_k5_scores_by_mode_for_the_decoder_and_by_label_for_trained_memory(tmp_path: Path) -> None:
    scores = lambda f1, contains: {"f1": f1, "exact_match": f1 / 2, "contains": contains, "n": 4}  # noqa: E731
    k1 = _eval_report(
        tmp_path / "qa.json",
        {"text": scores(30.0, 40.0), "kv:int8": scores(31.0, 22.0), "kv-exact:int8": scores(31.5, 41.0)},
        stored={"kv:int8": 400_000, "kv-exact:int8": 1_600_000},
    )
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({
        "settings": {"k": 5},
        "results": {"text": scores(20.0, 25.0), "kv:int8": scores(18.0, 12.0), "kv-exact:int8": scores(16.0, 19.0)},
    }))
    args = [sys.executable, str(SCRIPT), f"mine={k1}", "--bench", f"other={bench}", "--markdown-out", str(tmp_path / "t.md")]
    subprocess.run(args, check=True, capture_output=True, text=True)
    rows = _rows((tmp_path / "t.md").read_text())
    assert "F1, k = 5" in (tmp_path / "t.md").read_text()
    assert rows["`text`"][0] == "any" and rows["`text`"][-2:] == ["20.0", "25.0"]
    assert rows["`kv-exact:int8`"][-2:] == ["16.0", "19.0"] and rows["`kv-exact:int8`"][3] == "10,000"
    assert rows["`kv:int8`"][-2:] == ["", ""]  # another compressor's slots are not this one's

    same = subprocess.run([*args[:-4], "--bench", f"mine={bench}"], check=True, capture_output=True, text=True)
    assert _rows(same.stdout)["`kv:int8`"][-2:] == ["18.0", "12.0"]


def test_contains_is_rescored_from_the_samples_of_an_older_report(tmp_path: Path) -> None:
    report = _eval_report(tmp_path / "eval.json", {"text": {"f1": 50.0, "exact_match": 0.0, "n": 2}}, stored={})
    samples = [
        {"mode": "text", "prediction": "It was completed in 1889.", "answers": ["1889"]},
        {"mode": "text", "prediction": "In 18", "answers": ["1889", "in 1889"]},
    ]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    done = subprocess.run([sys.executable, str(SCRIPT), str(report)], check=True, capture_output=True, text=True)
    assert _rows(done.stdout)["`text`"][7] == "50.0"
