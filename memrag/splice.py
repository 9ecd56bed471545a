"""The single splice path: prompts with memory -> decoder inputs (and training labels).

A prompt is a sequence of *parts*: plain text, a document's :class:`~memrag.memory.slots.Slots`
(embedding slots), a :class:`Task` marker, or a chunk's K/V memory
(:class:`~memrag.memory.kv.KVSlots`). :class:`Splicer` turns a batch of prompts without K/V
parts into left-padded ``inputs_embeds``, attention mask and position ids for the frozen
decoder. Training appends target text and gets labels that are ``-100`` everywhere but on the
target tokens; inference passes the same batch to ``generate``. Prompts with K/V parts take
the K/V prefill (:class:`memrag.prefill.KVPrefill`), which builds on
:meth:`Splicer.embed_runs` and returns the same :class:`SpliceBatch`, with a cache holding
the prompt's first positions. Every consumer (training, eval, bench, LangChain, the server)
goes through :meth:`memrag.compressor.Compressor.build`, which picks the path.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import nn

from memrag.memory.kv import KVSlots
from memrag.memory.slots import Slots

IGNORE_INDEX = -100


class Task(str, enum.Enum):
    """Learned task markers, placed after slots. They are vectors outside the vocabulary."""

    RECONSTRUCT = "reconstruct"
    CONTINUE = "continue"
    ANSWER = "answer"


PromptPart = Union[str, Slots, Task, KVSlots]


@dataclass
class SpliceBatch:
    """Left-padded decoder inputs for a batch of spliced prompts.

    Attributes:
        inputs_embeds: ``(batch, length, hidden)`` input embeddings. With a ``cache``, the
            first ``cache length`` columns are placeholders (``generate`` skips them).
        attention_mask: ``(batch, length)``, 0 on padding.
        position_ids: ``(batch, length)``: each position's rotary position (counting from 0
            at each row's first real position; with pruned K/V memory they can jump).
        labels: ``(batch, length)`` token ids on target positions, ``-100`` elsewhere; ``None``
            when no targets were given.
        prompt_lengths: Prompt positions of each row (cached ones included).
        cache: A Hugging Face cache holding the first positions of every row (K/V memory and
            the text around it), or ``None``. It is consumed by one ``generate`` call.
        prefilled_lengths: Positions of each row the decoder computes for this batch (all of
            them without a cache; with one, the text the K/V memory did not cover).
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    prompt_lengths: list[int]
    cache: Any = None
    prefilled_lengths: list[int] | None = None

    def __post_init__(self) -> None:
        if self.prefilled_lengths is None:
            self.prefilled_lengths = list(self.prompt_lengths)


@dataclass
class EmbeddedRun:
    """A run of consecutive non-K/V prompt parts, embedded.

    Attributes:
        embeds: ``(length, hidden)`` in the decoder's dtype.
        token_ids: The run's token ids when it is plain text (``None`` when it holds slots or
            task markers).
    """

    embeds: torch.Tensor
    token_ids: tuple[int, ...] | None

    @property
    def length(self) -> int:
        """Positions the run takes."""
        return int(self.embeds.shape[0])


def has_kv_parts(prompts: Sequence[Sequence[PromptPart]]) -> bool:
    """Whether any prompt holds K/V memory (and so needs the K/V prefill)."""
    return any(getattr(part, "packed_kv", False) for parts in prompts for part in parts)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch, as ``generate`` computes them."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def left_padded(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of embeddings ``(length_i, hidden)`` stacked left-padded: ``(inputs, attention_mask)``."""
    length = max(row.shape[0] for row in rows)
    inputs = rows[0].new_zeros((len(rows), length, rows[0].shape[-1]))
    mask = torch.zeros((len(rows), length), dtype=torch.long, device=rows[0].device)
    for i, row in enumerate(rows):
        inputs[i, length - row.shape[0] :] = row
        mask[i, length - row.shape[0] :] = 1
    return inputs, mask


class Splicer:
    """Builds decoder inputs from prompts made of text, slots and task markers.

    Args:
        tokenizer: The base model's tokenizer.
        token_embeddings: The base model's input embedding module (it applies any scaling the
            model does, e.g. Gemma's sqrt(hidden) factor).
        task_embeddings: ``(len(Task), hidden)`` learned marker vectors, in :class:`Task` order.
        add_bos: Prepend the tokenizer's BOS token to each prompt (turn off when the prompt was
            rendered by a chat template that already contains it).
    """

    def __init__(
        self,
        tokenizer: Any,
        token_embeddings: nn.Module,
        task_embeddings: torch.Tensor,
        *,
        add_bos: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.token_embeddings = token_embeddings
        self.task_embeddings = task_embeddings
        self.add_bos = add_bos

    @property
    def _weight(self) -> torch.Tensor:
        return self.token_embeddings.weight

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens added."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _embed_ids(self, ids: list[int]) -> torch.Tensor:
        tensor = torch.tensor(ids, dtype=torch.long, device=self._weight.device)
        return self.token_embeddings(tensor)

    def embed_runs(
        self, parts: Sequence[PromptPart], *, add_bos: bool | None = None
    ) -> list[EmbeddedRun | KVSlots]:
        """Embeds one prompt into runs: consecutive non-K/V parts embedded together, K/V parts as they are.

        The BOS token starts the first run (unless turned off, or the prompt already starts
        with its text, as a chat template writes it).
        """
        weight = self._weight
        runs: list[EmbeddedRun | KVSlots] = []
        pieces: list[torch.Tensor] = []
        ids: list[int] = []
        run_ids: list[int] | None = []
        bos = self.tokenizer.bos_token_id
        bos_text = self.tokenizer.bos_token
        # A prompt rendered by a chat template already starts with the BOS token's text.
        starts_with_bos = bool(parts) and isinstance(parts[0], str) and bool(bos_text) and parts[0].startswith(bos_text)
        if (self.add_bos if add_bos is None else add_bos) and bos is not None and not starts_with_bos:
            ids.append(bos)
        task_order = list(Task)

        def flush_ids() -> None:
            nonlocal ids
            if ids:
                pieces.append(self._embed_ids(ids))
                if run_ids is not None:
                    run_ids.extend(ids)
                ids = []

        def close_run() -> None:
            nonlocal pieces, run_ids
            flush_ids()
            if pieces:
                embeds = torch.cat(pieces, dim=0)
                runs.append(EmbeddedRun(embeds, tuple(run_ids) if run_ids is not None else None))
            pieces, run_ids = [], []

        for part in parts:
            if isinstance(part, Task):
                flush_ids()
                run_ids = None
                marker = self.task_embeddings[task_order.index(part)]
                pieces.append(marker.to(device=weight.device, dtype=weight.dtype).unsqueeze(0))
            elif isinstance(part, Slots):
                flush_ids()
                run_ids = None
                if part.kind != "embedding":
                    raise ValueError(f"cannot splice {part.kind!r} slots through inputs_embeds")
                if part.tensor.shape[-1] != weight.shape[-1]:
                    raise ValueError(
                        f"slots have hidden size {part.tensor.shape[-1]}, decoder expects "
                        f"{weight.shape[-1]}"
                    )
                pieces.append(part.tensor.to(device=weight.device, dtype=weight.dtype))
            elif isinstance(part, KVSlots):
                close_run()
                runs.append(part)
            elif isinstance(part, str):
                ids.extend(self.tokenize(part))
            else:
                raise TypeError(
                    f"prompt parts must be str, Slots, KVSlots or Task, got {type(part).__name__}"
                )
        close_run()
        if not runs:
            raise ValueError("cannot splice an empty prompt")
        return runs

    def embed_prompt(self, parts: Sequence[PromptPart], *, add_bos: bool | None = None) -> torch.Tensor:
        """Embeds one prompt without K/V parts into ``(length, hidden)``, in the decoder's dtype."""
        runs = self.embed_runs(parts, add_bos=add_bos)
        if any(isinstance(run, KVSlots) for run in runs):
            raise ValueError(
                "prompts with K/V memory need the K/V prefill: use Compressor.build, not "
                "Splicer.build / embed_prompt"
            )
        return torch.cat([run.embeds for run in runs], dim=0)  # type: ignore[union-attr]

    def target_ids(
        self,
        target: str | Sequence[int],
        *,
        append_eos: bool = True,
        max_target_tokens: int | None = None,
    ) -> list[int]:
        """Token ids of a training target (text is tokenized; EOS appended; truncated)."""
        ids = self.tokenize(target) if isinstance(target, str) else list(target)
        if append_eos and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return ids[:max_target_tokens] if max_target_tokens is not None else ids

    def build(
        self,
        prompts: Sequence[Sequence[PromptPart]],
        targets: Sequence[str | Sequence[int]] | None = None,
        *,
        append_eos: bool = True,
        max_target_tokens: int | None = None,
    ) -> SpliceBatch:
        """Builds a left-padded batch from ``prompts`` (and training ``targets``).

        Args:
            prompts: One sequence of parts per row.
            targets: Optional text (or token ids) each row must be trained to produce after its
                prompt.
            append_eos: End each target with the EOS token, so the model learns to stop.
            max_target_tokens: Truncate targets to this many tokens (EOS included).
        """
        if targets is not None and len(targets) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
        weight = self._weight
        rows: list[torch.Tensor] = []
        label_rows: list[list[int]] = []
        prompt_lengths: list[int] = []
        for index, parts in enumerate(prompts):
            embedded = self.embed_prompt(parts)
            prompt_lengths.append(embedded.shape[0])
            row_labels = [IGNORE_INDEX] * embedded.shape[0]
            if targets is not None:
                target_ids = self.target_ids(
                    targets[index], append_eos=append_eos, max_target_tokens=max_target_tokens
                )
                if not target_ids:
                    raise ValueError(f"target {index} is empty")
                embedded = torch.cat([embedded, self._embed_ids(target_ids)], dim=0)
                # Position t predicts token t+1: the model sees the target shifted inside HF's
                # loss, so labels sit on the target tokens themselves.
                row_labels += target_ids
            rows.append(embedded)
            label_rows.append(row_labels)
        inputs_embeds, attention_mask = left_padded(rows)
        length = inputs_embeds.shape[1]
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long, device=weight.device)
        for i, row in enumerate(rows):
            row_labels = torch.tensor(label_rows[i], dtype=torch.long, device=weight.device)
            labels[i, length - row.shape[0] :] = row_labels
        return SpliceBatch(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            labels=labels if targets is not None else None,
            prompt_lengths=prompt_lengths,
        )
