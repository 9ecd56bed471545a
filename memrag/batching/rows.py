"""One row's text as its tokens arrive: streamed chunks, stop strings, token count, finish reason.

:class:`RowText` does for one row of a batch what :func:`memrag.generation.stream` does for a
single prompt, with the same pieces and so the same answers:

* the text is released the way ``TextIteratorStreamer`` releases it (transformers'
  ``TextStreamer`` logic), then passed through :class:`~memrag.generation.StopStringFilter`,
  which holds back anything that could start a stop string and cuts the text before one;
* the row stops where ``generate`` stops it: at the end-of-sequence token, when the decoded
  last tokens contain a stop string (:class:`~memrag.generation.StopOnStrings`' rule), or at
  ``max_new_tokens``;
* :attr:`num_tokens` and :attr:`finish_reason` are those of :class:`~memrag.generation.TextStream`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TextStreamer

from memrag.generation import (
    Generation,
    GenerationOptions,
    StopOnStrings,
    StopStringFilter,
    finish_reason,
    tokens_generated,
)


class _ChunkStreamer(TextStreamer):
    """``TextStreamer`` that collects the released text instead of printing it."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.chunks: list[str] = []

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.chunks.append(text)

    def take(self) -> list[str]:
        chunks, self.chunks = self.chunks, []
        return chunks


class RowText:
    """Turns one row's generated tokens into text and decides when the row is done.

    Args:
        tokenizer: The decoder's tokenizer.
        options: The row's decoding options (``max_new_tokens``, ``stop``).
        prompt_positions: Context positions of the row's prompt (reported in its
            :class:`~memrag.generation.Generation`).
        prefilled_positions: Prompt positions the decoder computed for it.
    """

    def __init__(
        self,
        tokenizer: Any,
        options: GenerationOptions,
        *,
        prompt_positions: int = 0,
        prefilled_positions: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.options = options
        self.prompt_positions = prompt_positions
        self.prefilled_positions = prefilled_positions
        self.tokens: list[int] = []
        self.text = ""
        self.done = False
        self._eos = tokenizer.eos_token_id
        self._streamer = _ChunkStreamer(tokenizer)
        self._stops = StopStringFilter(options.stop)
        self._stop_rule = StopOnStrings(tokenizer, options.stop) if options.stop else None

    def push(self, token: int) -> str:
        """Adds the next generated token; returns the text now safe to emit (may be empty).

        After the token that ends the row, :attr:`done` is true and the returned text
        includes the row's held-back tail.
        """
        if self.done:
            raise RuntimeError("this row is already done")
        self.tokens.append(int(token))
        emitted = self._filter(self._streamer_put(token))
        self.done = (
            token == self._eos
            or self._stops.stopped
            or (self._stop_rule is not None and self._stop_rule.hit(self.tokens))
            or len(self.tokens) >= self.options.max_new_tokens
        )
        if self.done:
            self._streamer.end()
            emitted += self._filter(self._streamer.take())
            emitted += self._stops.flush()
        self.text += emitted
        return emitted

    def _streamer_put(self, token: int) -> list[str]:
        self._streamer.put(torch.tensor([token]))
        return self._streamer.take()

    def _filter(self, chunks: list[str]) -> str:
        return "".join(self._stops.push(chunk) for chunk in chunks)

    @property
    def num_tokens(self) -> int:
        """Tokens generated (an end-of-sequence token included)."""
        return tokens_generated(self.tokens, self._eos)

    @property
    def finish_reason(self) -> str:
        """``"stop"`` (EOS or a stop string) or ``"length"``, as :func:`memrag.generation.generate` says."""
        return finish_reason(self.tokens, self._eos, self._stops.stopped, self.options.max_new_tokens)

    def generation(self) -> Generation:
        """The row's answer so far, as a :class:`~memrag.generation.Generation`."""
        return Generation(
            text=self.text,
            num_tokens=self.num_tokens,
            finish_reason=self.finish_reason,
            prompt_positions=self.prompt_positions,
            prefilled_positions=self.prefilled_positions,
        )
