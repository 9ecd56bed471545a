"""Answering prompts that reference stored documents: fetch the chunks, splice, decode.

An :class:`Answerer` takes :class:`~memrag.rag.prompt.PromptSpec`\\ s, fetches the documents
they reference from its document source in one call, *materializes* them into prompt parts
(each document's memory, or its text for ``use_text`` documents) and decodes them with the
compressor's ``generate`` (batched) or ``stream`` (one prompt, cancellable): the one splice
path. The LangChain models (:mod:`memrag.langchain`) and the server (:mod:`memrag.server`)
are adapters over it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from memrag.generation import Generation, GenerationOptions
from memrag.rag.prompt import PromptSpec
from memrag.rag.sources import DocumentSource, fetch_records
from memrag.splice import PromptPart

if TYPE_CHECKING:
    from memrag.protocols import DecodingModel

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class StreamEnd:
    """Marks the end of a stream: what a non-streaming call would have reported.

    ``num_tokens`` counts the tokens the decoder generated (the answer re-tokenized for a
    compressor whose stream does not count them).
    """

    generation: Generation


class PrecomputedAnswers:
    """Answers computed ahead for a batch of prompts, claimed by the per-prompt calls that
    follow (LangChain's ``batch`` calls the model once per input)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[tuple[PromptSpec, str], list[Generation]] = {}

    def put(self, key: tuple[PromptSpec, str], generation: Generation) -> None:
        """Keeps the answer to a (prompt, options) pair."""
        with self._lock:
            self._results.setdefault(key, []).append(generation)

    def take(self, key: tuple[PromptSpec, str]) -> Generation | None:
        """Claims an answer to the (prompt, options) pair, if one is left."""
        with self._lock:
            found = self._results.get(key)
            return found.pop(0) if found else None


_PRECOMPUTED: contextvars.ContextVar[PrecomputedAnswers | None] = contextvars.ContextVar(
    "memrag_precomputed", default=None
)


@contextlib.contextmanager
def using_precomputed(store: PrecomputedAnswers | None) -> Iterator[None]:
    """Makes ``store``'s answers visible to the calls made inside (threads and tasks included).

    ``None`` changes nothing.
    """
    if store is None:
        yield
        return
    token = _PRECOMPUTED.set(store)
    try:
        yield
    finally:
        _PRECOMPUTED.reset(token)


class _CancelForwarder:
    """Forwards a cancel request to the decoder's stream once it exists (at once if it does)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: Any = None
        self._requested = False

    def attach(self, target: Any) -> None:
        """The stream to cancel (ignored when it cannot be cancelled)."""
        with self._lock:
            self._target = getattr(target, "cancel", None)
            requested = self._requested
        if requested and self._target is not None:
            self._target()

    def __call__(self) -> None:
        with self._lock:
            self._requested = True
            target = self._target
        if target is not None:
            target()


class CancellableStream(Iterator[T]):
    """An answer's pieces with ``cancel()``: stop the decoder from any thread, without waiting
    for the pending ``next`` (which then ends). Closing it still stops and joins the decoder."""

    def __init__(self, items: Iterator[T], cancel: Callable[[], None]) -> None:
        self._items = items
        self._cancel = cancel

    def __iter__(self) -> CancellableStream[T]:
        return self

    def __next__(self) -> T:
        return next(self._items)

    def cancel(self) -> None:
        """Asks the decoder to stop (thread-safe, returns at once)."""
        self._cancel()

    def close(self) -> None:
        """Stops the decoder and waits for it."""
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


class Answerer:
    """Answers :class:`PromptSpec`\\ s with a compressor's frozen decoder.

    Args:
        compressor: The compressor whose decoder answers (it splices the documents' memory).
        source: Where referenced documents come from (``get(ids, with_slots=True)``).
        batch_size: Prompts per decoder ``generate`` call.
    """

    def __init__(
        self, compressor: DecodingModel, source: DocumentSource | None, *, batch_size: int = 8
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.compressor = compressor
        self.source = source
        self.batch_size = batch_size

    def materialize(self, specs: Sequence[PromptSpec]) -> list[list[PromptPart]]:
        """The prompt parts of each spec, its documents fetched in one source call.

        Raises:
            memrag.rag.sources.DocumentNotFoundError: a referenced document is missing.
        """
        records = fetch_records(self.source, [i for spec in specs for i in spec.document_ids])
        return [spec.materialize(records, self.compressor.tokenizer) for spec in specs]

    def decode(
        self, prompts: Sequence[list[PromptPart]], options: GenerationOptions
    ) -> list[Generation]:
        """Decodes prompts in batches of :attr:`batch_size`."""
        generations: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            generations += self.compressor.generate(
                prompts[start : start + self.batch_size], options
            )
        return generations

    def run_specs(
        self, specs: Sequence[PromptSpec], options: GenerationOptions
    ) -> list[Generation]:
        """Answers each prompt, taking answers precomputed (:func:`using_precomputed`) where
        there are some; the rest are fetched in one source call and decoded in batches."""
        precomputed = _PRECOMPUTED.get()
        option_key = repr(options)
        results: list[Generation | None] = [
            precomputed.take((spec, option_key)) if precomputed is not None else None
            for spec in specs
        ]
        todo = [i for i, result in enumerate(results) if result is None]
        if todo:
            generations = self.decode(self.materialize([specs[i] for i in todo]), options)
            for index, generation in zip(todo, generations):
                results[index] = generation
        return [result for result in results if result is not None]

    def precompute(
        self, specs: Sequence[PromptSpec | None], options: GenerationOptions
    ) -> PrecomputedAnswers:
        """Decodes the prompts of a batch together, for the per-input calls to claim.

        ``None`` entries (inputs that could not be parsed) and prompts that cannot be
        materialized (e.g. an unknown document) are left out, so that each such input's own
        call raises its error in its own run.
        """
        store = PrecomputedAnswers()
        valid = [spec for spec in specs if spec is not None]
        try:
            prompts = self.materialize(valid)
        except Exception:  # noqa: BLE001 - find the prompts that fail, one by one
            kept: list[PromptSpec] = []
            prompts = []
            for spec in valid:
                try:
                    prompts += self.materialize([spec])
                    kept.append(spec)
                except Exception:  # noqa: BLE001
                    continue
            valid = kept
        if not valid:
            return store
        try:
            generations = self.decode(prompts, options)
        except Exception:  # noqa: BLE001 - each input's own call raises it in its own run
            logger.debug("batched generation failed; answering inputs one by one", exc_info=True)
            return store
        option_key = repr(options)
        for spec, generation in zip(valid, generations):
            store.put((spec, option_key), generation)
        return store

    def stream_spec(
        self, spec: PromptSpec, options: GenerationOptions
    ) -> CancellableStream[str | StreamEnd]:
        """Yields the answer's text chunks, then a :class:`StreamEnd`.

        Closing the iterator early stops the decoder; its ``cancel()`` asks the decoder to
        stop from any thread without waiting (a long prefill stops at its next piece).
        """
        cancel = _CancelForwarder()
        return CancellableStream(self._stream_spec(spec, options, cancel), cancel)

    def _stream_spec(
        self, spec: PromptSpec, options: GenerationOptions, cancel: _CancelForwarder
    ) -> Iterator[str | StreamEnd]:
        precomputed = _PRECOMPUTED.get()
        generation = precomputed.take((spec, repr(options))) if precomputed is not None else None
        if generation is not None:
            if generation.text:
                yield generation.text
            yield StreamEnd(generation)
            return
        (prompt,) = self.materialize([spec])
        pieces: list[str] = []
        iterator = self.compressor.stream(prompt, options)
        cancel.attach(iterator)
        positions = getattr(iterator, "prompt_positions", None)
        if positions is None:  # a compressor whose stream does not say
            positions = self.compressor.build([prompt]).prompt_lengths[0]
        try:
            for piece in iterator:
                pieces.append(piece)
                yield piece
        finally:
            iterator.close()
        text = "".join(pieces)
        exact = getattr(iterator, "num_tokens", None)  # memrag.generation.TextStream counts
        if exact is not None:
            num_tokens, finish = int(exact), str(iterator.finish_reason)
        else:
            num_tokens = len(self.compressor.tokenizer(text, add_special_tokens=False)["input_ids"])
            finish = "length" if num_tokens >= options.max_new_tokens else "stop"
        prefilled = int(getattr(iterator, "prefilled_positions", positions))
        yield StreamEnd(Generation(text, num_tokens, finish, positions, prefilled))


def default_model_name(compressor: DecodingModel) -> str:
    """The name answers are reported under: ``"<base model>+memrag-<fingerprint[:8]>"``."""
    base = getattr(compressor, "base_name", None) or "model"
    return f"{base}+memrag-{compressor.fingerprint[:8]}"
