"""benchmarks/learning_curve.py: F1 from slots against QA examples trained on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "learning_curve.py"


def _report(path: Path, mode: str, f1: float) -> str:
    path.write_text(json.dumps({"results": {mode: {"f1": f1, "exact_match": f1 / 2, "n": 200}}}))
    return str(path)


def test_points_are_tabled_in_order_of_examples_with_references(tmp_path) -> None:
    later = _report(tmp_path / "later.json", "slots", 18.5)
    first = _report(tmp_path / "first.json", "slots", 13.25)
    text = _report(tmp_path / "text.json", "text", 32.7)
    out = tmp_path / "curve" / "learning_curve"
    args = [sys.executable, str(SCRIPT), "--out", str(out), "--point", "312", later, "--point", "0", first]
    done = subprocess.run([*args, "--reference", text], capture_output=True, text=True, check=True)
    rows = [line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["0", "312", "text (reference)"]
    assert "| 13.2 |" in rows[1] and "| 18.5 |" in rows[2] and "| 32.7 |" in rows[3]
    assert out.with_suffix(".png").stat().st_size > 0 and rows[0] in done.stdout


def test_a_report_without_slots_is_named_in_the_error(tmp_path) -> None:
    text = _report(tmp_path / "text.json", "text", 30.0)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "c"), "--point", "0", text],
        capture_output=True, text=True,
    )
    assert done.returncode != 0 and "text.json" in done.stderr and "slots" in done.stderr
