"""``ChatMemrag``: a LangChain chat model that splices stored memory slots into its context."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar, Literal

from langchain_core.caches import BaseCache
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import run_in_executor

from memrag.generation import Generation
from memrag.langchain._base import MODEL_CONFIG, MemragModelMixin
from memrag.rag.answerer import PrecomputedAnswers, StreamEnd, using_precomputed
from memrag.rag.markers import DOCUMENT_BLOCK_TYPE, DocumentReference, Piece
from memrag.rag.prompt import PromptSpec, chat_spec
from memrag.rag.threads import iterate_in_thread

logger = logging.getLogger(__name__)


def message_role(message: BaseMessage) -> str:
    """The chat-template role of a LangChain message."""
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ChatMessage):
        return message.role
    if isinstance(message, (ToolMessage, FunctionMessage)):
        return "tool"
    raise TypeError(f"unsupported message type {type(message).__name__}")


def _block_pieces(block: Any, parse_text: Any) -> tuple[Piece, ...]:
    if isinstance(block, str):
        return parse_text(block)
    if not isinstance(block, dict):
        raise TypeError(f"message content blocks must be str or dict, got {type(block).__name__}")
    kind = block.get("type")
    if kind == "non_standard" and isinstance(block.get("value"), dict):
        # LangChain wraps block types it does not know like this when it normalizes content.
        return _block_pieces(block["value"], parse_text)
    if kind == DOCUMENT_BLOCK_TYPE:
        doc_id = block.get("id")
        if not isinstance(doc_id, str) or not doc_id:
            raise ValueError(
                f"a {DOCUMENT_BLOCK_TYPE!r} content block needs a string 'id', got {block!r}"
            )
        return (DocumentReference(doc_id),)
    if kind == "text":
        return parse_text(str(block.get("text", "")))
    raise ValueError(
        f"ChatMemrag reads text and {DOCUMENT_BLOCK_TYPE!r} content blocks, not {kind!r} blocks"
    )


def messages_to_spec(messages: Sequence[BaseMessage], parse_text: Any) -> PromptSpec:
    """Parses chat messages into a :class:`PromptSpec`.

    Consecutive messages with the same role are merged (separated by a blank line), since
    chat templates such as Gemma's require alternating roles.

    Args:
        messages: The conversation.
        parse_text: Callable turning text into literal pieces and verified references.
    """
    if not messages:
        raise ValueError("ChatMemrag needs at least one message")
    turns: list[tuple[str, list[Piece]]] = []
    for message in messages:
        content = message.content
        blocks = [content] if isinstance(content, str) else list(content)
        turns.append((message_role(message), [p for block in blocks for p in _block_pieces(block, parse_text)]))
    return chat_spec(turns)


class ChatMemrag(MemragModelMixin, BaseChatModel):
    """Chat model over a frozen decoder that reads documents as memory slots.

    Every document a message references — by a signed text marker
    (:func:`~memrag.rag.markers.document_marker`, :func:`~memrag.langchain.format_docs`)
    or by a ``{"type": "memrag_document", "id": ...}`` content block — is fetched from
    ``source`` and its slots are spliced where the reference stood (its text, for documents
    flagged ``use_text``). The messages are rendered with the tokenizer's chat template.

    Example:
        .. code-block:: python

            from memrag.langchain import ChatMemrag, InMemoryDocumentSource, document_marker

            source = InMemoryDocumentSource(compressor)
            (doc_id,) = source.add_texts(["The Eiffel Tower was completed in 1889."])
            chat = ChatMemrag(source=source, max_tokens=32)
            chat.invoke(f"Passage: {document_marker(doc_id)}\\nWhen was the tower completed?")

    Usage metadata counts decoder context positions prefilled as input tokens (a document
    costs its slots, not its tokens) and generated tokens as output tokens. In a stream the
    output count is the answer re-tokenized.

    ``batch``/``abatch`` decode their inputs together with the compressor's batched
    ``generate`` (``batch_size`` prompts at a time); each input still gets its own run and
    callbacks.
    """

    model_config = MODEL_CONFIG
    _ls_model_type: ClassVar[Literal["chat", "llm"]] = "chat"

    @property
    def _llm_type(self) -> str:
        return "memrag-chat"

    def to_spec(self, messages: Sequence[BaseMessage]) -> PromptSpec:
        """Parses ``messages`` (markers verified with this model's reference key)."""
        return messages_to_spec(messages, self.parse_text)

    def _metadata(self, spec: PromptSpec, generation: Generation) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "finish_reason": generation.finish_reason,
            "memrag_documents": spec.document_ids,
        }

    # ------------------------------------------------------------------ LangChain hooks
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        options = self.generation_options(stop, kwargs)
        spec = self.to_spec(messages)
        (generation,) = self.answerer.run_specs([spec], options)
        message = AIMessage(
            content=generation.text,
            usage_metadata=self.usage(generation),  # type: ignore[arg-type]
            response_metadata=self._metadata(spec, generation),
        )
        return ChatResult(
            generations=[
                ChatGeneration(
                    message=message, generation_info={"finish_reason": generation.finish_reason}
                )
            ],
            llm_output={"model_name": self.model_name},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # langchain-core fires on_llm_new_token for every chunk a chat model's _stream yields,
        # so this method does not (that would report each token twice).
        options = self.generation_options(stop, kwargs)
        spec = self.to_spec(messages)
        with contextlib.closing(self.answerer.stream_spec(spec, options)) as items:
            for item in items:
                if isinstance(item, StreamEnd):
                    generation = item.generation
                    last = AIMessageChunk(
                        content="",
                        usage_metadata=self.usage(generation),  # type: ignore[arg-type]
                        response_metadata=self._metadata(spec, generation),
                        chunk_position="last",
                    )
                    yield ChatGenerationChunk(
                        message=last, generation_info={"finish_reason": generation.finish_reason}
                    )
                else:
                    yield ChatGenerationChunk(message=AIMessageChunk(content=item))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in iterate_in_thread(self._stream(messages, stop, None, **kwargs)):
            yield chunk

    # ------------------------------------------------------------------ batching
    def _batch_store(
        self, inputs: Sequence[LanguageModelInput], kwargs: dict[str, Any]
    ) -> PrecomputedAnswers | None:
        """Answers to ``inputs`` decoded together, or ``None`` when batching does not apply."""
        if len(inputs) < 2:
            return None
        if self.cache is not False and (
            isinstance(self.cache, BaseCache) or get_llm_cache() is not None
        ):
            return None  # cached answers would make the batched work wasted
        call = {k: v for k, v in kwargs.items() if k != "stop"}
        try:
            options = self.generation_options(kwargs.get("stop"), call)
        except (TypeError, ValueError):
            return None  # every input's own call reports the error
        specs: list[PromptSpec | None] = []
        for item in inputs:
            try:
                specs.append(self.to_spec(self._convert_input(item).to_messages()))
            except Exception:  # noqa: BLE001 - that input's own call raises it in its run
                specs.append(None)
        return self.answerer.precompute(specs, options)

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[BaseMessage]:
        """Answers ``inputs``, decoding them together (see the class docstring)."""
        with using_precomputed(self._batch_store(inputs, kwargs)):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[BaseMessage]:
        """Async :meth:`batch`: the batched decoding runs in a worker thread."""
        store = await run_in_executor(None, self._batch_store, inputs, kwargs)
        with using_precomputed(store):
            return await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
