"""Small JSONL corpora and saved tiny models for the training and evaluation tests."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa Paris France capital city "
    "tower river bridge museum 1889 completed built famous old new"
).split()


def write_jsonl(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    """Writes rows (dicts as JSON, strings verbatim) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def text_corpus(path: Path, *, documents: int = 30, seed: int = 0) -> Path:
    """Documents of 20..160 random words, ``{"id", "text"}``."""
    rng = random.Random(seed)
    rows = [
        {"id": str(i), "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 160)))}
        for i in range(documents)
    ]
    return write_jsonl(path, rows)


def qa_corpus(path: Path, *, paragraphs: int = 8, questions: int = 3, seed: int = 0) -> Path:
    """SQuAD-style rows: several questions per paragraph, answers taken from the paragraph."""
    rng = random.Random(seed)
    rows = []
    for p in range(paragraphs):
        words = [rng.choice(WORDS) for _ in range(rng.randint(15, 40))]
        context = " ".join(words)
        for q in range(questions):
            start = rng.randrange(len(words) - 2)
            rows.append(
                {
                    "id": f"p{p}_q{q}",
                    "title": f"T{p // 3}",
                    "context": context,
                    "question": f"What comes after {words[start]}?",
                    "answers": [" ".join(words[start + 1 : start + 3])],
                }
            )
    return write_jsonl(path, rows)
