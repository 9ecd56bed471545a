"""The small demo corpus bundled with memrag (100 SQuAD dev paragraphs, CC BY-SA 4.0)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path


@dataclass
class DemoQuestion:
    """A question about one demo passage, with its reference answers."""

    id: str
    question: str
    answers: list[str]
    passage_id: str


@dataclass
class DemoPassage:
    """One paragraph of the demo corpus."""

    id: str
    title: str
    text: str
    questions: list[DemoQuestion]


def demo_corpus_path() -> Path:
    """Path of the bundled JSONL file."""
    return Path(str(files("memrag").joinpath("resources", "demo", "squad_dev_sample.jsonl")))


def load_demo_corpus() -> list[DemoPassage]:
    """The bundled passages with their questions."""
    passages = []
    with open(demo_corpus_path(), encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            questions = [
                DemoQuestion(id=q["id"], question=q["question"], answers=q["answers"], passage_id=row["id"])
                for q in row["questions"]
            ]
            passages.append(DemoPassage(id=row["id"], title=row["title"], text=row["text"], questions=questions))
    return passages
