"""The README's Python quickstart runs as written (slow: the real embedded model)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart() -> str:
    """The Python block after the README's quickstart marker."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- quickstart[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md has no quickstart block after its marker"
    return match.group(1)


def test_the_readme_is_short_and_its_quickstart_too() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250
    assert len(quickstart().strip().splitlines()) <= 15


@pytest.mark.slow
def test_the_readme_quickstart_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(quickstart(), "README.md quickstart", "exec"), {"__name__": "__readme__"})
    answer = capsys.readouterr().out.strip()
    assert "1889" in answer, answer
    assert (tmp_path / "my-store" / "manifest.json").is_file()
