"""Decoding with Hugging Face ``generate`` over spliced inputs: options, stop strings, streaming."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from memrag.splice import SpliceBatch


@dataclass
class GenerationOptions:
    """How to decode.

    Args:
        max_new_tokens: Maximum number of tokens to generate.
        temperature: 0 means greedy decoding; above 0 samples.
        top_p: Nucleus sampling mass (sampling only).
        top_k: Top-k sampling cutoff (sampling only).
        stop: Strings that end generation; they are not included in the output.
        seed: Seed for sampling, for reproducible samples.
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    stop: Sequence[str] = field(default_factory=tuple)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.temperature < float("inf"):  # NaN fails too
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    def generate_kwargs(self, tokenizer: Any) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
            kwargs["top_k"] = self.top_k if self.top_k is not None else 0
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList([StopOnStrings(tokenizer, self.stop)])
        return kwargs


class StopOnStrings(StoppingCriteria):
    """Stops a row once its recent generated text contains a stop string.

    Only the last few tokens are decoded at each step. (transformers' own ``stop_strings``
    pre-computes a table over the whole vocabulary on every call, which costs seconds for a
    262k-token vocabulary.)
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        # Every token decodes to at least one character, so a stop string of n characters
        # lies within the last n + 1 tokens (one more for a token that straddles its start).
        self.window = max(len(s) for s in self.stop) + 1

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, -self.window :], skip_special_tokens=True)
        done = [self._found(text) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def hit(self, token_ids: Sequence[int]) -> bool:
        """Whether one row's generated ``token_ids`` end with text holding a stop string."""
        recent = self.tokenizer.decode(list(token_ids[-self.window :]), skip_special_tokens=True)
        return self._found(recent)

    def _found(self, text: str) -> bool:
        return any(s in text for s in self.stop)


@dataclass
class Generation:
    """One generated answer.

    Attributes:
        text: The decoded answer: leading whitespace dropped, cut before any stop string
            (:class:`StopStringFilter`).
        num_tokens: Tokens generated (including a stop string's tokens, not padding).
        finish_reason: ``"stop"`` (EOS or a stop string) or ``"length"``.
        prompt_positions: Decoder context positions of the prompt.
        prefilled_positions: Prompt positions the decoder computed for this answer (fewer than
            ``prompt_positions`` when K/V memory was spliced).
    """

    text: str
    num_tokens: int
    finish_reason: str
    prompt_positions: int
    prefilled_positions: int = 0


def tokens_generated(tokens: Sequence[int], eos_token_id: int | None) -> int:
    """Tokens a row generated: up to and including its end-of-sequence token, if any."""
    if eos_token_id is not None and eos_token_id in tokens:
        return list(tokens).index(eos_token_id) + 1
    return len(tokens)


def finish_reason(
    tokens: Sequence[int], eos_token_id: int | None, stopped: bool, max_new_tokens: int
) -> str:
    """``"stop"`` (EOS, a stop string — ``stopped`` —, or fewer tokens than allowed) or ``"length"``."""
    hit_eos = eos_token_id is not None and eos_token_id in tokens
    finished = hit_eos or stopped or tokens_generated(tokens, eos_token_id) < max_new_tokens
    return "stop" if finished else "length"


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cuts ``text`` before the earliest stop string; returns (text, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _seeded(options: GenerationOptions, device: torch.device) -> None:
    if options.seed is not None and options.temperature > 0:
        torch.manual_seed(options.seed)
        if device.type == "cuda":
            torch.cuda.manual_seed_all(options.seed)


def batch_inputs(model: Any, batch: SpliceBatch) -> dict[str, Any]:
    """The ``generate`` keyword arguments of a spliced batch.

    A batch with a cache (K/V memory) passes it with explicit position ids, as pruned memory
    leaves gaps that positions derived from the attention mask would not have.
    """
    inputs: dict[str, Any] = {
        "inputs_embeds": batch.inputs_embeds,
        "attention_mask": batch.attention_mask,
    }
    if batch.cache is not None:
        inputs[cache_argument(model)] = batch.cache
        inputs["position_ids"] = batch.position_ids
    return inputs


def cache_argument(model: Any) -> str:
    """The name ``generate`` takes a cache under: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    import inspect

    parameters = inspect.signature(model.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in parameters else "past_key_values"


#: Prompt positions one decoder call computes when a long prompt is prefilled in pieces.
#: Prompts with at most this many uncached positions are prefilled in one call, exactly as
#: :func:`generate` does (the eval's path), so the committed figures hold for them.
PREFILL_CHUNK_POSITIONS = 1024


class PrefillStoppedError(RuntimeError):
    """A prefill was stopped between two pieces of the prompt (its request was cancelled,
    timed out or the server is shutting down)."""


def prefill_ahead(
    decoder: Any,
    batch: SpliceBatch,
    *,
    should_stop: Callable[[], bool] | None = None,
    chunk_positions: int | None = None,
) -> SpliceBatch:
    """Computes a long prompt's positions, all but the last, ``chunk_positions`` at a time.

    Between two pieces ``should_stop`` is asked whether to go on, so a request that times out
    or is cancelled during a long prefill stops within one piece and its cache is freed.
    A prompt with at most ``chunk_positions`` positions to compute is returned unchanged (it
    is prefilled in one call by whoever decodes it). Otherwise the returned batch carries a
    cache holding every position but the last, which the caller's ``generate`` or
    :meth:`~memrag.batching.state.DecodeState.prefill` computes as usual.

    Args:
        decoder: The decoder, in decoder mode.
        batch: The spliced prompts; its cache (K/V memory), when present, is extended.
        should_stop: Called before each piece; ``True`` raises :class:`PrefillStoppedError`.
        chunk_positions: Positions per decoder call (> 0); :data:`PREFILL_CHUNK_POSITIONS`
            by default.

    Raises:
        PrefillStoppedError: ``should_stop`` returned ``True``.
    """
    from transformers import DynamicCache

    if chunk_positions is None:
        chunk_positions = PREFILL_CHUNK_POSITIONS
    if chunk_positions <= 0:
        raise ValueError(f"chunk_positions must be > 0, got {chunk_positions}")
    start = batch.cache.get_seq_length() if batch.cache is not None else 0
    end = batch.inputs_embeds.shape[1] - 1
    if end - start < chunk_positions:
        return batch
    cache = batch.cache if batch.cache is not None else DynamicCache()
    for begin in range(start, end, chunk_positions):
        if should_stop is not None and should_stop():
            raise PrefillStoppedError(f"stopped after {begin - start} of {end + 1 - start} prompt positions")
        piece_end = min(begin + chunk_positions, end)
        decoder(
            inputs_embeds=batch.inputs_embeds[:, begin:piece_end],
            attention_mask=batch.attention_mask[:, :piece_end],
            position_ids=batch.position_ids[:, begin:piece_end],
            use_cache=True,
            logits_to_keep=1,
            **{cache_argument(decoder): cache},
        )
    if should_stop is not None and should_stop():
        raise PrefillStoppedError(f"stopped after {end - start} of {end + 1 - start} prompt positions")
    return dataclasses.replace(batch, cache=cache)


def generate(
    model: Any,
    tokenizer: Any,
    batch: SpliceBatch,
    options: GenerationOptions,
    *,
    streamer: Any = None,
) -> list[Generation]:
    """Decodes every row of ``batch`` with ``model.generate``.

    ``model`` must already be in decoder mode (the compressor's adapter disabled).

    Args:
        model: The decoder.
        tokenizer: Its tokenizer.
        batch: The spliced prompts (with a cache when they hold K/V memory; it is consumed).
        options: How to decode.
        streamer: A transformers streamer passed to ``generate`` (e.g. to time the first token).
    """
    _seeded(options, batch.inputs_embeds.device)
    extra = {"streamer": streamer} if streamer is not None else {}
    with torch.inference_mode():
        output = model.generate(
            **batch_inputs(model, batch),
            **options.generate_kwargs(tokenizer),
            **extra,
        )
    results = []
    prefilled = batch.prefilled_lengths or batch.prompt_lengths
    for row, prompt_positions, computed in zip(output, batch.prompt_lengths, prefilled):
        ids = row.tolist()
        special = {tokenizer.pad_token_id, tokenizer.eos_token_id}
        hit_eos = tokenizer.eos_token_id in ids
        if hit_eos:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        num_tokens = len(ids) + int(hit_eos)
        ids = [i for i in ids if i not in special]
        text, hit_stop = answer_text(tokenizer.decode(ids, skip_special_tokens=True), options.stop)
        finished = hit_eos or hit_stop
        results.append(
            Generation(
                text=text,
                num_tokens=num_tokens,
                finish_reason="stop" if finished or num_tokens < options.max_new_tokens else "length",
                prompt_positions=prompt_positions,
                prefilled_positions=computed,
            )
        )
    return results


class StopStringFilter:
    """Turns decoded text, as it arrives, into answer text: the one place every surface's
    answer is shaped (:func:`generate`, :func:`stream` and the batched rows of
    :mod:`memrag.batching` all pass their text through it).

    * Whitespace before the answer's first character is dropped (a model without a chat
      template answers ``"Answer:"`` with ``" The Denver Broncos"``), so the first streamed
      chunk never starts with a space and streamed and non-streamed answers agree.
    * Anything that could be the start of a stop string is held back; the text is cut before
      the first stop string. Stop strings are matched on the decoded text as it was, before
      the leading whitespace was dropped.

    Args:
        stop: Strings that end the answer (not included in it).
        strip_leading: Drop leading whitespace (``True``: answers; ``False``: raw text).
    """

    def __init__(self, stop: Sequence[str], *, strip_leading: bool = True) -> None:
        self.stop = tuple(stop)
        self._held = ""
        self.stopped = False
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self._started = not strip_leading

    def push(self, chunk: str) -> str:
        """Adds ``chunk``; returns the text that is now safe to emit."""
        if self.stopped:
            return ""
        self._held += chunk
        text, found = cut_at_stop(self._held, self.stop)
        if found:
            self.stopped = True
            self._held = ""
            return self._leading_dropped(text)
        safe = len(self._held) - self._hold if self._hold else len(self._held)
        emitted, self._held = self._held[: max(safe, 0)], self._held[max(safe, 0):]
        return self._leading_dropped(emitted)

    def flush(self) -> str:
        """The held-back tail, at the end of the stream."""
        text, self._held = ("" if self.stopped else self._held), ""
        return self._leading_dropped(text)

    def _leading_dropped(self, text: str) -> str:
        if self._started:
            return text
        text = text.lstrip()
        self._started = bool(text)
        return text


def answer_text(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """A whole decoded answer shaped as :class:`StopStringFilter` shapes a streamed one.

    Returns:
        The answer (leading whitespace dropped, cut before the first stop string) and whether
        a stop string was found.
    """
    shaper = StopStringFilter(stop)
    shaped = shaper.push(text) + shaper.flush()
    return shaped, shaper.stopped


class TextStream(Iterator[str]):
    """Text chunks of one streamed answer, and afterwards what a non-streamed answer reports.

    Iterate it for the text; :attr:`num_tokens` and :attr:`finish_reason` count exactly the
    tokens the decoder produced (as :func:`generate` does), final once the iteration ended.
    :attr:`prompt_positions` and :attr:`prefilled_positions` are the prompt's, as
    :class:`Generation` reports them. Closing it early stops the generation.
    """

    def __init__(
        self,
        chunks: Iterator[str],
        tokens: list[int],
        stops: StopStringFilter,
        options: GenerationOptions,
        eos_token_id: int | None,
        *,
        prompt_positions: int = 0,
        prefilled_positions: int = 0,
        cancelled: threading.Event | None = None,
    ) -> None:
        self.prompt_positions = prompt_positions
        self.prefilled_positions = prefilled_positions
        self._chunks = chunks
        self._tokens = tokens
        self._stops = stops
        self._options = options
        self._eos = eos_token_id
        self._cancelled = cancelled or threading.Event()

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._chunks)

    def close(self) -> None:
        """Stops the generation (if running) and waits for its worker thread."""
        self._chunks.close()

    def cancel(self) -> None:
        """Asks the generation to stop, from any thread, without waiting: a prefill stops
        before its next piece, decoding before its next token, and a pending ``next`` then
        ends the iteration. :meth:`close` still has to be called."""
        self._cancelled.set()

    @property
    def num_tokens(self) -> int:
        """Tokens generated (an end-of-sequence token included, padding not)."""
        return tokens_generated(self._tokens, self._eos)

    @property
    def finish_reason(self) -> str:
        """``"stop"`` (EOS or a stop string) or ``"length"``, as :func:`generate` reports."""
        return finish_reason(
            self._tokens, self._eos, self._stops.stopped, self._options.max_new_tokens
        )


def stream(
    model: Any,
    tokenizer: Any,
    batch: SpliceBatch,
    options: GenerationOptions,
    *,
    lock: threading.RLock | None = None,
    enter_decoder: Any = None,
) -> TextStream:
    """Yields text chunks of a single-row ``batch`` as ``generate`` produces them.

    ``generate`` runs in a worker thread feeding a ``TextIteratorStreamer``. ``enter_decoder``
    is a zero-argument callable returning a context manager that puts the model in decoder
    mode for the thread's lifetime; ``lock`` is held by the worker for the same time. Closing
    the iterator early stops the generation. The returned :class:`TextStream` also counts the
    generated tokens.
    """
    from transformers import TextIteratorStreamer

    if batch.inputs_embeds.shape[0] != 1:
        raise ValueError("streaming takes one prompt at a time")
    tokens: list[int] = []

    class _CountingStreamer(TextIteratorStreamer):
        prompt_seen = False

        def put(self, value: torch.Tensor) -> None:
            # generate() puts the prompt ids first (none, with inputs_embeds), then each token.
            if self.prompt_seen:
                tokens.extend(value.reshape(-1).tolist())
            self.prompt_seen = True
            super().put(value)

    streamer = _CountingStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
    stops = StopStringFilter(options.stop)
    cancelled = threading.Event()
    chunks = _stream_chunks(
        model, tokenizer, batch, options, streamer, stops, lock, enter_decoder, cancelled
    )
    return TextStream(
        chunks,
        tokens,
        stops,
        options,
        tokenizer.eos_token_id,
        prompt_positions=batch.prompt_lengths[0],
        prefilled_positions=(batch.prefilled_lengths or batch.prompt_lengths)[0],
        cancelled=cancelled,
    )


def _stream_chunks(
    model: Any,
    tokenizer: Any,
    batch: SpliceBatch,
    options: GenerationOptions,
    streamer: Any,
    stops: StopStringFilter,
    lock: threading.RLock | None,
    enter_decoder: Any,
    cancelled: threading.Event,
) -> Iterator[str]:
    error: list[BaseException] = []

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), cancelled.is_set(), device=input_ids.device)

    def worker() -> None:
        try:
            if lock is not None:
                lock.acquire()
            try:
                _seeded(options, batch.inputs_embeds.device)
                if cancelled.is_set():  # cancelled while it waited for the decoder
                    raise PrefillStoppedError("cancelled before its prefill")
                context = enter_decoder() if enter_decoder is not None else _null_context()
                with context, torch.inference_mode():
                    ready = prefill_ahead(model, batch, should_stop=cancelled.is_set)
                    model.generate(
                        **batch_inputs(model, ready),
                        streamer=streamer,
                        **_with_criterion(options.generate_kwargs(tokenizer), _Cancelled()),
                    )
            finally:
                if lock is not None:
                    lock.release()
        except BaseException as exc:  # surfaced in the consumer thread below
            error.append(exc)
            streamer.end()

    thread = threading.Thread(target=worker, name="memrag-generate", daemon=True)
    thread.start()
    try:
        for chunk in streamer:
            text = stops.push(chunk)
            if text:
                yield text
            if stops.stopped:
                break
        tail = stops.flush()
        if tail:
            yield tail
    finally:
        # A consumer that stops early (a client that disconnects) ends the generation too.
        cancelled.set()
        thread.join()
    if error and not isinstance(error[0], PrefillStoppedError):  # a stopped prefill was asked for
        raise error[0]


def _with_criterion(kwargs: dict[str, Any], criterion: StoppingCriteria) -> dict[str, Any]:
    criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", []))
    criteria.append(criterion)
    return {**kwargs, "stopping_criteria": criteria}


class _null_context:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
