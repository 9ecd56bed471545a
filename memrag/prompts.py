"""Prompt wording shared by training, evaluation, the demo, LangChain and the server.

Prompts are lists of parts (text, :class:`~memrag.slots.Slots`, :class:`~memrag.splice.Task`)
for :class:`~memrag.splice.Splicer`. Models with a chat template get their messages rendered
by it, with each document's slots spliced where a placeholder stood.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from memrag.memory.kv import KVSlots
from memrag.slots import Slots
from memrag.splice import PromptPart

#: Stop strings for short extractive answers.
ANSWER_STOP = ("\n",)

#: A document as a prompt holds it: its text, its embedding slots or its K/V memory.
Memory = Slots | KVSlots
Context = str | Memory


def qa_parts(contexts: Sequence[Context], question: str) -> list[PromptPart]:
    """The question-answering prompt: each passage (text or slots), then the question.

    The same wording is used whatever form the passages take, so modes compare fairly.
    """
    parts: list[PromptPart] = []
    for context in contexts:
        parts.extend(["Passage: ", context, "\n"])
    parts.append(f"Question: {question.strip()}\nAnswer:")
    return parts


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer renders chat messages itself."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
) -> list[PromptPart]:
    """Renders chat ``messages`` into prompt parts.

    Each message is ``{"role": ..., "content": str | list[str | Slots | KVSlots]}``. With a chat
    template each document's memory is replaced by a unique placeholder, the template is
    applied, and the text is split back at the placeholders. Without one, a plain ``Role: content`` transcript is used.

    Returns:
        The parts. When a template writes the BOS token itself, the splicer adds no other.
    """
    slots_by_key: dict[str, Memory] = {}
    flat: list[dict[str, str]] = []
    for message in messages:
        content = message["content"]
        pieces = [content] if isinstance(content, (str, Slots, KVSlots)) else list(content)
        text = ""
        for piece in pieces:
            if isinstance(piece, (Slots, KVSlots)):
                key = f"<<memrag-slots-{uuid.uuid4().hex}>>"
                slots_by_key[key] = piece
                text += key
            else:
                text += str(piece)
        flat.append({"role": message["role"], "content": text})
    if has_chat_template(tokenizer):
        rendered = tokenizer.apply_chat_template(
            flat, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    else:
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in flat]
        if add_generation_prompt:
            lines.append("Assistant:")
        rendered = "\n".join(lines)
    return split_placeholders(rendered, slots_by_key)


def split_placeholders(text: str, slots_by_key: dict[str, Memory]) -> list[PromptPart]:
    """Splits ``text`` at the placeholder keys, putting each key's memory in its place."""
    parts: list[PromptPart] = []
    rest = text
    while slots_by_key:
        positions = [(rest.find(key), key) for key in slots_by_key if key in rest]
        if not positions:
            break
        index, key = min(positions)
        if index > 0:
            parts.append(rest[:index])
        parts.append(slots_by_key[key])
        rest = rest[index + len(key) :]
    if rest:
        parts.append(rest)
    return parts
