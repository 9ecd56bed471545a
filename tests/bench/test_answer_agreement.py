"""benchmarks/answer_agreement.py: agreement of two modes and where only one contains the gold answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "answer_agreement.py"


def _sample(qid: str, mode: str, prediction: str, gold: str, f1: float) -> dict:
    return {"id": qid, "mode": mode, "prediction": prediction, "answers": [gold], "f1": f1}


SAMPLES = [
    # only the text contains the gold answer; the slots' answer is wrong, the text's short
    _sample("q1", "text", "Von Miller", "Von Miller", 1.0),
    _sample("q1", "slots", "Peyton Manning", "Von Miller", 0.0),
    # only the text contains it; the slots' answer is partly right, the text's long
    _sample("q2", "text", "The Warsaw Stock Exchange is the largest in the region", "Warsaw Stock Exchange", 0.4),
    _sample("q2", "slots", "Warsaw", "Warsaw Stock Exchange", 0.5),
    # both contain it
    _sample("q3", "text", "487", "487", 1.0),
    _sample("q3", "slots", "487 people", "487", 0.67),
    # only the slots contain it
    _sample("q4", "text", "In 1990", "1989", 0.0),
    _sample("q4", "slots", "1989", "1989", 1.0),
    # answered by the text only: not counted
    _sample("q5", "text", "Japan", "Japan", 1.0),
]


def test_misses_split_the_references_wins_into_wrong_and_partial_answers(benchmark_script) -> None:
    module = benchmark_script("answer_agreement")
    by_mode: dict = {}
    for sample in SAMPLES:
        by_mode.setdefault(sample["mode"], {})[sample["id"]] = sample
    row = module.contains_misses(by_mode, "slots", "text", short_words=5)
    assert row["questions"] == 4
    assert (row["only_reference"], row["wrong"], row["partial"]) == (2, 1, 1)
    assert row["reference_short"] == 1, "only 'Von Miller' has at most five words"
    assert row["only_mode"] == 1


def test_the_command_writes_both_tables(tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(s) + "\n" for s in SAMPLES))
    out = tmp_path / "agreement.md"
    args = [sys.executable, str(SCRIPT), "slots=text", "--misses", "--samples", str(samples), "--markdown-out", str(out)]
    subprocess.run(args, check=True, capture_output=True, text=True)
    text = out.read_text()
    assert "| `slots` | `text` | 4 | 0.0 % |" in text
    assert "| `slots` | `text` | 4 | 2 | 1 | 1 | 1 (≤ 5 words) | 1 |" in text


def test_an_unknown_mode_is_named(tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(s) + "\n" for s in SAMPLES))
    args = [sys.executable, str(SCRIPT), "kv:int8=text", "--misses", "--samples", str(samples)]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode != 0 and "'kv:int8'" in result.stderr and "slots" in result.stderr
