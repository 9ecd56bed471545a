"""What the server does with a request, without HTTP: retrieve, build the prompt, decode.

The prompt is the one :func:`~memrag.langchain.create_rag_chain` gives
:class:`~memrag.langchain.ChatMemrag`, built here with the RAG core (:mod:`memrag.rag`)
directly: the latest user message becomes the QA prompt (the retrieved chunks rendered by
:func:`~memrag.rag.formatting.format_docs` as signed references, the question escaped by
:func:`~memrag.rag.formatting.prepare_question`), earlier messages stay as they are
(escaped); :class:`~memrag.rag.answerer.Answerer` renders them as the chat model does,
splices each chunk's memory (its text, when the store flags it ``use_text``) and decodes with
the compressor's ``stream`` — or the server batches it with other requests' prompts
(:class:`~memrag.batching.BatchedGenerator`, from :attr:`PreparedChat.prompt`). Every
method here blocks; the app calls them from worker threads.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memrag.generation import GenerationOptions
from memrag.prompts import answer_stop
from memrag.rag.answerer import Answerer, StreamEnd, default_model_name
from memrag.rag.formatting import DEFAULT_QA_TEMPLATE, format_docs, prepare_question
from memrag.rag.markers import Piece, escape_markers, get_codec
from memrag.rag.prompt import PromptSpec, chat_spec
from memrag.splice import PromptPart
from memrag.store.records import ChunkRecord
from memrag.store.retrieval import SearchSettings

if TYPE_CHECKING:
    from memrag.protocols import DecodingModel

logger = logging.getLogger(__name__)

#: Chat roles a request may use, and the chat-template role each becomes.
ROLES: dict[str, str] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}


@dataclass(frozen=True)
class Turn:
    """One chat message of a request: a role of :data:`ROLES` and its text."""

    role: str
    text: str


@dataclass(frozen=True)
class Retrieval:
    """How a chat request finds its chunks.

    Attributes:
        top_k: Chunks to retrieve (0: none).
        filter: Metadata filter (``None``: all chunks).
        search: Dense, lexical or hybrid, with its weights.
        rerank: First-stage candidates reranked by the stored memory (0: none).
    """

    top_k: int
    filter: Mapping[str, Any] | None = None
    search: SearchSettings = field(default_factory=SearchSettings)
    rerank: int = 0


@dataclass
class PreparedChat:
    """A chat request ready to decode.

    Attributes:
        answerer: Answers this request (its source holds the retrieved chunks).
        spec: The parsed prompt (the latest user message turned into the QA prompt).
        options: Decoding options.
        documents: The retrieved chunks, best first.
        prompt: The prompt parts ``spec`` renders to (chat template applied, each chunk's
            memory or text in place of its reference), for the batched decoder.
    """

    answerer: Answerer
    spec: PromptSpec
    options: GenerationOptions
    documents: list[ChunkRecord]
    prompt: list[PromptPart]

    def stream(self) -> Iterator[str | StreamEnd]:
        """Text chunks of the answer, then a :class:`StreamEnd`; closing it stops the decoder."""
        return self.answerer.stream_spec(self.spec, self.options)


class ContextLengthError(ValueError):
    """A request whose prompt would take more decoder positions than the server allows."""


#: Most characters a request's messages may hold per allowed prompt position, checked before
#: anything is tokenized (no token of the embedded tokenizers averages more).
CHARS_PER_POSITION = 16


def prompt_positions(prompt: Sequence[PromptPart], tokenizer: Any) -> int:
    """Decoder positions ``prompt`` takes: its text's tokens, its memory's slots, the BOS."""
    total = 1
    for part in prompt:
        if isinstance(part, str):
            total += len(tokenizer(part, add_special_tokens=False)["input_ids"])
        else:
            total += int(getattr(part, "num_slots", 1))
    return total


class RetrievedChunks:
    """A document source holding just the chunks one request retrieved.

    The chat model reads slots from here instead of asking the store again, so a chunk
    deleted between retrieval and decoding cannot fail the request.
    """

    def __init__(self, records: Sequence[ChunkRecord]) -> None:
        self._records = {record.id: record for record in records}

    def get(self, ids: Sequence[str], with_slots: bool = True) -> list[ChunkRecord]:
        """The held records of ``ids`` (unknown ids are left out)."""
        return [self._records[i] for i in dict.fromkeys(ids) if i in self._records]


def document_info(record: ChunkRecord) -> dict[str, Any]:
    """How a response reports one chunk it used."""
    return {
        "id": record.id,
        "source_id": record.metadata.get("source_id", record.id),
        "score": None if record.score is None else round(float(record.score), 6),
        "spliced": "text" if record.use_text or record.slots is None else _spliced_as(record),
    }


def _spliced_as(record: ChunkRecord) -> str:
    """``"slots"`` for embedding slots, the memory kind (``"kv-exact"`` ...) for K/V memory."""
    kind = getattr(record.slots, "kind", "embedding")
    return "slots" if kind == "embedding" else str(kind)


class RagService:
    """Retrieval-augmented chat and document management over one :class:`MemoryStore`.

    Args:
        store: The store to retrieve from (and add to / delete from).
        compressor: The compressor whose decoder answers (default: the store's).
        model_name: Name reported to clients (default: the chat model's).
        stop: Default stop strings (empty: where the answer ends for the model's prompt
            format, :func:`memrag.prompts.answer_stop`, as for the LangChain models).
        use_text: Serve every retrieved chunk as its text instead of its memory (classic
            RAG through the same prompt and decoder, to compare against).
        max_prompt_positions: Most decoder positions a request's prompt may take (messages,
            retrieved chunks, template); more is a :class:`ContextLengthError`, raised before
            any prefill.

    Raises:
        ValueError: ``compressor`` did not make the store's slots.
    """

    def __init__(
        self,
        store: Any,
        *,
        compressor: DecodingModel = None,
        model_name: str | None = None,
        stop: Sequence[str] = (),
        use_text: bool = False,
        max_prompt_positions: int = 8192,
    ) -> None:
        self.store = store
        self.use_text = use_text
        self.max_prompt_positions = max_prompt_positions
        if compressor is not None and hasattr(store, "check_compressor"):
            try:
                store.check_compressor(compressor)
            except ValueError as err:
                raise ValueError(str(err)) from None
        self.compressor = compressor if compressor is not None else store.compressor
        # A key of our own: only this process writes and reads the document references.
        self.reference_key = secrets.token_hex(32)
        self.codec = get_codec(self.reference_key)
        self.model_name = model_name or default_model_name(self.compressor)
        self.default_stop = tuple(stop) or tuple(answer_stop(self.compressor.tokenizer))

    @property
    def fingerprint(self) -> str:
        """The compressor's fingerprint."""
        return str(self.compressor.fingerprint)

    def warm_up(self) -> None:
        """Loads the store's embedder now rather than on the first request."""
        self.store.search("warm up", k=1, with_slots=False)

    # ------------------------------------------------------------------ chat
    def options(
        self,
        *,
        max_tokens: int,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> GenerationOptions:
        """Decoding options (the chat model's defaults where a value is ``None``).

        Raises:
            ValueError: a value is out of range.
        """
        if top_p == 0:  # OpenAI accepts 0: only the most likely token, i.e. greedy
            temperature, top_p = 0.0, None
        return GenerationOptions(
            max_new_tokens=max_tokens,
            temperature=0.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            seed=seed,
            stop=tuple(stop if stop is not None else self.default_stop),
        )

    def retrieve(self, query: str, retrieval: Retrieval) -> list[ChunkRecord]:
        """The chunks ``retrieval`` finds for ``query``, with their slots (without, and
        flagged as text, when the server answers from text).

        Raises:
            ValueError: the filter is malformed.
        """
        if retrieval.top_k <= 0:
            return []
        search = retrieval.search
        found = self.store.search(
            query,
            k=retrieval.top_k,
            filter=dict(retrieval.filter) if retrieval.filter else None,
            with_slots=not self.use_text,
            mode=search.mode,
            weights=search.weights,
            rerank=retrieval.rerank,
        )
        if self.use_text:
            found = [dataclasses.replace(record, use_text=True) for record in found]
        return found

    def messages(
        self, turns: Sequence[Turn], documents: Sequence[ChunkRecord]
    ) -> list[tuple[str, list[Piece]]]:
        """The conversation as ``(role, pieces)`` messages, the latest user turn as the QA
        prompt (the retrieved chunks as verified references, as ChatMemrag parses them).

        All client text is escaped, so only the retrieved chunks are read as documents.

        Raises:
            ValueError: there is no user message, or a role is unknown.
        """
        last_user = max((i for i, t in enumerate(turns) if t.role == "user"), default=-1)
        if last_user < 0:
            raise ValueError("the conversation needs a user message")
        messages: list[tuple[str, list[Piece]]] = []
        for index, turn in enumerate(turns):
            role = ROLES.get(turn.role)
            if role is None:
                raise ValueError(f"unsupported role {turn.role!r}")
            if index == last_user:
                context = format_docs(documents, key=self.reference_key)
                content = DEFAULT_QA_TEMPLATE.format(
                    context=context, question=prepare_question(turn.text)
                )
            else:
                content = escape_markers(turn.text)
            messages.append((role, self.codec.split(content)))
        return messages

    def prepare(
        self,
        turns: Sequence[Turn],
        options: GenerationOptions,
        retrieval: Retrieval,
    ) -> PreparedChat:
        """Retrieves chunks for the latest user message and builds the request's prompt.

        Raises:
            ValueError: no user message, an unknown role, a malformed filter, or a
                conversation the chat template refuses.
        """
        query = next((t.text for t in reversed(turns) if t.role == "user"), None)
        if query is None:
            raise ValueError("the conversation needs a user message")
        characters = sum(len(t.text) for t in turns)
        if characters > self.max_prompt_positions * CHARS_PER_POSITION:
            raise ContextLengthError(
                f"the messages hold {characters:,} characters; prompts may take at most "
                f"{self.max_prompt_positions:,} positions (about "
                f"{self.max_prompt_positions * CHARS_PER_POSITION:,} characters at most)"
            )
        documents = self.retrieve(query, retrieval)
        answerer = Answerer(self.compressor, RetrievedChunks(documents))
        spec = chat_spec(self.messages(turns, documents))
        # Render the chat template now: a conversation it refuses is a client error.
        try:
            prompt = spec.materialize({r.id: r for r in documents}, self.compressor.tokenizer)
        except Exception as err:
            raise ValueError(f"the chat template cannot render this conversation: {err}") from err
        positions = prompt_positions(prompt, self.compressor.tokenizer)
        if positions > self.max_prompt_positions:
            raise ContextLengthError(
                f"the prompt takes {positions:,} positions (the messages plus {len(documents)} "
                f"retrieved chunk(s)); at most {self.max_prompt_positions:,} are allowed; shorten "
                "the messages or ask for fewer chunks (memrag.top_k)"
            )
        return PreparedChat(answerer, spec, options, documents, list(prompt))

    # ------------------------------------------------------------------ documents
    def add_documents(
        self,
        texts: Sequence[str],
        ids: Sequence[str],
        metadatas: Sequence[Mapping[str, Any] | None],
        *,
        chunk: bool,
    ) -> list[str]:
        """Compresses, embeds and stores documents (see :meth:`MemoryStore.add`).

        Returns:
            The ids of the stored chunks.
        """
        return list(
            self.store.add(
                list(texts), ids=ids, metadatas=[dict(m or {}) for m in metadatas], chunk=chunk
            )
        )

    def document_chunks(self, doc_id: str) -> list[ChunkRecord]:
        """The chunk ``doc_id``, or the chunks cut from document ``doc_id`` (no slots)."""
        found = self.store.get([doc_id], with_slots=False)
        if found:
            return found
        return self.store.get(self.store.db.ids_of_sources([doc_id]), with_slots=False)

    def delete_document(self, doc_id: str) -> int:
        """Deletes chunk ``doc_id`` and every chunk cut from document ``doc_id``.

        Returns:
            How many chunks were deleted.
        """
        return int(self.store.delete([doc_id])) + int(self.store.delete_sources([doc_id]))
