"""Fidelity: how well a chunk survives compression, measured once at index time.

The score is the frozen decoder's geometric-mean per-token probability of reconstructing
the chunk from ``[slots, Task.RECONSTRUCT]`` (teacher-forced): ``exp(-mean token NLL)``, in
``(0, 1]``, higher is better. Chunks that compress badly (numbers, code, tables, or any
chunk under an untrained compressor) score low, and a store flags those below its threshold
with ``use_text`` so query-time consumers splice their text.

K/V memory (pruned, or a trained compressor's K/V slots) is scored the same way, with the
prompt ``[memory, "Repeat the previous context exactly."]`` (KVzip's reconstruction task)
instead of the learned marker (:func:`~memrag.prompts.reconstruct_prompt`); exact
K/V memory is the text's own cache and is not scored.

Cost: one batched decoder forward pass per chunk. With a large vocabulary (Gemma: 262k) the
output projection would cost more than the transformer itself, so by default the NLL is
averaged over ``sample_tokens`` target tokens spread evenly over the chunk (every n-th
token), and only their logits are computed; ``sample_tokens=None`` scores every token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from memrag.memory.kv import KVSlots
from memrag.memory.slots import Slots
from memrag.splice import IGNORE_INDEX, Task

if TYPE_CHECKING:
    from memrag.protocols import DecodingModel

#: How to serve slots after all when a store's threshold flags most of its chunks.
SET_THRESHOLD_HINT = (
    "`memrag index set-threshold STORE T` lowers a store's threshold and re-flags its stored "
    "scores without re-compressing (`memrag index info STORE` shows their quantiles)"
)


def mostly_text(flagged: int, total: int) -> bool:
    """Whether more than half of ``total`` chunks are flagged to be served as text."""
    return total > 0 and flagged > total / 2


class FidelityScorer:
    """Scores chunks by reconstruction likelihood under the frozen decoder.

    Args:
        compressor: The compressor whose decoder reads the slots.
        max_tokens: Reconstruct at most this many target tokens per chunk (EOS included).
        sample_tokens: Score this many of them, evenly spaced (``None``: all).
        logits_budget: Largest ``rows x scored positions x vocabulary`` logits tensor
            computed at once; batches are split to stay under it.
    """

    def __init__(
        self,
        compressor: DecodingModel,
        *,
        max_tokens: int = 512,
        sample_tokens: int | None = 32,
        logits_budget: int = 1 << 27,
    ) -> None:
        if sample_tokens is not None and sample_tokens < 1:
            raise ValueError(f"sample_tokens must be >= 1 or None, got {sample_tokens}")
        self.compressor = compressor
        self.max_tokens = max_tokens
        self.sample_tokens = sample_tokens
        self.logits_budget = logits_budget

    def _vocab_size(self) -> int:
        return int(self.compressor.causal_lm.get_output_embeddings().weight.shape[0])

    def _offsets(self, targets: int) -> set[int]:
        """Distances from the end of the row of the positions whose predictions are scored.

        The logit at position ``L - 1 - o`` predicts the token at ``L - o``; targets end the
        (left-padded) rows, so ``o = 1 .. targets`` covers every target of a row.
        """
        if self.sample_tokens is None or self.sample_tokens >= targets:
            return set(range(1, targets + 1))
        stride = targets / self.sample_tokens
        return {targets - int(i * stride) for i in range(self.sample_tokens)}

    def score(self, texts: Sequence[str], slots: Sequence[Slots | KVSlots]) -> list[float]:
        """Fidelity of each ``(text, memory)`` pair, in input order."""
        if len(texts) != len(slots):
            raise ValueError(f"{len(texts)} texts but {len(slots)} slot sets")
        if not texts:
            return []
        if any(memory.packed_kv for memory in slots):
            return [self._score_kv(text, memory) for text, memory in zip(texts, slots)]  # type: ignore[arg-type]
        splicer = self.compressor.splicer
        lengths = [min(len(splicer.tokenize(t)) + 1, self.max_tokens) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i], reverse=True)
        vocab = self._vocab_size()
        scores: dict[int, float] = {}
        batch: list[int] = []
        offsets: set[int] = set()
        for index in order + [-1]:
            grown = offsets | self._offsets(lengths[index]) if index >= 0 else offsets
            if batch and (index < 0 or (len(batch) + 1) * len(grown) * vocab > self.logits_budget):
                values = self._score_batch(
                    [texts[i] for i in batch], [slots[i] for i in batch], offsets
                )
                scores.update(zip(batch, values))
                batch, offsets = [], set()
                grown = self._offsets(lengths[index]) if index >= 0 else set()
            if index >= 0:
                batch.append(index)
                offsets = grown
        return [scores[i] for i in range(len(texts))]

    def _score_kv(self, text: str, memory: KVSlots) -> float:
        """Reconstruction likelihood of ``text`` from its K/V memory (one prompt)."""
        from memrag.prompts import reconstruct_prompt

        compressor = self.compressor
        splicer = compressor.splicer
        ids = splicer.tokenize(text)
        if len(ids) > self.max_tokens:
            text = compressor.tokenizer.decode(ids[: self.max_tokens])
        # Tokenized part by part, as the splicer does.
        prompt = reconstruct_prompt(memory)  # [memory, the repeat instruction]
        instruction = splicer.tokenize(prompt[1])
        tail_ids = instruction + splicer.tokenize(text)
        lead = len(instruction)
        count = len(tail_ids) - lead
        if self.sample_tokens is None or self.sample_tokens >= count:
            picked = list(range(count))
        else:
            picked = sorted({int(i * count / self.sample_tokens) for i in range(self.sample_tokens)})
        with torch.inference_mode():
            batch = compressor.build([[*prompt, text]], tail="run")
            cached = batch.cache.get_seq_length()
            # The logit at tail index t predicts tail token t + 1.
            keep = torch.tensor([lead + j - 1 for j in picked], device=batch.inputs_embeds.device)
            gold = torch.tensor([tail_ids[lead + j] for j in picked], device=keep.device)
            with compressor.decoder_mode() as decoder:
                logits = decoder(
                    inputs_embeds=batch.inputs_embeds[:, cached:],
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids[:, cached:],
                    cache=batch.cache,
                    logits_to_keep=keep,
                ).logits[0]
            nll = F.cross_entropy(logits.float(), gold, reduction="mean")
        return math.exp(-float(nll))

    def _score_batch(self, texts: list[str], slots: list[Slots], offsets: set[int]) -> list[float]:
        compressor = self.compressor
        with torch.inference_mode():
            batch = compressor.build(
                [[memory, Task.RECONSTRUCT] for memory in slots],
                texts,
                max_target_tokens=self.max_tokens,
            )
            labels = batch.labels
            length = labels.shape[1]
            ordered = sorted(offsets, reverse=True)
            keep = torch.tensor([length - 1 - o for o in ordered], device=labels.device)
            gold = labels[:, keep + 1].clone()
            # Each row counts only its own sample, so its score does not depend on the batch.
            for row, target_count in enumerate((labels != IGNORE_INDEX).sum(dim=1).tolist()):
                own = self._offsets(int(target_count))
                for column, offset in enumerate(ordered):
                    if offset not in own:
                        gold[row, column] = IGNORE_INDEX
            kwargs = dict(
                inputs_embeds=batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
            )
            with compressor.decoder_mode() as decoder:
                try:
                    logits = decoder(**kwargs, logits_to_keep=keep).logits
                except TypeError:  # a model without logits_to_keep
                    logits = decoder(**kwargs).logits[:, keep]
            nll = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                gold.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="none",
            ).view(gold.shape)
            counts = (gold != IGNORE_INDEX).sum(dim=1).clamp(min=1)
            mean = (nll.sum(dim=1) / counts).tolist()
        return [math.exp(-value) for value in mean]


#: How many words of the chunk each agreement probe quotes, and how many it asks for.
PROBE_PREFIX_WORDS = 5
PROBE_TARGET_WORDS = 6


def cloze_probes(text: str, count: int) -> list[tuple[str, str]]:
    """``count`` questions made from ``text`` itself, with the words that answer them.

    Each probe quotes a few words of the chunk and asks what follows; the cut points are spread
    evenly over the chunk (not only its start, where compressed memory is best). A chunk too
    short to cut yields fewer probes (none under two words).

    Returns:
        ``(question, answer)`` pairs.
    """
    words = text.split()
    if len(words) < 2:
        return []
    cuts = sorted({min(max(1, int(len(words) * (i + 1) / (count + 1))), len(words) - 1) for i in range(count)})
    probes = []
    for cut in cuts:
        prefix = " ".join(words[max(0, cut - PROBE_PREFIX_WORDS) : cut])
        answer = " ".join(words[cut : cut + PROBE_TARGET_WORDS])
        probes.append((f'In the passage, which words come right after "{prefix}"?', answer))
    return probes


class AgreementScorer:
    """Scores chunks by how closely the frozen decoder answers from their memory as from their text.

    For each chunk, :func:`cloze_probes` asks a few questions about the chunk in the QA prompt
    the compressor was trained with (:func:`memrag.prompts.qa_prompt`); the frozen
    decoder reads the chunk once as text (the teacher) and once as its memory (the student),
    and the answer tokens are teacher-forced in both. The score is ``exp(-KL)``, the mean
    per-token KL divergence from the teacher's next-token distribution to the student's
    turned into ``(0, 1]``: 1 when the memory makes the decoder predict exactly what the text
    does. Unlike reconstruction likelihood it asks nothing that QA training never taught (a
    verbatim repeat), so it judges trained K/V slots by what they are used for.

    The KL is over the whole vocabulary (a few dozen answer positions per chunk: cheap next to
    the two prefills).

    Args:
        compressor: The compressor whose decoder reads the memory.
        probes: Questions per chunk.
    """

    def __init__(self, compressor: DecodingModel, *, probes: int = 4) -> None:
        if probes < 1:
            raise ValueError(f"probes must be >= 1, got {probes}")
        self.compressor = compressor
        self.probes = probes

    def measure(self, texts: Sequence[str], memories: Sequence[Slots | KVSlots]) -> list[dict[str, float]]:
        """Per chunk: ``{"kl": mean KL per answer token, "top1": share of answer tokens whose
        most likely prediction is the same from memory as from text}``."""
        from memrag.prompts import qa_prompt, qa_target_ids
        from memrag.scoring import target_logits

        if len(texts) != len(memories):
            raise ValueError(f"{len(texts)} texts but {len(memories)} memories")
        tokenizer = self.compressor.tokenizer
        results = []
        for text, memory in zip(texts, memories):
            probes = cloze_probes(text, self.probes)
            if not probes:
                results.append({"kl": 0.0, "top1": 1.0})  # nothing to lose
                continue
            targets = [qa_target_ids(tokenizer, answer) for _, answer in probes]
            with torch.inference_mode():
                teacher = target_logits(
                    self.compressor, [qa_prompt(tokenizer, [text], q) for q, _ in probes], targets
                )
                student = target_logits(
                    self.compressor, [qa_prompt(tokenizer, [memory], q) for q, _ in probes], targets
                )
                mask = student.labels != IGNORE_INDEX
                tokens = max(int(mask.sum()), 1)
                teacher_log = F.log_softmax(teacher.logits, dim=-1)
                student_log = F.log_softmax(student.logits, dim=-1)
                per_position = (teacher_log.exp() * (teacher_log - student_log)).sum(dim=-1)
                kl = float((per_position * mask).sum()) / tokens
                same = teacher.logits.argmax(-1) == student.logits.argmax(-1)
                top1 = float((same & mask).sum()) / tokens
            results.append({"kl": kl, "top1": top1})
        return results

    def score(self, texts: Sequence[str], memories: Sequence[Slots | KVSlots]) -> list[float]:
        """Agreement of each ``(text, memory)`` pair, ``exp(-KL)`` in ``(0, 1]``, in input order."""
        return [math.exp(-m["kl"]) for m in self.measure(texts, memories)]
