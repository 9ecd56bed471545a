"""How should a chat be rendered for a model without a chat template? (earlier turns, system)

The server's own request path (:class:`memrag.server.service.RagService`: retrieval of the
latest user message, the QA prompt, the store's memory) answers each question of the
benchmark's sample in several conversations, under each rendering of
:class:`memrag.prompts.PlainChat`, and scores the last answer (SQuAD EM, F1, ``contains``):

* ``single``: the question alone (every rendering gives the eval's prompt);
* ``system``: after a system message (``--system``), rendered ``drop`` or ``prefix``;
* ``follow-up``: after an earlier turn about the same passage (another SQuAD question of it and
  its gold answer), earlier turns rendered ``drop``, ``qa`` or ``transcript``;
* ``topic change``: after an earlier turn about another passage, likewise.

Answers are decoded greedily in batches with the server's default stop; the store is one of
``benchmarks/serve_quality.py``'s (the same 500 passages).

    python benchmarks/chat_turns.py --store benchmarks/results/serve-quality/stores/kv-int8 \
        --limit 100 --out benchmarks/results/serve-quality/chat_turns
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

SYSTEM = "You are a helpful assistant. Answer the question from the passages."


def conversations(records: list[Any], pool: dict[str, list[Any]], seed: int) -> dict[str, list[list[tuple[str, str]]]]:
    """Per conversation kind, one list of ``(role, text)`` turns per question."""
    rng = random.Random(seed)
    by_id = {r.id: r for r in records}
    out: dict[str, list[list[tuple[str, str]]]] = {"single": [], "system": [], "follow-up": [], "topic change": []}
    contexts = list(pool)
    for record in records:
        question = ("user", record.question)
        out["single"].append([question])
        out["system"].append([("system", SYSTEM), question])
        siblings = [r for r in pool[record.context] if r.id != record.id and r.id not in by_id] or [
            r for r in pool[record.context] if r.id != record.id
        ]
        earlier = rng.choice(siblings) if siblings else record
        out["follow-up"].append([("user", earlier.question), ("assistant", earlier.answers[0]), question])
        other = rng.choice([c for c in contexts if c != record.context])
        earlier = rng.choice(pool[other])
        out["topic change"].append([("user", earlier.question), ("assistant", earlier.answers[0]), question])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--data", default="../shared/data/squad_v1.1/dev.jsonl.gz")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="output path without extension")
    args = parser.parse_args()

    import torch

    import memrag.prompts as prompts
    from memrag.data.readers import iter_qa_records
    from memrag.eval.metrics import aggregate_squad
    from memrag.eval.qa import sample_qa_records
    from memrag.server.service import RagService, Turn
    from memrag.store import MemoryStore
    from memrag.utils.progress import progress

    torch.set_num_threads(args.threads)
    records = sample_qa_records(args.data, limit=args.limit, seed=args.seed)
    wanted = {r.context for r in records}
    pool: dict[str, list[Any]] = {}
    for record in iter_qa_records(args.data):
        pool.setdefault(record.context, []).append(record)
    for context in wanted:
        pool.setdefault(context, [])
    chats = conversations(records, pool, args.seed)
    renderings = {
        "single": [("-", prompts.PlainChat())],
        "system": [("drop", prompts.PlainChat(system="drop")), ("prefix", prompts.PlainChat(system="prefix"))],
        "follow-up": [(h, prompts.PlainChat(history=h)) for h in ("drop", "qa", "transcript")],
        "topic change": [(h, prompts.PlainChat(history=h)) for h in ("drop", "qa", "transcript")],
    }
    rows = []
    default = prompts.DEFAULT_PLAIN_CHAT
    with MemoryStore.open(args.store, read_only=True) as store:
        service = RagService(store)
        options = service.options(max_tokens=args.max_tokens)
        for kind, variants in renderings.items():
            for name, plain in variants:
                prompts.DEFAULT_PLAIN_CHAT = plain
                try:
                    prepared = [
                        service.prepare([Turn(role, text) for role, text in chat], options, top_k=args.top_k)
                        for chat in chats[kind]
                    ]
                    answers = []
                    for start in progress(iterable=range(0, len(prepared), args.batch_size), desc=f"{kind} {name}"):
                        batch = [p.prompt for p in prepared[start : start + args.batch_size]]
                        answers += [g.text.strip() for g in store.compressor.generate(batch, options)]
                finally:
                    prompts.DEFAULT_PLAIN_CHAT = default
                scores = aggregate_squad((a, r.answers) for a, r in zip(answers, records))
                rows.append({"conversation": kind, "rendering": name, **scores, "answers": answers})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "answers"}), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"settings": vars(args), "system": SYSTEM, "results": rows}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    lines = [
        "| conversation | earlier turns / system rendered as | EM | F1 | contains | n |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['conversation']} | {row['rendering']} | {row['exact_match']:.1f} | {row['f1']:.1f} | "
            f"{row['contains']:.1f} | {row['n']} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
