"""What the rest of memrag needs from a compressor, as typed protocols.

:class:`~memrag.compressor.Compressor` satisfies both; so does any wrapper that delegates to
one (the benchmark's timed compressor, test doubles). Annotating with these instead of
``Any`` states the contract: the RAG core, the evals and the server decode through a
:class:`DecodingModel`; the store and the memory builders make memory through a
:class:`MemoryMaker`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from memrag.compressor.config import CompressorConfig
    from memrag.generation import Generation, GenerationOptions
    from memrag.memory.kv import KVSlots
    from memrag.memory.slots import Slots
    from memrag.splice import PromptPart, SpliceBatch


class DecodingModel(Protocol):
    """The frozen decoder, its tokenizer and the one splice path."""

    config: CompressorConfig
    tokenizer: Any

    @property
    def fingerprint(self) -> str:
        """Identity of the compressor (the memory it makes and reads)."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the decoder runs."""
        ...

    @property
    def causal_lm(self) -> Any:
        """The Hugging Face causal LM (decoder mode: its adapter disabled)."""
        ...

    def decoder_mode(self) -> AbstractContextManager[Any]:
        """The frozen decoder, for the duration of the block."""
        ...

    def build(
        self,
        prompts: Sequence[Sequence[PromptPart]],
        targets: Sequence[str | Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> SpliceBatch:
        """Prompt parts (text, slots, K/V memory) -> decoder inputs."""
        ...

    def generate(
        self, prompts: Sequence[Sequence[PromptPart]], options: GenerationOptions | None = None
    ) -> list[Generation]:
        """Greedy or sampled answers to a batch of spliced prompts."""
        ...

    def stream(
        self, prompt: Sequence[PromptPart], options: GenerationOptions | None = None
    ) -> Iterator[str]:
        """The answer to one prompt, piece by piece (a cancellable ``TextStream``)."""
        ...


class MemoryMaker(DecodingModel, Protocol):
    """A :class:`DecodingModel` that also cuts text into segments and encodes them into slots."""

    @property
    def hidden_size(self) -> int:
        """Width of an embedding slot."""
        ...

    def segment(self, text: str) -> list[list[int]]:
        """``text``'s token ids cut into segments of at most ``config.segment_length``."""
        ...

    def segment_ids(self, ids: Sequence[int]) -> list[list[int]]:
        """Token ids cut into segments."""
        ...

    def encode_segments(self, segments: Sequence[Sequence[int]]) -> list[Any]:
        """Each segment's slots (with gradients; training calls this)."""
        ...

    def join_segments(self, pieces: Sequence[Any], num_tokens: int, fingerprint: str = "") -> Slots | KVSlots:
        """One text's slots from its segments' slots."""
        ...

    def compress(
        self, texts: Sequence[str] | str, *, batch_size: int = 16, show_progress: bool = False
    ) -> list[Slots | KVSlots]:
        """Each text's memory slots."""
        ...
