"""Settings of the OpenAI-compatible server, and loading its API key."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from memrag.store.retrieval import DEFAULT_SEARCH_MODE, SearchSettings

#: Environment variable read for the API key by default.
API_KEY_ENV = "MEMRAG_API_KEY"
#: Candidates a chat request reranks by the stored memory when it does not say. Measured on
#: the default path (docs/RESULTS.md, "The default path").
DEFAULT_SERVER_RERANK = 5
#: Longest gathering window of the batcher (milliseconds).
MAX_BATCH_WINDOW_MS = 1000.0


@dataclass(frozen=True)
class ServerSettings:
    """What the server allows and how it answers.

    Attributes:
        api_key: Bearer token every endpoint but ``/healthz`` requires (``None``: no auth).
        model_name: Model id reported by ``/v1/models`` and in responses (default: the chat
            model's name, ``"<base model>+memrag-<fingerprint[:8]>"``).
        model_aliases: Other ``model`` values requests may name (default: ``"memrag"``).
        top_k: Chunks retrieved for each chat request by default (1: with more, chunks whose
            memory was made apart answered worse; docs/RESULTS.md, "Answers through memrag
            serve").
        max_top_k: Largest ``top_k`` a request may ask for.
        search_mode: How chunks are found by default: ``"hybrid"`` (dense and BM25 fused by
            reciprocal rank), ``"dense"`` or ``"lexical"`` (:mod:`memrag.store.retrieval`).
        search_weights: ``(dense, lexical)`` weights of a hybrid search.
        rerank: First-stage candidates reranked by the decoder's likelihood of the question
            given each one's memory (:class:`~memrag.store.rerank.MemoryReranker`); 0: none.
        max_rerank: Largest ``rerank`` a request may ask for.
        default_max_tokens: New tokens generated when a request does not say (``None``: the
            answer length of the model's prompt format, 32 for a QA answer without a chat
            template, as measured best; 256 with one).
        max_tokens: Largest ``max_tokens`` a request may ask for (more is a 400).
        max_prompt_positions: Most decoder positions a request's prompt may take (its
            messages, the retrieved chunks, the template); more is a 400
            ``context_length_exceeded``, answered before any prefill. The default keeps the
            worst request's prefill within memory next to a full batch (the embedded model's
            context is 32,768).
        max_messages: Most messages in one chat request.
        max_body_bytes: Largest request body (more is a 413).
        max_batch_size: Most requests decoded together in one batch (continuous batching:
            requests join and leave the batch at every step). 1 decodes one request at a
            time, each with its own ``generate`` call.
        batch_window_ms: How long an idle batcher waits for more requests before it starts
            a batch (milliseconds); a running batch takes new requests at its next step
            without waiting.
        packed_weights: On a CPU in float32, decode batches of several requests with
            oneDNN-packed copies of the linear weights (:mod:`memrag.batching.kernels`):
            several times faster per row there, for a second copy of those weights in memory.
            Ignored where unsupported.
        max_concurrent: Generations (and document compressions) running at once when
            ``max_batch_size`` is 1. The compressor serialises its decoder with a lock, so
            more than 1 only overlaps prompt building with decoding. With batching, the
            slots are the batch's rows (``max_batch_size``) and this is not used.
        max_queue: Admitted requests that may wait for a generation slot (beyond the
            slots); a request arriving when the queue is full gets a 429.
        request_timeout: Seconds a chat or document request may take in all (queue wait,
            retrieval, generation); past it the generation is stopped and a 504 (or an error
            event in a stream) is sent.
        stop: Stop strings used when a request gives none (empty: where the answer ends for
            the model's prompt format, a newline for a model without a chat template).
        context: ``"memory"`` (the retrieved chunks' stored memory, or their text where the
            store flags them) or ``"text"`` (always their text: classic RAG through the same
            model, prompt and server, to compare against).
        allow_writes: Serve the document endpoints that add and delete (they need a store
            opened for writing).
        retry_after_min / retry_after_max: Bounds of the ``Retry-After`` seconds sent with a
            429 (estimated from recent generation times).
        cors_origins: Browser origins allowed to call the API (``"*"`` for any; none by
            default).
    """

    api_key: str | None = field(default=None, repr=False)
    model_name: str | None = None
    model_aliases: tuple[str, ...] = ("memrag",)
    top_k: int = 1
    max_top_k: int = 16
    search_mode: str = DEFAULT_SEARCH_MODE
    search_weights: tuple[float, float] = (1.0, 1.0)
    rerank: int = DEFAULT_SERVER_RERANK
    max_rerank: int = 32
    default_max_tokens: int | None = None
    max_tokens: int = 2048
    max_prompt_positions: int = 8192
    max_messages: int = 64
    max_body_bytes: int = 1 << 20
    max_batch_size: int = 8
    batch_window_ms: float = 10.0
    packed_weights: bool = True
    max_concurrent: int = 1
    max_queue: int = 8
    request_timeout: float = 120.0
    stop: tuple[str, ...] = ()
    context: str = "memory"
    allow_writes: bool = True
    retry_after_min: int = 1
    retry_after_max: int = 60
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        positive = (
            "max_top_k",
            "max_tokens",
            "max_messages",
            "max_body_bytes",
            "max_concurrent",
            "max_batch_size",
            "retry_after_min",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.batch_window_ms <= MAX_BATCH_WINDOW_MS:
            raise ValueError(
                f"batch_window_ms must be in [0, {MAX_BATCH_WINDOW_MS:g}], got {self.batch_window_ms}"
            )
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if not 0 <= self.top_k <= self.max_top_k:
            raise ValueError(f"top_k must be in [0, max_top_k={self.max_top_k}], got {self.top_k}")
        self.search_settings()  # raises on an unknown mode or weights out of range
        if not 0 <= self.rerank <= self.max_rerank:
            raise ValueError(f"rerank must be in [0, max_rerank={self.max_rerank}], got {self.rerank}")
        object.__setattr__(self, "search_weights", tuple(float(w) for w in self.search_weights))
        if self.default_max_tokens is not None and self.default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1, got {self.default_max_tokens}")
        if self.default_max_tokens is not None and self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens ({self.max_tokens})"
            )
        if self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0, got {self.request_timeout}")
        if self.retry_after_max < self.retry_after_min:
            raise ValueError("retry_after_max must be >= retry_after_min")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty (use None for no authentication)")
        if self.max_prompt_positions < 1:
            raise ValueError(f"max_prompt_positions must be >= 1, got {self.max_prompt_positions}")
        if self.context not in ("memory", "text"):
            raise ValueError(f"context must be 'memory' or 'text', got {self.context!r}")
        if isinstance(self.stop, str) or any(not s for s in self.stop):
            raise ValueError("stop must be a sequence of non-empty strings")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "model_aliases", tuple(self.model_aliases))
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))

    def search_settings(self) -> SearchSettings:
        """The default search of a chat request."""
        return SearchSettings.parse(self.search_mode, self.search_weights)

    @property
    def batching(self) -> bool:
        """Whether requests are decoded in batches (``max_batch_size`` > 1)."""
        return self.max_batch_size > 1

    @property
    def slots(self) -> int:
        """Requests decoding at once: the batch's rows, or ``max_concurrent`` without batching."""
        return self.max_batch_size if self.batching else self.max_concurrent

    def replace(self, **changes: object) -> ServerSettings:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def load_api_key(*, env: str | None = API_KEY_ENV, file: str | Path | None = None) -> str | None:
    """The API key from a file (first line, stripped) or else an environment variable.

    Args:
        env: Environment variable to read (``None``: none).
        file: File holding the key; when given it must exist and hold a key.

    Returns:
        The key, or ``None`` when neither source provides one.

    Raises:
        ValueError: ``file`` is empty.
        OSError: ``file`` cannot be read.
    """
    if file is not None:
        text = Path(file).expanduser().read_text(encoding="utf-8").strip()
        key = text.splitlines()[0].strip() if text else ""
        if not key:
            raise ValueError(f"API key file {file} is empty")
        return key
    if env:
        value = os.environ.get(env, "").strip()
        return value or None
    return None
