"""What :class:`ChatMemrag` and :class:`MemragLLM` share: fields, options, LangChain metadata.

A prompt is parsed into a :class:`~memrag.rag.prompt.PromptSpec` (turns of literal text and
verified document references) and answered by the RAG core, :class:`~memrag.rag.answerer.Answerer`
(fetch the referenced documents, splice their memory, decode): the one splice path the
server uses too. This module adds what LangChain needs around it.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

from langchain_core.language_models.base import LangSmithParams
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from memrag.generation import Generation, GenerationOptions
from memrag.prompts import answer_max_tokens, answer_stop
from memrag.rag.answerer import Answerer, default_model_name
from memrag.rag.markers import MarkerCodec, Piece, get_codec
from memrag.rag.sources import DocumentSource

logger = logging.getLogger(__name__)

#: Constructor arguments of remote API clients that a local model accepts and ignores, so
#: code (and LangChain's standard tests) written for API models can build it unchanged.
IGNORED_CLIENT_PARAMS = ("api_key", "base_url", "timeout", "request_timeout", "max_retries")
#: Per-call keyword arguments that override the model's generation fields.
CALL_OPTIONS = ("max_tokens", "temperature", "top_p", "top_k", "seed")


#: Pydantic config of the memrag models. Subclasses set it again: pydantic merges the configs
#: of several bases left to right, so LangChain's ``extra="ignore"`` would otherwise win.
MODEL_CONFIG = ConfigDict(extra="forbid", arbitrary_types_allowed=True, populate_by_name=True)


class MemragModelMixin(BaseModel):
    """Fields and behaviour shared by the memrag chat model and LLM.

    Fields:
        compressor: The :class:`~memrag.compressor.Compressor` whose frozen decoder answers
            (default: the document source's ``compressor``).
        source: The document source referenced documents come from (a ``MemoryStore``, a
            :class:`~memrag.langchain.MemragVectorStore` (its store is used), an
            :class:`~memrag.rag.sources.InMemoryDocumentSource`, ...).
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
            :mod:`memrag.rag.markers`).
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
            self.model_name = default_model_name(self.compressor)
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

    # ------------------------------------------------------------------ answering
    @property
    def answerer(self) -> Answerer:
        """The RAG core answering this model's prompts (its compressor, source, batch size)."""
        return Answerer(self.compressor, self.source, batch_size=self.batch_size)

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
