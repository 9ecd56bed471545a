"""The default path end to end: ``memrag index build`` and ``memrag serve`` as a new user runs
them, questions through the official ``openai`` client, answers read and scored.

For one corpus (``--corpus``):

* ``squad``: every SQuAD v1.1 dev passage (2,067), ``--limit`` seeded questions;
* ``superbowl``: the 54 passages of the dev article Super_Bowl_50 and its questions (the hard
  single-topic case);
* ``amazon``: every SQuADShifts Amazon review (2,050), ``--limit`` seeded questions.

The corpus is built into a store with ``memrag index build --corpus C --store S`` and nothing
else (``--build-args`` adds options, for measuring other settings), then served with
``memrag serve --store S`` (``--serve-args`` likewise). Arms, each a server run over the same
store: ``memory`` (the defaults), ``text`` (``--context text``: the same retrieval, chunks read as
text) and, with ``--ceiling``, ``memrag eval qa --modes text``: each question's own passage as
text, the ceiling. Per arm: retrieval recall@1 (the gold passage among the chunks the server
used), recall@5 (the store searched in-process with the server's search settings, five
chunks), EM / F1 / contains, first-token time p50/p90 (streamed), bytes per passage.

    python benchmarks/default_path.py --corpus superbowl --limit 100 \
        --out benchmarks/results/default-path/superbowl

Writes ``<out>/default_path.json`` (settings, machine, figures, every answer) and
``<out>/default_path.md``; the store is kept in ``<out>/store`` (ignored by git) and reused.
``--summarize DIR... --out FILE`` joins several runs into one table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_quality import MEMRAG, Server  # noqa: E402

from memrag.utils.machine import cpu_model  # noqa: E402

CORPORA = {
    "squad": ("../shared/data/squad_v1.1/dev.jsonl.gz", None),
    "superbowl": ("../shared/data/squad_v1.1/dev.jsonl.gz", "Super_Bowl_50"),
    "amazon": ("../shared/data/squadshifts_amazon/test.jsonl.gz", None),
}


def select(data: str, title: str | None, limit: int, seed: int) -> tuple[dict[str, str], list[Any]]:
    """``({passage id: text}, questions)``: every passage of ``data`` (of article ``title``),
    and a seeded sample of ``limit`` of their questions."""
    from memrag.bench.corpus import passage_id
    from memrag.data.readers import iter_qa_records

    records = [r for r in iter_qa_records(data) if title is None or r.title == title]
    passages = {passage_id(r.context): r.context for r in records}
    questions = random.Random(seed).sample(records, min(limit, len(records)))
    return passages, questions


def write_inputs(folder: Path, passages: dict[str, str], questions: list[Any]) -> tuple[Path, Path]:
    """The corpus file ``memrag index build`` reads and the questions file ``memrag eval`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus, asked = folder / "corpus.jsonl", folder / "questions.jsonl"
    with open(corpus, "w", encoding="utf-8") as handle:
        for pid, text in passages.items():
            handle.write(json.dumps({"id": pid, "text": text}) + "\n")
    with open(asked, "w", encoding="utf-8") as handle:
        for r in questions:
            row = {"id": r.id, "title": r.title, "context": r.context, "question": r.question,
                   "answers": r.answers}
            handle.write(json.dumps(row) + "\n")
    return corpus, asked


def build(corpus: Path, store: Path, threads: int, extra: list[str], log: Path) -> float:
    """``memrag index build`` with its defaults (plus ``extra``); seconds (0 when it exists)."""
    if (store / "manifest.json").is_file():
        return 0.0
    started = time.perf_counter()
    command = [MEMRAG, "index", "build", "--corpus", str(corpus), "--store", str(store),
               "--threads", str(threads), "--quiet", *extra]
    with open(log, "a", encoding="utf-8") as out:
        subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def ask_streaming(base_url: str, questions: list[Any]) -> list[dict[str, Any]]:
    """Every question as one user message, streamed with the server's defaults; the chunks the
    server used, the answer, its scores and the first-token time."""
    from openai import OpenAI

    from memrag.eval.metrics import answer_scores

    client = OpenAI(base_url=base_url, api_key="unused", timeout=600, max_retries=0)
    answers = []
    for record in questions:
        started = time.perf_counter()
        first, documents, pieces = None, [], []
        stream = client.chat.completions.create(
            model="memrag", messages=[{"role": "user", "content": record.question}],
            temperature=0, stream=True,
        )
        for chunk in stream:
            documents = documents or (chunk.model_extra or {}).get("memrag_documents") or []
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                first = first if first is not None else time.perf_counter() - started
                pieces.append(delta)
        text = "".join(pieces)
        answers.append({
            "id": record.id, "question": record.question, "prediction": text,
            "answers": record.answers, **answer_scores(text.strip(), record.answers),
            "first_token_s": first if first is not None else time.perf_counter() - started,
            "seconds": time.perf_counter() - started,
            "documents": [d.get("source_id") for d in documents],
            "spliced": [d.get("spliced") for d in documents],
        })
    return answers


def recall_at(store_path: Path, questions: list[Any], k: int, search: dict[str, Any]) -> float:
    """Share of questions whose own passage is among the store's top ``k`` chunks."""
    from memrag.bench.corpus import passage_id
    from memrag.store import MemoryStore

    with MemoryStore.open(store_path, read_only=True) as store:
        found = 0
        for r in questions:
            hits = store.search(r.question, k=k, with_slots=False, **search)
            found += passage_id(r.context) in {h.metadata.get("source_id") for h in hits}
    return 100 * found / max(len(questions), 1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else 0.0


def summarize(arm: str, answers: list[dict[str, Any]], gold: list[str]) -> dict[str, Any]:
    n = max(len(answers), 1)
    return {
        "arm": arm,
        "recall_at_1": 100 * sum(g in a["documents"][:1] for a, g in zip(answers, gold)) / n,
        "exact_match": 100 * sum(a["exact_match"] for a in answers) / n,
        "f1": 100 * sum(a["f1"] for a in answers) / n,
        "contains": 100 * sum(a["contains"] for a in answers) / n,
        "first_token_p50_s": percentile([a["first_token_s"] for a in answers], 0.5),
        "first_token_p90_s": percentile([a["first_token_s"] for a in answers], 0.9),
        "spliced_share": sum(any(a["spliced"]) for a in answers) / n,
        "n": len(answers),
    }


def ceiling(questions_file: Path, out: Path, threads: int, log: Path) -> dict[str, Any]:
    """``memrag eval qa --modes text`` on the same questions: each one's own passage as text."""
    from memrag.eval.metrics import answer_scores

    samples = out / "ceiling_samples.jsonl"
    command = [MEMRAG, "eval", "qa", "--data", str(questions_file), "--modes", "text",
               "--threads", str(threads), "--json-out", str(out / "ceiling.json"),
               "--samples-out", str(samples)]
    with open(log, "a", encoding="utf-8") as handle:
        subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT)
    rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines() if line]
    scored = [answer_scores(r["prediction"].strip(), r["answers"]) for r in rows]
    n = max(len(scored), 1)
    return {
        "arm": "own passage as text (memrag eval qa)",
        "exact_match": 100 * sum(s["exact_match"] for s in scored) / n,
        "f1": 100 * sum(s["f1"] for s in scored) / n,
        "contains": 100 * sum(s["contains"] for s in scored) / n,
        "n": len(scored),
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"Corpus `{s['corpus']}`: {report['passages']} passages, {report['questions']} questions "
        f"(seed {s['seed']}); store: {report['store']['chunks']} chunks, "
        f"{report['store']['bytes_per_passage']:,.0f} bytes per passage "
        f"({report['store']['bytes_per_text_token']:,.0f} per text token); build args "
        f"`{s['build_args'] or '(defaults)'}`, serve args `{s['serve_args'] or '(defaults)'}`; "
        f"{report['environment']['machine']}, {s['threads']} thread(s).",
        "",
        "| arm | recall@1 | recall@5 | EM | F1 | contains | F1 / ceiling | first token p50 / p90 s | n |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    top = report.get("ceiling", {}).get("f1")
    for row in report["results"]:
        ratio = f"{row['f1'] / top:.2f}" if top else ""
        timing = (f"{row['first_token_p50_s']:.2f} / {row['first_token_p90_s']:.2f}"
                  if "first_token_p50_s" in row else "")
        recall1 = f"{row['recall_at_1']:.1f}" if "recall_at_1" in row else ""
        recall5 = f"{report['recall_at_5']:.1f}" if "recall_at_1" in row else ""
        lines.append(
            f"| {row['arm']} | {recall1} | {recall5} | {row['exact_match']:.1f} | {row['f1']:.1f} | "
            f"{row['contains']:.1f} | {ratio} | {timing} | {row['n']} |"
        )
    return "\n".join(lines) + "\n"


def store_figures(store: Path, passages: int) -> dict[str, Any]:
    """Chunks and memory bytes (live rows) per passage and per text token."""
    from memrag.store import MemoryStore

    with MemoryStore.open(store, read_only=True) as opened:
        info = opened.info()
    memory = info["memory"]
    total = memory["bytes_per_chunk"] * info["counts"]["chunks"]
    return {
        "chunks": info["counts"]["chunks"],
        "bytes_per_passage": total / max(passages, 1),
        "bytes_per_text_token": memory["bytes_per_token"],
        "memory": f"{memory['kind']} {memory['settings']}",
        "disk_bytes": info["disk_bytes"],
    }


def summary(folders: list[Path]) -> str:
    """One table over several runs' reports: per corpus, memory and text through the served
    retrieval beside the own-passage ceiling, with the ratios the targets name."""
    lines = [
        "| corpus | options | passages / chunks | questions | arm | recall@1 | recall@5 | EM | F1 "
        "| contains | F1 / ceiling | F1 / text's | first token p50 | bytes / passage | "
        "bytes / text token |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for folder in folders:
        report = json.loads((folder / "default_path.json").read_text(encoding="utf-8"))
        rows = {row["arm"]: row for row in report["results"]}
        top = report.get("ceiling", {}).get("f1")
        text = rows.get("text", {}).get("f1")
        for arm, row in rows.items():
            served = "recall_at_1" in row
            options = " ".join(
                filter(None, (report["settings"]["build_args"], report["settings"]["serve_args"]))
            )
            lines.append(
                f"| {report['settings']['corpus']} | {f'`{options}`' if options else 'defaults'} | "
                f"{report['passages']:,} / "
                f"{report['store']['chunks']:,} | {report['questions']} | {arm} | "
                + (f"{row['recall_at_1']:.1f} | {report['recall_at_5']:.1f} | " if served else " | | ")
                + f"{row['exact_match']:.1f} | {row['f1']:.1f} | {row['contains']:.1f} | "
                + (f"{row['f1'] / top:.2f}" if top else "")
                + " | "
                + (f"{row['f1'] / text:.2f}" if text and served else "")
                + " | "
                + (f"{row['first_token_p50_s']:.2f} s" if served else "")
                + " | "
                + (f"{report['store']['bytes_per_passage']:,.0f} | "
                   f"{report['store']['bytes_per_text_token']:,.0f}" if arm == "memory" else " | ")
                + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--summarize", nargs="+", default=None, metavar="OUT",
                        help="print one table over these runs' reports (and write --out)")
    parser.add_argument("--corpus", choices=sorted(CORPORA))
    parser.add_argument("--data", default=None, help="override the corpus's data file")
    parser.add_argument("--limit", type=int, default=500, help="questions (seeded sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default="memory,text", help="memory and/or text")
    parser.add_argument("--ceiling", action="store_true", help="also the own-passage text eval")
    parser.add_argument("--build-args", default="", help="extra memrag index build options")
    parser.add_argument("--serve-args", default="", help="extra memrag serve options")
    parser.add_argument("--recall-search", default="{}", help="JSON: MemoryStore.search options "
                        "matching the server's search (default: the store's defaults)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--build-only", action="store_true", help="build the store and stop")
    parser.add_argument("--store", default=None, help="the store (default <out>/store; reused)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.summarize:
        table = summary([Path(f) for f in args.summarize])
        Path(args.out).write_text(table, encoding="utf-8")
        print(table)
        return
    if args.corpus is None:
        parser.error("--corpus is required (or --summarize)")

    data, title = CORPORA[args.corpus]
    data = args.data or data
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    passages, questions = select(data, title, args.limit, args.seed)
    corpus_file, questions_file = write_inputs(out / "store-inputs", passages, questions)
    store = Path(args.store) if args.store else out / "store"
    build_s = build(corpus_file, store, args.threads, args.build_args.split(), log)
    if args.build_only:
        return
    from memrag.bench.corpus import passage_id

    gold = [passage_id(r.context) for r in questions]
    report: dict[str, Any] = {
        "settings": vars(args),
        "environment": {"machine": cpu_model(),
                        "cpus": os.cpu_count(), "python": platform.python_version()},
        "passages": len(passages), "questions": len(questions), "build_s": build_s,
        "store": store_figures(store, len(passages)),
        "recall_at_5": recall_at(store, questions, 5, json.loads(args.recall_search)),
        "results": [], "answers": {},
    }
    for arm in [a.strip() for a in args.arms.split(",") if a.strip()]:
        extra = args.serve_args.split() + (["--context", "text"] if arm == "text" else [])
        with Server(store, args.threads, log, extra) as server:
            server.wait_ready()
            answers = ask_streaming(server.base_url, questions)
        report["results"].append(summarize(arm, answers, gold))
        report["answers"][arm] = answers
        print(json.dumps(report["results"][-1]), flush=True)
    if args.ceiling:
        report["ceiling"] = ceiling(questions_file, out, args.threads, log)
        report["results"].append(report["ceiling"])
    (out / "default_path.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "default_path.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


if __name__ == "__main__":
    main()
