"""Training objectives: what the compressor learns, as a loss over target tokens only.

* :class:`PretrainObjective` (ICAE pretraining): a segment's slots plus the reconstruct
  marker must reproduce the segment (autoencoding), or its slots plus the continue marker
  must produce the text that follows (language modelling).
* :class:`QAObjective` (fine-tuning): the slots of the gold passage among distractor
  passages' slots, then the question, must produce the answer. The prompt is
  :func:`memrag.prompts.qa_prompt`, the same one evaluation and every other consumer use.

Both go through the single splice path (:class:`memrag.splice.Splicer`) and the frozen decoder
(the adapter disabled); gradients reach only the LoRA weights of the encoder and the
memory/task embeddings. An objective returns the *sum* of token losses; the trainer divides by
the number of target tokens of the whole optimizer step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

from memrag.data.examples import PretrainExample, QAExample
from memrag.prompts import (
    continue_prompt,
    qa_prompt,
    qa_target_ids,
    reconstruct_prompt,
)
from memrag.scoring import TargetLogits, encode_contexts, target_logits, token_losses
from memrag.splice import IGNORE_INDEX, PromptPart

if TYPE_CHECKING:
    from memrag.protocols import MemoryMaker


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

    def __call__(self, compressor: MemoryMaker, examples: Sequence[Any]) -> ObjectiveOutput: ...


# --------------------------------------------------------------------------- shared core
@dataclass(frozen=True)
class Distillation:
    """Distillation from the frozen decoder reading the text itself (KV-Distill style).

    At every target position, the KL divergence from the teacher's next-token distribution
    (the decoder with the text in place of the slots) to the student's (the decoder with the
    slots) is added to the cross-entropy, weighted by ``weight``. The teacher's distribution
    is cut to its ``top_k`` most likely tokens (renormalised): enough to carry its ranking at
    a fraction of the memory.

    Attributes:
        weight: Weight of the KL term (0: off).
        top_k: Teacher tokens kept per position.
    """

    weight: float = 0.0
    top_k: int = 32

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"distillation weight must be >= 0, got {self.weight}")
        if self.top_k < 1:
            raise ValueError(f"distillation top_k must be >= 1, got {self.top_k}")

    @property
    def enabled(self) -> bool:
        """Whether the KL term is computed."""
        return self.weight > 0


def top_k_kl(teacher: TargetLogits, student: TargetLogits, top_k: int) -> torch.Tensor:
    """Per-row sums over target positions of KL(teacher top-k || student).

    The teacher's top-k probabilities are renormalised; the student's log-probabilities are
    its full softmax's, read at the teacher's tokens.
    """
    if teacher.logits.shape != student.logits.shape:
        raise ValueError(
            f"teacher logits {tuple(teacher.logits.shape)} and student logits "
            f"{tuple(student.logits.shape)} do not cover the same target positions"
        )
    values, indices = teacher.logits.topk(min(top_k, teacher.logits.shape[-1]), dim=-1)
    teacher_log = F.log_softmax(values, dim=-1)
    student_log = F.log_softmax(student.logits, dim=-1).gather(-1, indices)
    kl = (teacher_log.exp() * (teacher_log - student_log)).sum(dim=-1)
    return (kl * (student.labels != IGNORE_INDEX)).sum(dim=1)


def target_losses(
    compressor: MemoryMaker,
    prompts: Sequence[Sequence[PromptPart]],
    targets: Sequence[Sequence[int]],
    *,
    teacher_prompts: Sequence[Sequence[PromptPart] | None] | None = None,
    distillation: Distillation | None = None,
) -> tuple[torch.Tensor, list[int], torch.Tensor | None, int]:
    """Per-row loss sums under the frozen decoder: cross-entropy, plus distillation when asked.

    Args:
        compressor: The compressor (its frozen decoder scores the targets).
        prompts: The student prompts (with slots).
        targets: Target token ids of each row.
        teacher_prompts: Per row, the same prompt with the text in place of the slots
            (``None``: that row is not distilled).
        distillation: The KL term's settings (``None`` or weight 0: cross-entropy only).

    Returns:
        ``(cross-entropy sums (batch,), target token counts, KL sums (batch,) or None,
        distilled target tokens)``, with gradients; the objective adds ``weight * KL``.
    """
    student = target_logits(compressor, prompts, targets)
    losses, counts = token_losses(student)
    if distillation is None or not distillation.enabled or teacher_prompts is None:
        return losses, counts, None, 0
    rows = [i for i, prompt in enumerate(teacher_prompts) if prompt is not None]
    kl = losses.new_zeros(losses.shape)
    if rows:
        keep = student.logits.shape[1] + 1
        with torch.no_grad():
            teacher = target_logits(
                compressor, [teacher_prompts[i] for i in rows], [targets[i] for i in rows], keep=keep
            )
        index = torch.tensor(rows, device=losses.device)
        picked = TargetLogits(student.logits[index], student.labels[index])
        kl = kl.index_add(0, index, top_k_kl(teacher, picked, distillation.top_k))
    return losses, counts, kl, sum(counts[i] for i in rows)


def _output(
    losses: torch.Tensor,
    counts: list[int],
    kinds: Sequence[str],
    source_tokens: int,
    kl: torch.Tensor | None = None,
    kl_tokens: int = 0,
    distillation: Distillation | None = None,
) -> ObjectiveOutput:
    """The micro-batch's output: cross-entropy per kind, the KL as kind ``"kl"``, and their
    weighted sum as the loss."""
    parts: dict[str, tuple[float, int]] = {}
    detached = losses.detach().float().cpu().tolist()
    for kind, loss, count in zip(kinds, detached, counts):
        total, tokens = parts.get(kind, (0.0, 0))
        parts[kind] = (total + loss, tokens + count)
    total_loss = losses.sum()
    if kl is not None and distillation is not None:
        parts["kl"] = (float(kl.detach().sum()), kl_tokens)
        total_loss = total_loss + distillation.weight * kl.sum()
    return ObjectiveOutput(total_loss, sum(counts), source_tokens, parts)


# --------------------------------------------------------------------------- objectives
class PretrainObjective:
    """ICAE pretraining: autoencoding and continuation, mixed per example by the data stream.

    Args:
        reconstruct_eos: Append EOS to reconstruction targets, so the decoder learns where a
            segment ends (and reconstructions stop by themselves).
        distillation: Distil continuation (``lm``) examples from the decoder reading the
            segment's text (autoencoding has no natural teacher: the frozen decoder was never
            asked to repeat a text, so those examples keep the cross-entropy alone).
    """

    name = "pretrain"

    def __init__(self, *, reconstruct_eos: bool = True, distillation: Distillation | None = None) -> None:
        self.reconstruct_eos = reconstruct_eos
        self.distillation = distillation
        self.kinds: tuple[str, ...] = ("ae", "lm") + (("kl",) if distillation and distillation.enabled else ())

    def __call__(self, compressor: MemoryMaker, examples: Sequence[PretrainExample]) -> ObjectiveOutput:
        slots = encode_contexts(compressor, [[example.segment] for example in examples])
        tokenizer = compressor.tokenizer
        eos = tokenizer.eos_token_id
        prompts, targets, teachers = [], [], []
        for example, memory in zip(examples, slots):
            if example.kind == "ae":
                prompts.append(reconstruct_prompt(memory))
                targets.append(example.segment + ([eos] if self.reconstruct_eos and eos is not None else []))
                teachers.append(None)
            else:
                prompts.append(continue_prompt(memory))
                targets.append(example.continuation)
                teachers.append([tokenizer.decode(example.segment)])
        losses, counts, kl, kl_tokens = target_losses(
            compressor, prompts, targets, teacher_prompts=teachers, distillation=self.distillation
        )
        source = sum(len(example.segment) for example in examples)
        return _output(losses, counts, [example.kind for example in examples], source, kl, kl_tokens, self.distillation)


class QAObjective:
    """Fine-tuning on QA over slots: gold and distractor passages -> the first reference answer.

    Args:
        max_answer_tokens: Truncate answer targets to this many tokens.
        distillation: Distil the answer positions from the decoder reading the passages' text.
    """

    name = "qa"

    def __init__(self, *, max_answer_tokens: int = 48, distillation: Distillation | None = None) -> None:
        self.max_answer_tokens = max_answer_tokens
        self.distillation = distillation
        self.kinds: tuple[str, ...] = ("qa",) + (("kl",) if distillation and distillation.enabled else ())

    def __call__(self, compressor: MemoryMaker, examples: Sequence[QAExample]) -> ObjectiveOutput:
        tokenizer = compressor.tokenizer
        unique = list(dict.fromkeys(context for example in examples for context in example.contexts))
        segments = [compressor.segment(context) for context in unique]
        slots = dict(zip(unique, encode_contexts(compressor, segments)))
        prompts = [qa_prompt(tokenizer, [slots[c] for c in example.contexts], example.question) for example in examples]
        targets = [qa_target_ids(tokenizer, example.answers[0], self.max_answer_tokens) for example in examples]
        teachers = [qa_prompt(tokenizer, list(example.contexts), example.question) for example in examples]
        losses, counts, kl, kl_tokens = target_losses(
            compressor, prompts, targets, teacher_prompts=teachers, distillation=self.distillation
        )
        source = sum(len(s) for segs in segments for s in segs)
        return _output(losses, counts, ["qa"] * len(examples), source, kl, kl_tokens, self.distillation)


class QAWithContinuationObjective:
    """QA fine-tuning mixed with label-free continuation examples (KV-Distill's generic recipe).

    A micro-batch of :class:`~memrag.data.examples.QAExample` and continuation
    :class:`~memrag.data.examples.PretrainExample` (from
    :class:`~memrag.data.mixing.InterleavedStream`) is split by type: QA examples go to
    ``qa``, continuation examples to ``continuation`` (the decoder reading the slots must
    continue the passage as it does reading the text: cross-entropy plus, when the objective
    has distillation, the KL from the text-reading decoder). The losses are added, the
    continuation's scaled by ``continuation_weight``; the log keeps them apart (``loss_qa``,
    ``loss_lm``, ``loss_kl``).

    Args:
        qa: The QA objective.
        continuation: The continuation objective (autoencoding examples are refused).
        continuation_weight: Weight of the continuation loss against the QA loss.
    """

    name = "qa+continuation"

    def __init__(self, qa: QAObjective, continuation: PretrainObjective, *, continuation_weight: float = 1.0) -> None:
        if continuation_weight < 0:
            raise ValueError(f"continuation_weight must be >= 0, got {continuation_weight}")
        self.qa = qa
        self.continuation = continuation
        self.continuation_weight = continuation_weight
        # the QA kinds, then the continuation's (autoencoding is never mixed in), each once
        self.kinds: tuple[str, ...] = tuple(
            dict.fromkeys((*qa.kinds, *(kind for kind in continuation.kinds if kind != "ae")))
        )

    def __call__(self, compressor: MemoryMaker, examples: Sequence[Any]) -> ObjectiveOutput:
        questions = [example for example in examples if isinstance(example, QAExample)]
        passages = [example for example in examples if isinstance(example, PretrainExample)]
        if len(questions) + len(passages) != len(examples):
            raise TypeError("examples must be QAExample or PretrainExample")
        if any(example.kind != "lm" for example in passages):
            raise ValueError("continuation examples must be of kind 'lm' (autoencoding is not mixed into fine-tuning)")
        outputs = []
        if questions:
            outputs.append((self.qa(compressor, questions), 1.0))
        if passages:
            outputs.append((self.continuation(compressor, passages), self.continuation_weight))
        parts: dict[str, tuple[float, int]] = {}
        for output, _ in outputs:
            for kind, (value, tokens) in output.parts.items():
                total, count = parts.get(kind, (0.0, 0))
                parts[kind] = (total + value, count + tokens)
        loss_sum = outputs[0][0].loss_sum * outputs[0][1]
        for output, weight in outputs[1:]:
            loss_sum = loss_sum + output.loss_sum * weight
        return ObjectiveOutput(
            loss_sum=loss_sum,
            num_tokens=sum(output.num_tokens for output, _ in outputs),
            source_tokens=sum(output.source_tokens for output, _ in outputs),
            parts=parts,
        )
