"""What :class:`ChatMemrag` and :class:`MemragLLM` share: fields, prompt resolution, decoding.

A prompt is first *parsed* into a :class:`PromptSpec` (turns of literal text and verified
document references), then the referenced documents are fetched from the document source in
one call, *materialized* into prompt parts (slots, or text for ``use_text`` documents, rendered
through the chat template for chat prompts) and decoded with the compressor's ``generate`` or
``stream``: the one splice path.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from langchain_core.language_models.base import LangSmithParams
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from memrag.generation import Generation, GenerationOptions
from memrag.langchain.markers import DocumentReference, MarkerCodec, Piece, get_codec
from memrag.langchain.sources import DocumentSource, fetch_records
from memrag.prompts import DocumentText, answer_max_tokens, answer_stop, render_chat
from memrag.splice import PromptPart
from memrag.store.records import ChunkRecord

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Constructor arguments of remote API clients that a local model accepts and ignores, so
#: code (and LangChain's standard tests) written for API models can build it unchanged.
IGNORED_CLIENT_PARAMS = ("api_key", "base_url", "timeout", "request_timeout", "max_retries")
#: Per-call keyword arguments that override the model's generation fields.
CALL_OPTIONS = ("max_tokens", "temperature", "top_p", "top_k", "seed")


#: Pydantic config of the memrag models. Subclasses set it again: pydantic merges the configs
#: of several bases left to right, so LangChain's ``extra="ignore"`` would otherwise win.
MODEL_CONFIG = ConfigDict(extra="forbid", arbitrary_types_allowed=True, populate_by_name=True)


@dataclass(frozen=True)
class PromptSpec:
    """A parsed prompt: turns of literal text and document references.

    Attributes:
        turns: ``(role, pieces)`` pairs; a single turn with role ``None`` is a raw completion
            prompt (no chat template).
    """

    turns: tuple[tuple[str | None, tuple[Piece, ...]], ...]

    @property
    def document_ids(self) -> list[str]:
        """Referenced document ids, unique, in order of first reference."""
        ids = (p.id for _, pieces in self.turns for p in pieces if isinstance(p, DocumentReference))
        return list(dict.fromkeys(ids))

    def materialize(self, records: dict[str, ChunkRecord], tokenizer: Any) -> list[PromptPart]:
        """Prompt parts with each reference replaced by its document's slots (or text)."""

        def document(reference: DocumentReference) -> Any:
            context = records[reference.id].context()
            return DocumentText(context) if isinstance(context, str) else context

        def resolve(pieces: Sequence[Piece]) -> list[str | Any]:
            return [document(p) if isinstance(p, DocumentReference) else p for p in pieces]

        if len(self.turns) == 1 and self.turns[0][0] is None:
            return resolve(self.turns[0][1])
        messages = [{"role": role, "content": resolve(pieces)} for role, pieces in self.turns]
        return render_chat(tokenizer, messages)


class _Precomputed:
    """Answers computed ahead by ``batch``, claimed by the per-input calls that follow."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[tuple[PromptSpec, str], list[Generation]] = {}

    def put(self, key: tuple[PromptSpec, str], generation: Generation) -> None:
        with self._lock:
            self._results.setdefault(key, []).append(generation)

    def take(self, key: tuple[PromptSpec, str]) -> Generation | None:
        with self._lock:
            found = self._results.get(key)
            return found.pop(0) if found else None


_PRECOMPUTED: contextvars.ContextVar[_Precomputed | None] = contextvars.ContextVar(
    "memrag_precomputed", default=None
)


@dataclass
class StreamEnd:
    """Marks the end of a stream: what a non-streaming call would have reported.

    ``num_tokens`` counts the tokens the decoder generated (the answer re-tokenized for a
    compressor whose stream does not count them).
    """

    generation: Generation


class MemragModelMixin(BaseModel):
    """Fields and behaviour shared by the memrag chat model and LLM.

    Fields:
        compressor: The :class:`~memrag.compressor.Compressor` whose frozen decoder answers
            (default: the document source's ``compressor``).
        source: The document source referenced documents come from (a ``MemoryStore``, a
            :class:`~memrag.langchain.MemragVectorStore` (its store is used), an
            :class:`~memrag.langchain.sources.InMemoryDocumentSource`, ...).
        model_name: Name reported in response metadata and traces (alias ``model``); defaults
            to ``"<base model>+memrag-<compressor fingerprint[:8]>"``.
        max_tokens: Maximum number of new tokens (``None``: the answer length of the model's
            prompt format, :func:`memrag.prompts.answer_max_tokens`: 32 for a QA answer
            without a chat template, 256 with one).
        temperature: 0 decodes greedily; above 0 samples.
        top_p / top_k: Sampling cutoffs (sampling only).
        seed: Seed for reproducible sampling.
        stop: Default stop strings (a call's ``stop`` replaces them); ``None``: where the
            answer ends for the model's prompt format (a newline without a chat template, as
            the compressor was trained; ``[]`` for none).
        streaming: Answer ``invoke`` through the streaming path (token callbacks fire).
        batch_size: Prompts per decoder ``generate`` call in ``batch`` / ``abatch``.
        reference_key: Key that verifies document markers (default: the process key; see
            :mod:`memrag.langchain.markers`).
    """

    model_config = MODEL_CONFIG
    #: ``ls_model_type`` of the subclass (``"chat"`` or ``"llm"``).
    _ls_model_type: ClassVar[Literal["chat", "llm"]] = "chat"

    compressor: Any = Field(default=None, exclude=True, repr=False)
    source: Any = Field(default=None, exclude=True, repr=False)
    model_name: str | None = Field(default=None, alias="model")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = None
    stop: list[str] | None = None
    streaming: bool = False
    batch_size: int = Field(default=8, ge=1)
    reference_key: SecretStr | None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _drop_client_params(cls, values: Any) -> Any:
        if isinstance(values, dict):
            ignored = [name for name in IGNORED_CLIENT_PARAMS if name in values]
            if ignored:
                logger.debug("%s ignores API-client parameters %s", cls.__name__, ignored)
                values = {k: v for k, v in values.items() if k not in IGNORED_CLIENT_PARAMS}
        return values

    @model_validator(mode="after")
    def _resolve_compressor(self) -> MemragModelMixin:
        # A wrapper such as MemragVectorStore names the source it reads from.
        inner = getattr(self.source, "document_source", None)
        if inner is not None and not isinstance(self.source, DocumentSource):
            self.source = inner
        if self.source is not None and not isinstance(self.source, DocumentSource):
            raise TypeError(
                f"source must have get(ids, with_slots=True) -> list[ChunkRecord], "
                f"got {type(self.source).__name__}"
            )
        if self.compressor is None:
            self.compressor = getattr(self.source, "compressor", None)
        if self.compressor is None:
            raise ValueError(
                f"{type(self).__name__} needs a compressor (pass compressor=..., or a source "
                "that has one, such as a MemoryStore)"
            )
        if self.model_name is None:
            base = getattr(self.compressor, "base_name", None) or "model"
            self.model_name = f"{base}+memrag-{self.compressor.fingerprint[:8]}"
        return self

    # ------------------------------------------------------------------ options
    @property
    def codec(self) -> MarkerCodec:
        """The marker codec for this model's reference key."""
        return get_codec(self.reference_key)

    def generation_options(
        self, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> GenerationOptions:
        """The decoding options of one call: the fields, overridden by call arguments.

        Raises:
            TypeError: an unknown keyword argument was passed.
            ValueError: ``model`` names a different model (one instance serves one compressor).
        """
        unknown = sorted(set(kwargs) - set(CALL_OPTIONS) - {"model"})
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword argument(s) {unknown}; "
                f"per-call options are {list(CALL_OPTIONS)} and stop"
            )
        model = kwargs.get("model")
        if model is not None and model != self.model_name:
            raise ValueError(
                f"{type(self).__name__} serves {self.model_name!r} and cannot switch to {model!r} "
                "per call; build another instance with that compressor"
            )
        values = {name: kwargs.get(name, getattr(self, name)) for name in CALL_OPTIONS}
        return GenerationOptions(
            max_new_tokens=values["max_tokens"] or self.default_max_tokens,
            temperature=values["temperature"],
            top_p=values["top_p"],
            top_k=values["top_k"],
            seed=values["seed"],
            stop=tuple(stop if stop is not None else self.default_stop),
        )

    @property
    def default_max_tokens(self) -> int:
        """The ``max_tokens`` field, or the answer length of the model's prompt format."""
        return self.max_tokens or answer_max_tokens(self.compressor.tokenizer)

    @property
    def default_stop(self) -> list[str]:
        """The stop strings of a call that names none: the ``stop`` field, or where the answer
        ends for this model's prompt format (:func:`memrag.prompts.answer_stop`: a newline for
        a model without a chat template, as fine-tuning and ``memrag eval qa`` stop)."""
        if self.stop is not None:
            return list(self.stop)
        return list(answer_stop(self.compressor.tokenizer))

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """Parameters that identify this model's answers (used by LangChain caching)."""
        return {
            "model_name": self.model_name,
            "compressor_fingerprint": self.compressor.fingerprint,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": self.stop,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """LangSmith tracing parameters (``ls_*``), honouring per-call overrides."""
        model = kwargs.get("model")
        params = LangSmithParams(
            ls_provider="memrag",
            ls_model_name=model if isinstance(model, str) else (self.model_name or ""),
            ls_model_type=self._ls_model_type,
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens") or self.default_max_tokens,
        )
        stop = stop if stop is not None else self.stop
        if stop:
            params["ls_stop"] = list(stop)
        return params

    # ------------------------------------------------------------------ parsing
    def parse_text(self, text: str) -> tuple[Piece, ...]:
        """Literal text and verified references of one piece of prompt text."""
        return tuple(self.codec.split(text))

    # ------------------------------------------------------------------ decoding
    def _materialize(self, specs: Sequence[PromptSpec]) -> list[list[PromptPart]]:
        records = fetch_records(self.source, [i for spec in specs for i in spec.document_ids])
        return [spec.materialize(records, self.compressor.tokenizer) for spec in specs]

    def _decode(
        self, prompts: Sequence[list[PromptPart]], options: GenerationOptions
    ) -> list[Generation]:
        generations: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            generations += self.compressor.generate(
                prompts[start : start + self.batch_size], options
            )
        return generations

    def run_specs(
        self, specs: Sequence[PromptSpec], options: GenerationOptions
    ) -> list[Generation]:
        """Answers each prompt, taking answers ``batch`` precomputed where there are some.

        The rest are fetched in one source call and decoded in batches of ``batch_size``
        prompts by the compressor's batched ``generate``.
        """
        precomputed = _PRECOMPUTED.get()
        option_key = repr(options)
        results: list[Generation | None] = [
            precomputed.take((spec, option_key)) if precomputed is not None else None
            for spec in specs
        ]
        todo = [i for i, result in enumerate(results) if result is None]
        if todo:
            generations = self._decode(self._materialize([specs[i] for i in todo]), options)
            for index, generation in zip(todo, generations):
                results[index] = generation
        return [result for result in results if result is not None]

    def precompute(
        self, specs: Sequence[PromptSpec | None], options: GenerationOptions
    ) -> _Precomputed:
        """Decodes the prompts of a batch together, for the per-input calls to claim.

        ``None`` entries (inputs that could not be parsed) and prompts that cannot be
        materialized (e.g. an unknown document) are left out, so that each such input's own
        call raises its error in its own run.
        """
        store = _Precomputed()
        valid = [spec for spec in specs if spec is not None]
        try:
            prompts = self._materialize(valid)
        except Exception:  # noqa: BLE001 - find the prompts that fail, one by one
            kept: list[PromptSpec] = []
            prompts = []
            for spec in valid:
                try:
                    prompts += self._materialize([spec])
                    kept.append(spec)
                except Exception:  # noqa: BLE001
                    continue
            valid = kept
        if not valid:
            return store
        try:
            generations = self._decode(prompts, options)
        except Exception:  # noqa: BLE001 - each input's own call raises it in its own run
            logger.debug("batched generation failed; answering inputs one by one", exc_info=True)
            return store
        option_key = repr(options)
        for spec, generation in zip(valid, generations):
            store.put((spec, option_key), generation)
        return store

    def stream_spec(self, spec: PromptSpec, options: GenerationOptions) -> CancellableStream:
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
        (prompt,) = self._materialize([spec])
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

    @staticmethod
    def usage(generation: Generation) -> dict[str, Any]:
        """LangChain usage metadata: decoder context positions in, tokens generated out.

        Positions read from stored K/V memory instead of computed are reported as
        ``input_token_details["cache_read"]``, as LangChain reports a provider's prompt cache.
        """
        usage: dict[str, Any] = {
            "input_tokens": generation.prompt_positions,
            "output_tokens": generation.num_tokens,
            "total_tokens": generation.prompt_positions + generation.num_tokens,
        }
        cached = generation.prompt_positions - generation.prefilled_positions
        if generation.prefilled_positions and cached > 0:
            usage["input_token_details"] = {"cache_read": cached}
        return usage


@contextlib.contextmanager
def using_precomputed(store: _Precomputed | None) -> Iterator[None]:
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


async def iterate_in_thread(iterator: Iterator[T]) -> AsyncIterator[T]:
    """Iterates a blocking iterator from async code, one ``next`` at a time in a worker thread.

    When the consumer stops early (or is cancelled) the iterator's ``cancel()`` (when it has
    one, as :class:`~memrag.generation.TextStream` does) is called at once, and the iterator
    is closed once its pending ``next`` returns, which stops the decoder.
    """
    done = object()
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(run_in_executor(None, next, iterator, done))
            item = await asyncio.shield(pending)
            pending = None
            if item is done:
                return
            yield item
    finally:
        if pending is not None and not pending.done():
            cancel = getattr(iterator, "cancel", None)
            if cancel is not None:
                cancel()  # a decoder in a long prefill stops at its next piece
            try:
                await asyncio.wait([pending])
            except BaseException:  # noqa: BLE001 - the consumer is going away anyway
                pass
        close = getattr(iterator, "close", None)
        if close is not None:
            # Closing joins the decoder's worker thread: keep that wait off the event loop.
            try:
                await run_in_executor(None, close)
            except BaseException:  # noqa: BLE001 - cancelled meanwhile: close here instead
                close()
                raise
