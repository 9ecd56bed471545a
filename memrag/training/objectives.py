"""Training objectives: what the compressor learns, as a loss over target tokens only.

* :class:`PretrainObjective` (ICAE pretraining): a segment's slots plus the reconstruct
  marker must reproduce the segment (autoencoding), or its slots plus the continue marker
  must produce the text that follows (language modelling).
* :class:`QAObjective` (fine-tuning): the slots of the gold passage among distractor
  passages' slots, then the question, must produce the answer. The prompt is
  :func:`qa_prompt`, the same one evaluation and every other consumer use.

Both go through the single splice path (:class:`memrag.splice.Splicer`) and the frozen decoder
(the adapter disabled); gradients reach only the LoRA weights of the encoder and the
memory/task embeddings. An objective returns the *sum* of token losses; the trainer divides by
the number of target tokens of the whole optimizer step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from memrag.prompts import Context, has_chat_template, qa_parts, render_chat
from memrag.slots import Slots
from memrag.splice import IGNORE_INDEX, PromptPart, Task
from memrag.training.data import PretrainExample, QAExample


@dataclass
class ObjectiveOutput:
    """The loss of one micro-batch.

    Attributes:
        loss_sum: Sum of the cross-entropy of every target token (a scalar with gradient).
        num_tokens: Number of target tokens.
        source_tokens: Text tokens compressed into slots for this batch.
        parts: Per example kind (``"ae"``, ``"lm"``, ``"qa"``): (loss sum, target tokens).
    """

    loss_sum: torch.Tensor
    num_tokens: int
    source_tokens: int
    parts: dict[str, tuple[float, int]] = field(default_factory=dict)


class Objective(Protocol):
    """A loss over a micro-batch of examples."""

    name: str
    #: Kinds of examples reported separately (``loss_<kind>`` in the log).
    kinds: tuple[str, ...]

    def __call__(self, compressor: Any, examples: Sequence[Any]) -> ObjectiveOutput: ...


# --------------------------------------------------------------------------- prompts
def reconstruct_prompt(slots: Slots) -> list[PromptPart]:
    """Autoencoding prompt: the slots, then the reconstruct marker."""
    return [slots, Task.RECONSTRUCT]


def continue_prompt(slots: Slots) -> list[PromptPart]:
    """Language-modelling prompt: the slots, then the continue marker."""
    return [slots, Task.CONTINUE]


def qa_prompt(tokenizer: Any, contexts: Sequence[Context], question: str) -> list[PromptPart]:
    """The question-answering prompt used for fine-tuning and evaluation alike.

    It is :func:`memrag.prompts.qa_parts`; a model with a chat template gets it as the user
    message rendered by the template.
    """
    parts = qa_parts(contexts, question)
    if has_chat_template(tokenizer):
        return render_chat(tokenizer, [{"role": "user", "content": parts}])
    return parts


def qa_target_ids(tokenizer: Any, answer: str, max_tokens: int | None = None) -> list[int]:
    """Token ids the decoder must produce after :func:`qa_prompt`.

    Without a chat template the answer continues ``"Answer:"`` as `` <answer>\\n`` (the newline
    is :data:`memrag.prompts.ANSWER_STOP`, where the frozen decoder naturally stops); with a
    template it is the answer followed by the EOS token.
    """
    if has_chat_template(tokenizer):
        ids = _tokenize(tokenizer, answer.strip()) + [tokenizer.eos_token_id]
    else:
        ids = _tokenize(tokenizer, f" {answer.strip()}\n")
    return ids[:max_tokens] if max_tokens else ids


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------- shared core
def encode_contexts(compressor: Any, contexts: Sequence[Sequence[Sequence[int]]]) -> list[Slots]:
    """Slots of each context given as its token segments, encoded in one batch (with grad)."""
    flat = [segment for segments in contexts for segment in segments]
    tensors = compressor.encode_segments(flat)
    result: list[Slots] = []
    cursor = 0
    for segments in contexts:
        pieces = tensors[cursor : cursor + len(segments)]
        cursor += len(segments)
        result.append(
            Slots(
                tensor=torch.cat(pieces, dim=0),
                kind=compressor.config.slot_kind,
                num_tokens=sum(len(s) for s in segments),
                segment_slot_counts=[p.shape[0] for p in pieces],
            )
        )
    return result


def target_losses(
    compressor: Any, prompts: Sequence[Sequence[PromptPart]], targets: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, list[int]]:
    """Per-row sums of target-token cross-entropy under the frozen decoder.

    Only the logits of the last ``max(len(target)) + 1`` positions are computed (the
    vocabulary projection dominates the cost of short targets after long prompts).

    Returns:
        ``(loss sums of shape (batch,), target token counts)``.
    """
    batch = compressor.splicer.build(prompts, [list(t) for t in targets], append_eos=False)
    length = batch.inputs_embeds.shape[1]
    keep = min(max(len(t) for t in targets) + 1, length)
    # Positions as an index tensor, not an int: HF then gathers a contiguous slice of the
    # hidden states, so the vocabulary projection is one matrix product. With an int it is a
    # strided view, and matmul falls back to a batched product that copies the (vocab x
    # hidden) weight once per row (seconds per step on CPU).
    positions = torch.arange(length - keep, length, device=batch.inputs_embeds.device)
    with compressor.decoder_mode() as decoder:
        output = decoder(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            logits_to_keep=positions,
        )
    logits = output.logits[:, :-1].float()
    labels = batch.labels[:, -(keep - 1) :]
    losses = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(labels.shape)
    return losses.sum(dim=1), (labels != IGNORE_INDEX).sum(dim=1).tolist()


def _output(losses: torch.Tensor, counts: list[int], kinds: Sequence[str], source_tokens: int) -> ObjectiveOutput:
    parts: dict[str, tuple[float, int]] = {}
    detached = losses.detach().float().cpu().tolist()
    for kind, loss, count in zip(kinds, detached, counts):
        total, tokens = parts.get(kind, (0.0, 0))
        parts[kind] = (total + loss, tokens + count)
    return ObjectiveOutput(losses.sum(), sum(counts), source_tokens, parts)


# --------------------------------------------------------------------------- objectives
class PretrainObjective:
    """ICAE pretraining: autoencoding and continuation, mixed per example by the data stream.

    Args:
        reconstruct_eos: Append EOS to reconstruction targets, so the decoder learns where a
            segment ends (and reconstructions stop by themselves).
    """

    name = "pretrain"
    kinds = ("ae", "lm")

    def __init__(self, *, reconstruct_eos: bool = True) -> None:
        self.reconstruct_eos = reconstruct_eos

    def __call__(self, compressor: Any, examples: Sequence[PretrainExample]) -> ObjectiveOutput:
        slots = encode_contexts(compressor, [[example.segment] for example in examples])
        eos = compressor.tokenizer.eos_token_id
        prompts, targets = [], []
        for example, memory in zip(examples, slots):
            if example.kind == "ae":
                prompts.append(reconstruct_prompt(memory))
                targets.append(example.segment + ([eos] if self.reconstruct_eos and eos is not None else []))
            else:
                prompts.append(continue_prompt(memory))
                targets.append(example.continuation)
        losses, counts = target_losses(compressor, prompts, targets)
        source = sum(len(example.segment) for example in examples)
        return _output(losses, counts, [example.kind for example in examples], source)


class QAObjective:
    """Fine-tuning on QA over slots: gold and distractor passages -> the first reference answer.

    Args:
        max_answer_tokens: Truncate answer targets to this many tokens.
    """

    name = "qa"
    kinds = ("qa",)

    def __init__(self, *, max_answer_tokens: int = 48) -> None:
        self.max_answer_tokens = max_answer_tokens

    def __call__(self, compressor: Any, examples: Sequence[QAExample]) -> ObjectiveOutput:
        tokenizer = compressor.tokenizer
        unique = list(dict.fromkeys(context for example in examples for context in example.contexts))
        segments = [compressor.segment(context) for context in unique]
        slots = dict(zip(unique, encode_contexts(compressor, segments)))
        prompts = [qa_prompt(tokenizer, [slots[c] for c in example.contexts], example.question) for example in examples]
        targets = [qa_target_ids(tokenizer, example.answers[0], self.max_answer_tokens) for example in examples]
        losses, counts = target_losses(compressor, prompts, targets)
        source = sum(len(s) for segs in segments for s in segs)
        return _output(losses, counts, ["qa"] * len(examples), source)
