"""Request models (OpenAI chat completions, memrag documents) and response builders.

Requests are validated strictly, as OpenAI does: a string where a number belongs is an error,
not coerced. Fields OpenAI defines that do not change a memrag answer (``user``, penalties,
``logit_bias``, ...) are accepted and ignored; fields asking for what memrag cannot do (tools,
``n > 1``, log probabilities, JSON mode) are refused with a 400.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from memrag.generation import Generation

#: Most stop strings a request may give (as OpenAI).
MAX_STOP = 4


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    """A text content part."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    """One message of the conversation."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    @property
    def text(self) -> str:
        """The message's text (parts joined by newlines)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(_Strict):
    """``stream_options``: ``include_usage`` adds a last chunk with the token usage."""

    include_usage: bool = False


class MemragOptions(_Strict):
    """memrag's own request options (``extra_body={"memrag": {...}}`` in the OpenAI client).

    Attributes:
        top_k: Chunks to retrieve (0: none).
        filter: Metadata filter for retrieval (see :mod:`memrag.store.metadata`).
        search_mode: ``"hybrid"``, ``"dense"`` or ``"lexical"`` (default: the server's).
        search_weights: ``[dense, lexical]`` weights of a hybrid search.
        rerank: First-stage candidates to rerank by the stored memory (0: none).
    """

    top_k: int | None = Field(default=None, ge=0)
    filter: dict[str, Any] | None = None
    search_mode: str | None = None
    search_weights: list[float] | None = None
    rerank: int | None = Field(default=None, ge=0)


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    n: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    logprobs: bool | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    memrag: MemragOptions | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else list(value)
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        return stops

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.n not in (None, 1):
            raise ValueError("n: only one choice per request is supported")
        if self.logprobs:
            raise ValueError("logprobs: log probabilities are not supported")
        if self.tools or self.functions:
            raise ValueError("tools: tool and function calling are not supported")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise ValueError("response_format: only 'text' is supported")
        return self

    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens``, else ``max_tokens``."""
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )


class DocumentIn(_Strict):
    """One document to add."""

    text: str = Field(min_length=1)
    id: str | None = Field(default=None, min_length=1)
    metadata: dict[str, Any] | None = None


class AddDocumentsRequest(_Strict):
    """``POST /v1/documents``.

    Attributes:
        documents: The documents (re-adding an id replaces it).
        chunk: Cut each document into token windows (chunk ids ``<id>#<n>``); without it
            (the default, as :meth:`MemoryStore.add`) each document is one chunk.
    """

    documents: list[DocumentIn] = Field(min_length=1)
    chunk: bool = False


# ---------------------------------------------------------------------- responses
def new_completion_id() -> str:
    """A fresh ``chatcmpl-...`` id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(generation: Generation) -> dict[str, int]:
    """OpenAI usage: decoder positions prefilled as prompt tokens, tokens generated."""
    return {
        "prompt_tokens": generation.prompt_positions,
        "completion_tokens": generation.num_tokens,
        "total_tokens": generation.prompt_positions + generation.num_tokens,
    }


def completion_body(
    *,
    completion_id: str,
    model: str,
    fingerprint: str,
    generation: Generation,
    documents: list[dict[str, Any]],
    created: int | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` object (plus ``memrag_documents``)."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": generation.text, "refusal": None},
                "logprobs": None,
                "finish_reason": generation.finish_reason,
            }
        ],
        "usage": usage(generation),
        "memrag_documents": documents,
    }


def chunk_body(
    *,
    completion_id: str,
    model: str,
    fingerprint: str,
    created: int,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    usage_value: dict[str, int] | None = None,
    include_usage: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` object; ``delta=None`` makes the usage-only last chunk."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if include_usage:
        body["usage"] = usage_value
    if extra:
        body.update(extra)
    return body
