"""Prompt wording shared by training, evaluation, the demo, LangChain and the server.

Prompts are lists of parts (text, :class:`~memrag.memory.slots.Slots`, :class:`~memrag.splice.Task`)
for :class:`~memrag.splice.Splicer`. Models with a chat template get their messages rendered
by it, with each document's slots spliced where a placeholder stood. A model without one
(the embedded Gemma 3 270M) gets the prompt its compressor was trained with: the latest user
message as it is (the QA prompt), earlier turns and system messages as :class:`PlainChat`
says (measured in docs/RESULTS.md, "Chat turns"), and :data:`ANSWER_STOP` ends its answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from memrag.memory.kv import KVSlots
from memrag.memory.protocol import Memory
from memrag.memory.slots import Slots
from memrag.splice import PromptPart, Task

#: Stop strings for short extractive answers.
ANSWER_STOP = ("\n",)
#: New tokens an answer may take by default: a QA answer (the prompt format compressors are
#: trained on; 32 answered better than 64 through ``memrag serve``, docs/RESULTS.md), or a chat
#: reply for a model with a chat template.
ANSWER_MAX_TOKENS = 32
CHAT_MAX_TOKENS = 256

class DocumentText(str):
    """A document's text in a chat message: kept as a prompt part of its own when the chat is
    rendered, so it is tokenized alone, as :func:`qa_parts` lays a text passage out (``"Passage:
    "`` and the passage's first word tokenize differently together)."""


#: A document as a prompt holds it: its text, its embedding slots or its K/V memory.
Context = str | Memory


def qa_parts(contexts: Sequence[Context], question: str) -> list[PromptPart]:
    """The question-answering prompt: each passage (text or slots), then the question.

    The same wording is used whatever form the passages take, so modes compare fairly.
    """
    parts: list[PromptPart] = []
    for context in contexts:
        document = DocumentText(context) if isinstance(context, str) else context
        parts.extend(["Passage: ", document, "\n"])
    parts.append(f"Question: {question.strip()}\nAnswer:")
    return parts


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer renders chat messages itself."""
    return bool(getattr(tokenizer, "chat_template", None))


def answer_stop(tokenizer: Any) -> tuple[str, ...]:
    """Where an answer ends when the caller names no stop strings.

    A model without a chat template continues the QA prompt's ``Answer:`` past the answer
    (with another ``Question:``), so its answers stop at :data:`ANSWER_STOP`, as fine-tuning
    and ``memrag eval qa`` do; a chat template's end-of-turn token ends the others.
    """
    return () if has_chat_template(tokenizer) else ANSWER_STOP


def answer_max_tokens(tokenizer: Any) -> int:
    """New tokens an answer may take when the caller names no limit (see
    :data:`ANSWER_MAX_TOKENS`)."""
    return CHAT_MAX_TOKENS if has_chat_template(tokenizer) else ANSWER_MAX_TOKENS


@dataclass(frozen=True)
class PlainChat:
    """How a chat is rendered for a model without a chat template.

    The latest user message is written as it is: it holds the QA prompt (passages, question,
    ``Answer:``), exactly as fine-tuning and evaluation write it, so a single question gets the
    answer ``memrag eval qa`` gives. What comes before it:

    Attributes:
        system: ``"drop"`` (system messages are left out) or ``"prefix"`` (their text, then a
            newline, starts the prompt).
        history: Earlier user and assistant turns: ``"drop"``, ``"qa"`` (each as
            ``Question: ...\\nAnswer: ...\\n``, the QA prompt's own wording) or ``"transcript"``
            (``User: ...\\nAssistant: ...\\n``), before the latest message.

    The defaults are the renderings measured not to hurt the last answer (docs/RESULTS.md,
    "Chat turns"): a system message in front, or earlier turns in either wording, made the
    embedded model's answers shorter (F1 up 3-4 points) but less often hold the gold answer
    (``contains`` down 4-7 points), so a template-less model answers the latest message alone.
    Models with a chat template keep the whole conversation.
    """

    system: Literal["drop", "prefix"] = "drop"
    history: Literal["drop", "qa", "transcript"] = "drop"

    def __post_init__(self) -> None:
        if self.system not in ("drop", "prefix"):
            raise ValueError(f"system must be 'drop' or 'prefix', got {self.system!r}")
        if self.history not in ("drop", "qa", "transcript"):
            raise ValueError(f"history must be 'drop', 'qa' or 'transcript', got {self.history!r}")

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt text of ``messages`` (the last one a user message)."""
        *earlier, last = messages
        lines: list[str] = []
        if self.system == "prefix":
            lines += [m["content"].strip() + "\n" for m in earlier if m["role"] in SYSTEM_ROLES]
        turns = [m for m in earlier if m["role"] not in SYSTEM_ROLES]
        if self.history == "qa":
            for message in turns:
                if message["role"] == "assistant":
                    lines.append(f"Answer: {message['content'].strip()}\n")
                else:
                    lines.append(f"Question: {message['content'].strip()}\n")
        elif self.history == "transcript":
            lines += [f"{m['role'].capitalize()}: {m['content'].strip()}\n" for m in turns]
        return "".join(lines) + last["content"]


#: Roles whose messages instruct rather than converse.
SYSTEM_ROLES = ("system", "developer")
#: How chats are rendered for models without a chat template (see :class:`PlainChat`).
DEFAULT_PLAIN_CHAT = PlainChat()


def render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    plain: PlainChat | None = None,
) -> list[PromptPart]:
    """Renders chat ``messages`` into prompt parts.

    Each message is ``{"role": ..., "content": str | list[str | Slots | KVSlots]}``. With a chat
    template each document's memory (and each :class:`DocumentText`) is replaced by a unique
    placeholder, the template is
    applied, and the text is split back at the placeholders. Without one, a chat that ends with
    a user message is rendered by ``plain`` (default :data:`DEFAULT_PLAIN_CHAT`: the latest
    message as it is, so a QA prompt reads as in training); any other is a plain
    ``Role: content`` transcript.

    Returns:
        The parts. When a template writes the BOS token itself, the splicer adds no other.
    """
    slots_by_key: dict[str, Memory | DocumentText] = {}
    flat: list[dict[str, str]] = []
    for message in messages:
        content = message["content"]
        pieces = [content] if isinstance(content, (str, Slots, KVSlots)) else list(content)
        text = ""
        for piece in pieces:
            if isinstance(piece, (Slots, KVSlots, DocumentText)):
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
    elif add_generation_prompt and flat and flat[-1]["role"] == "user":
        rendered = (plain or DEFAULT_PLAIN_CHAT).render(flat)
    else:
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in flat]
        if add_generation_prompt:
            lines.append("Assistant:")
        rendered = "\n".join(lines)
    return split_placeholders(rendered, slots_by_key)


def split_placeholders(text: str, slots_by_key: dict[str, Any]) -> list[PromptPart]:
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


# --------------------------------------------------------------------------- the prompts
def token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (how prompt parts and targets are cut)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def qa_prompt(tokenizer: Any, contexts: Sequence[Context], question: str) -> list[PromptPart]:
    """The question-answering prompt used for fine-tuning, evaluation and every consumer.

    It is :func:`qa_parts`; a model with a chat template gets it as the user message rendered
    by the template.
    """
    parts = qa_parts(contexts, question)
    if has_chat_template(tokenizer):
        return render_chat(tokenizer, [{"role": "user", "content": parts}])
    return parts


def qa_target_ids(tokenizer: Any, answer: str, max_tokens: int | None = None) -> list[int]:
    """Token ids the decoder must produce after :func:`qa_prompt`.

    Without a chat template the answer continues ``"Answer:"`` as `` <answer>\\n`` (the newline
    is :data:`ANSWER_STOP`, where the frozen decoder naturally stops); with a template it is the
    answer followed by the EOS token.
    """
    if has_chat_template(tokenizer):
        ids = token_ids(tokenizer, answer.strip()) + [tokenizer.eos_token_id]
    else:
        ids = token_ids(tokenizer, f" {answer.strip()}\n")
    return ids[:max_tokens] if max_tokens else ids


#: What the decoder is asked after a passage when candidates are reranked by the likelihood
#: of the question (UPR, arXiv 2204.07496: "Please write a question based on this passage").
QUESTION_INSTRUCTION = "\nPlease write a question based on this passage.\nQuestion:"


def question_likelihood_prompt(context: Context) -> list[PromptPart]:
    """The reranking prompt: the passage (text or memory), then the instruction whose
    continuation is scored (:func:`question_target_ids`)."""
    document = DocumentText(context) if isinstance(context, str) else context
    return ["Passage: ", document, QUESTION_INSTRUCTION]


def question_target_ids(tokenizer: Any, question: str) -> list[int]:
    """Token ids of the question as the continuation of :func:`question_likelihood_prompt`."""
    return token_ids(tokenizer, " " + question.strip())


def reconstruct_prompt(slots: Memory) -> list[PromptPart]:
    """Autoencoding prompt: embedding slots, then the reconstruct marker; K/V memory, then
    KVzip's repeat instruction (:data:`~memrag.memory.pruning.REPEAT_PROMPT`), which the frozen
    decoder follows from its own keys and values before any training.

    Used by pretraining, ``memrag eval ae`` and the stores' reconstruction score alike.
    """
    if slots.packed_kv:
        from memrag.memory.pruning import REPEAT_PROMPT

        return [slots, REPEAT_PROMPT]
    return [slots, Task.RECONSTRUCT]


def continue_prompt(slots: Memory) -> list[PromptPart]:
    """Language-modelling prompt: the slots (embedding or K/V), then the continue marker.

    Used by pretraining's continuation examples and ``memrag eval lm`` alike.
    """
    return [slots, Task.CONTINUE]
