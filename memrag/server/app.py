"""The OpenAI-compatible RAG server: :func:`create_app` builds the FastAPI application.

Endpoints (all under ``/v1`` need the API key when one is set):

* ``POST /v1/chat/completions`` — retrieval-augmented chat (``stream: true`` for SSE).
* ``GET /v1/models``, ``GET /v1/models/{id}`` — the one model served.
* ``POST /v1/documents``, ``GET /v1/documents/{id}``, ``DELETE /v1/documents/{id}`` — manage
  the store's documents.
* ``GET /healthz`` — liveness and load, without authentication.

Blocking work (retrieval, decoding, compression, store writes) runs in worker threads; the
event loop only routes, validates and streams. See :mod:`memrag.server.limits` for how
requests are admitted, queued, timed out and cancelled, and :mod:`memrag.server.shutdown`
for how the requests still running at the end of a graceful shutdown are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from memrag.batching import BatchedGenerator, BatcherClosedError, RowHandle
from memrag.generation import Generation
from memrag.prompts import answer_max_tokens
from memrag.rag.answerer import StreamEnd
from memrag.rag.threads import iterate_in_thread
from memrag.server.errors import APIError, bad_request, install_error_handlers, validation_message
from memrag.server.limits import (
    ClientDisconnectedError,
    GenerationLimiter,
    QueueFullError,
    RequestGuard,
    RequestTimeoutError,
    ServerShuttingDownError,
    Ticket,
)
from memrag.server.middleware import RequestLogMiddleware, log_fields
from memrag.server.schemas import (
    AddDocumentsRequest,
    ChatCompletionRequest,
    chunk_body,
    completion_body,
    new_completion_id,
    usage,
)
from memrag.server.service import (
    ContextLengthError,
    PreparedChat,
    RagService,
    Retrieval,
    Turn,
    document_info,
)
from memrag.server.settings import ServerSettings
from memrag.store.retrieval import SearchSettings
from memrag.server.shutdown import Shutdown, shutting_down_error
from memrag.version import __version__

if TYPE_CHECKING:
    from memrag.protocols import DecodingModel

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
_END = object()


# ---------------------------------------------------------------------- helpers
async def read_json(request: Request, model: type[M]) -> M:
    """The request body validated as ``model``; every problem is a 4xx in the OpenAI shape."""
    try:
        body = await request.body()
    except ClientDisconnect:
        raise APIError(499, "client disconnected while sending the request") from None
    if not body.strip():
        raise bad_request("the request body is empty; expected a JSON object", code="invalid_json")
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        if any(e.get("type") == "json_invalid" for e in errors):
            detail = errors[0].get("ctx", {}).get("error", errors[0].get("msg"))
            raise bad_request(
                f"could not parse the JSON body: {detail}", code="invalid_json"
            ) from None
        message, param = validation_message(errors)
        raise bad_request(message, param=param) from None


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event carrying ``data`` (JSON unless already a string)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


async def _anext(iterator: AsyncIterator[Any]) -> Any:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _END


async def guarded_pieces(
    prepared: PreparedChat, guard: RequestGuard
) -> AsyncIterator[str | StreamEnd]:
    """The answer's text pieces, then a :class:`StreamEnd`, each awaited under ``guard``.

    The decoder runs in a worker thread. Leaving early — the consumer stops, the deadline
    passes (:class:`RequestTimeoutError`), the client goes away
    (:class:`ClientDisconnectedError`) — stops the decoder before this generator finishes.
    """
    pieces = iterate_in_thread(prepared.stream())
    try:
        async with contextlib.aclosing(_under_guard(pieces, guard)) as items:
            async for item in items:
                yield item
    finally:
        await pieces.aclose()


async def guarded_row(handle: RowHandle, guard: RequestGuard) -> AsyncIterator[str | StreamEnd]:
    """A batched row's text pieces, then a :class:`StreamEnd`, each awaited under ``guard``.

    Leaving early (as for :func:`guarded_pieces`) cancels the row, and this generator
    finishes only once the row has left the batch. A row that failed raises its error.
    """
    try:
        async with contextlib.aclosing(_under_guard(handle.__aiter__(), guard)) as items:
            async for item in items:
                yield item
        yield StreamEnd(handle.generation)
    finally:
        handle.cancel()  # nothing happens when it has already ended
        await handle.wait_async()


async def _under_guard(items: AsyncIterator[T], guard: RequestGuard) -> AsyncIterator[T]:
    """Each of ``items`` awaited under ``guard`` (its deadline, its client's liveness)."""
    while True:
        item = await guard.run(_anext(items))
        if item is _END:
            return
        yield item


class EventStreamResponse(StreamingResponse):
    """Server-sent events from an async generator, with a clean-up hook that always runs.

    Unlike :class:`StreamingResponse` it does not cancel the generator from a task group
    when the client leaves (the generator's own :class:`RequestGuard` notices that and stops
    the decoder with ordinary awaits), and ``on_close`` runs even when the response never
    started.
    """

    def __init__(
        self,
        events: AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None]],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
        )
        self._events = events
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self._events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            logger.debug("client went away during a stream")
        finally:
            try:
                aclose = getattr(self._events, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                await self._on_close()


# ---------------------------------------------------------------------- the app
class _Server:
    """The state and handlers behind one app."""

    def __init__(self, service: RagService, settings: ServerSettings) -> None:
        self.service = service
        self.settings = settings
        self.limiter = GenerationLimiter(
            settings.slots,
            settings.max_queue,
            retry_after_min=settings.retry_after_min,
            retry_after_max=settings.retry_after_max,
        )
        self.created = int(time.time())
        self.shutdown = Shutdown()
        self.default_max_tokens = settings.default_max_tokens or answer_max_tokens(
            service.compressor.tokenizer
        )
        self.model_names = {service.model_name, *settings.model_aliases}
        self.batcher = (
            BatchedGenerator(
                service.compressor,
                max_batch_size=settings.max_batch_size,
                batch_window=settings.batch_window_ms / 1000,
                packed_weights=None if settings.packed_weights else False,
            )
            if settings.batching
            else None
        )

    def warm_up(self) -> None:
        """Loads the embedder and packs the batcher's weights now, not in the first requests."""
        self.service.warm_up()
        if self.batcher is not None:
            self.batcher.warm_up()

    def close(self) -> None:
        """Stops the batcher (rows still running are cancelled)."""
        if self.batcher is not None:
            self.batcher.close()

    def pieces(
        self, request: Request, prepared: PreparedChat, guard: RequestGuard
    ) -> AsyncIterator[str | StreamEnd]:
        """The answer's pieces under ``guard``: decoded in the batch, or on its own."""
        if self.batcher is None:
            log_fields(request).update(batch_size=1, batch_size_mean=1.0)
            return guarded_pieces(prepared, guard)
        try:
            handle = self.batcher.submit(prepared.prompt, prepared.options)
        except BatcherClosedError:
            log_fields(request)["outcome"] = "shutdown"
            raise shutting_down_error() from None
        return self._logged_row(request, handle, guard)

    async def _logged_row(
        self, request: Request, handle: RowHandle, guard: RequestGuard
    ) -> AsyncIterator[str | StreamEnd]:
        try:
            async for item in guarded_row(handle, guard):
                yield item
        finally:
            log_fields(request).update(
                batch_size=handle.max_batch_size,
                batch_size_mean=round(handle.mean_batch_size, 2),
            )

    # ------------------------------------------------------------------ auth, admission
    async def authorize(self, request: Request) -> None:
        """Refuses requests without the API key (when one is set)."""
        key = self.settings.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode()):
            return
        message = (
            "missing API key: send 'Authorization: Bearer <key>'"
            if not token
            else "incorrect API key provided"
        )
        raise APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def admit(self, request: Request) -> Ticket:
        """A place in the queue, or a 429 with ``Retry-After``."""
        try:
            return self.limiter.admit()
        except QueueFullError as err:
            log_fields(request)["queue_full"] = True
            raise APIError(
                429,
                f"the server is busy ({err.in_flight} requests in flight, queue full); retry "
                f"after {err.retry_after}s",
                code="server_busy",
                headers={"Retry-After": str(err.retry_after)},
            ) from None

    def guard(self, request: Request) -> RequestGuard:
        """A guard with this request's deadline, watching its client and the shutdown."""
        loop = asyncio.get_running_loop()
        return RequestGuard(
            request.receive, loop.time() + self.settings.request_timeout, self.shutdown.stopping
        )

    def timeout_error(self) -> APIError:
        return APIError(
            504,
            f"the request did not finish within {self.settings.request_timeout:g}s",
            code="timeout",
        )

    # ------------------------------------------------------------------ routes
    async def healthz(self) -> dict[str, Any]:
        settings = self.settings
        batching: dict[str, Any] = {
            "max_batch_size": settings.max_batch_size,
            "batch_window_ms": settings.batch_window_ms,
        }
        if self.batcher is not None:
            batching.update(packed_weights=self.batcher.packed_weights, **self.batcher.stats())
        return {
            "status": "ok",
            "model": self.service.model_name,
            **self.limiter.stats(),
            "batching": batching,
            "integrity": self.service.store.integrity_report()
            if hasattr(self.service.store, "integrity_report")
            else {},
            "defaults": {
                "top_k": settings.top_k,
                "search_mode": settings.search_mode,
                "search_weights": list(settings.search_weights),
                "rerank": settings.rerank,
                "max_tokens": self.default_max_tokens,
                "stop": list(self.service.default_stop),
                "context": settings.context,
            },
        }

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.service.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "memrag",
            "memrag_fingerprint": self.service.fingerprint,
        }

    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_card()]}

    async def get_model(self, model_id: str) -> dict[str, Any]:
        if model_id not in self.model_names:
            raise APIError(
                404, f"the model {model_id!r} does not exist", code="model_not_found", param="model"
            )
        return self.model_card()

    def _chat_options(
        self, payload: ChatCompletionRequest
    ) -> tuple[Any, int, dict[str, Any] | None]:
        settings = self.settings
        if payload.model is not None and payload.model not in self.model_names:
            raise APIError(
                404,
                f"the model {payload.model!r} does not exist; this server serves {self.service.model_name!r}",
                code="model_not_found",
                param="model",
            )
        if len(payload.messages) > settings.max_messages:
            raise bad_request(
                f"{len(payload.messages)} messages; at most {settings.max_messages} are allowed",
                param="messages",
                code="too_many_messages",
            )
        max_tokens = payload.requested_max_tokens() or self.default_max_tokens
        if max_tokens > settings.max_tokens:
            raise bad_request(
                f"max_tokens is {max_tokens}; at most {settings.max_tokens} are allowed",
                param="max_tokens",
            )
        extra = payload.memrag
        top_k = extra.top_k if extra is not None and extra.top_k is not None else settings.top_k
        if top_k > settings.max_top_k:
            raise bad_request(
                f"memrag.top_k is {top_k}; at most {settings.max_top_k} are allowed",
                param="memrag.top_k",
            )
        filter_ = extra.filter if extra is not None else None
        if filter_:
            from memrag.store.metadata import compile_filter

            try:
                compile_filter(filter_)
            except ValueError as err:
                raise bad_request(f"memrag.filter: {err}", param="memrag.filter") from None
        retrieval = self._retrieval(extra, top_k, filter_)
        try:
            options = self.service.options(
                max_tokens=max_tokens,
                temperature=payload.temperature,
                top_p=payload.top_p,
                seed=payload.seed,
                stop=payload.stop,
            )
        except ValueError as err:
            raise bad_request(str(err)) from None
        return options, retrieval

    def _retrieval(self, extra: Any, top_k: int, filter_: dict[str, Any] | None) -> Retrieval:
        """How a chat request retrieves: the server's defaults, overridden by ``memrag.*``."""
        settings = self.settings
        mode = (extra.search_mode if extra is not None else None) or settings.search_mode
        weights = extra.search_weights if extra is not None else None
        param = "memrag.search_weights" if weights is not None else "memrag.search_mode"
        try:
            search = SearchSettings.parse(mode, weights if weights is not None else settings.search_weights)
        except ValueError as err:
            raise bad_request(f"{param}: {err}", param=param) from None
        rerank = extra.rerank if extra is not None and extra.rerank is not None else settings.rerank
        if rerank > settings.max_rerank:
            raise bad_request(
                f"memrag.rerank is {rerank}; at most {settings.max_rerank} are allowed",
                param="memrag.rerank",
            )
        return Retrieval(top_k=top_k, filter=filter_, search=search, rerank=rerank)

    async def chat_completions(self, request: Request) -> Any:
        fields = log_fields(request)
        payload = await read_json(request, ChatCompletionRequest)
        options, retrieval = self._chat_options(payload)
        stream = bool(payload.stream)
        fields.update(
            model=self.service.model_name, stream=stream, max_tokens=options.max_new_tokens
        )
        turns = [Turn(m.role, m.text) for m in payload.messages]
        ticket = self.admit(request)
        guard = self.guard(request)
        handed_over = False
        try:
            try:
                prepared = await guard.run(
                    run_in_threadpool(
                        self.service.prepare, turns, options, retrieval
                    )
                )
            except ContextLengthError as err:
                raise bad_request(str(err), param="messages", code="context_length_exceeded") from None
            except ValueError as err:
                raise bad_request(str(err), param="messages") from None
            fields["docs"] = [r.id for r in prepared.documents]
            await guard.run(ticket.acquire())
            fields["queue_ms"] = round(ticket.queue_seconds * 1000, 2)
            documents = [document_info(r) for r in prepared.documents]
            if stream:
                include_usage = bool(
                    payload.stream_options and payload.stream_options.include_usage
                )
                response = self._stream_response(
                    request, prepared, documents, ticket, guard, include_usage
                )
                handed_over = True
                return response
            generation = await self._complete(request, prepared, guard)
            return JSONResponse(
                completion_body(
                    completion_id=new_completion_id(),
                    model=self.service.model_name,
                    fingerprint=self.service.fingerprint,
                    generation=generation,
                    documents=documents,
                )
            )
        except RequestTimeoutError:
            fields["outcome"] = "timeout"
            raise self.timeout_error() from None
        except ClientDisconnectedError:
            fields["outcome"] = "disconnected"
            raise APIError(499, "client disconnected", code="client_disconnected") from None
        except ServerShuttingDownError:
            fields["outcome"] = "shutdown"
            raise shutting_down_error() from None
        except APIError:
            raise
        except Exception as err:
            # E.g. a chunk that cannot be read or spliced: this request fails, the server and
            # the other requests (of its batch) go on.
            logger.error("chat completion failed", exc_info=err)
            fields["outcome"] = "error"
            raise APIError(500, "internal server error", code="internal_error") from None
        finally:
            if not handed_over:
                ticket.release()
                await guard.close()

    async def _complete(
        self, request: Request, prepared: PreparedChat, guard: RequestGuard
    ) -> Generation:
        fields = log_fields(request)
        start = time.perf_counter()
        generation = None
        async with contextlib.aclosing(self.pieces(request, prepared, guard)) as pieces:
            async for item in pieces:
                if isinstance(item, StreamEnd):
                    generation = item.generation
                elif "ttft_ms" not in fields:
                    fields["ttft_ms"] = round((time.perf_counter() - start) * 1000, 2)
        if generation is None:  # pragma: no cover - stream_spec always ends with StreamEnd
            raise RuntimeError("the decoder stopped without a result")
        self._log_generation(fields, generation, "completed")
        return generation

    @staticmethod
    def _log_generation(fields: dict[str, Any], generation: Generation, outcome: str) -> None:
        fields.update(usage(generation), finish_reason=generation.finish_reason, outcome=outcome)

    def _stream_response(
        self,
        request: Request,
        prepared: PreparedChat,
        documents: list[dict[str, Any]],
        ticket: Ticket,
        guard: RequestGuard,
        include_usage: bool,
    ) -> EventStreamResponse:
        fields = log_fields(request)
        base = {
            "completion_id": new_completion_id(),
            "model": self.service.model_name,
            "fingerprint": self.service.fingerprint,
            "created": int(time.time()),
            "include_usage": include_usage,
        }
        start = time.perf_counter()

        async def events() -> AsyncIterator[bytes]:
            fields["outcome"] = "disconnected"  # until it ends otherwise
            yield sse(
                chunk_body(
                    **base,
                    delta={"role": "assistant", "content": ""},
                    extra={"memrag_documents": documents},
                )
            )
            try:
                async with contextlib.aclosing(self.pieces(request, prepared, guard)) as pieces:
                    async for item in pieces:
                        if isinstance(item, StreamEnd):
                            generation = item.generation
                            self._log_generation(fields, generation, "completed")
                            yield sse(
                                chunk_body(**base, delta={}, finish_reason=generation.finish_reason)
                            )
                            if include_usage:
                                yield sse(chunk_body(**base, usage_value=usage(generation)))
                        else:
                            if "ttft_ms" not in fields:
                                fields["ttft_ms"] = round((time.perf_counter() - start) * 1000, 2)
                            yield sse(chunk_body(**base, delta={"content": item}))
            except ClientDisconnectedError:
                return
            except RequestTimeoutError:
                fields["outcome"] = "timeout"
                yield sse(self.timeout_error().body())
            except ServerShuttingDownError:
                fields["outcome"] = "shutdown"
                yield sse(shutting_down_error().body())
            except APIError as err:  # e.g. the batcher closed before the row joined it
                yield sse(err.body())
            except Exception as err:
                logger.error("generation failed in a stream", exc_info=err)
                fields["outcome"] = "error"
                yield sse(APIError(500, "internal server error", code="internal_error").body())
            yield sse("[DONE]")

        async def on_close() -> None:
            ticket.release()
            await guard.close()

        return EventStreamResponse(events(), on_close)

    async def add_documents(self, request: Request) -> Any:
        from memrag.store.errors import StoreLockedError, StoreReadOnlyError

        self._check_writable()
        payload = await read_json(request, AddDocumentsRequest)
        ticket = self.admit(request)
        try:
            # Compression uses the model: it takes a slot like a generation. It is not cut
            # short by the request timeout (a half-added batch would help nobody).
            await ticket.acquire()
            docs = payload.documents
            ids = [d.id or uuid.uuid4().hex for d in docs]
            chunk_ids = await run_in_threadpool(
                self.service.add_documents,
                [d.text for d in docs],
                ids,
                [d.metadata for d in docs],
                chunk=payload.chunk,
            )
        except StoreReadOnlyError:
            raise APIError(403, "the store is read-only", code="writes_disabled") from None
        except StoreLockedError as err:
            raise APIError(
                503, str(err), code="store_locked", headers={"Retry-After": "5"}
            ) from None
        except ValueError as err:
            raise bad_request(str(err), param="documents") from None
        finally:
            ticket.release()
        log_fields(request).update(documents_added=len(docs), chunks_added=len(chunk_ids))
        return {
            "object": "list",
            "data": [{"id": doc_id, "object": "memrag.document"} for doc_id in ids],
            "chunk_ids": chunk_ids,
        }

    def _check_writable(self) -> None:
        if not self.settings.allow_writes or getattr(self.service.store, "read_only", False):
            raise APIError(
                403, "this server does not accept document changes", code="writes_disabled"
            )

    async def get_document(self, doc_id: str) -> dict[str, Any]:
        chunks = await run_in_threadpool(self.service.document_chunks, doc_id)
        if not chunks:
            raise APIError(404, f"no document {doc_id!r}", code="document_not_found")
        return {
            "id": doc_id,
            "object": "memrag.document",
            "chunks": [
                {
                    "id": c.id,
                    "text": c.text,
                    "metadata": c.metadata,
                    "use_text": c.use_text,
                    "fidelity": c.fidelity,
                }
                for c in chunks
            ],
        }

    async def delete_document(self, request: Request, doc_id: str) -> dict[str, Any]:
        from memrag.store.errors import StoreLockedError

        self._check_writable()
        try:
            deleted = await run_in_threadpool(self.service.delete_document, doc_id)
        except StoreLockedError as err:
            raise APIError(
                503, str(err), code="store_locked", headers={"Retry-After": "5"}
            ) from None
        if not deleted:
            raise APIError(404, f"no document {doc_id!r}", code="document_not_found")
        log_fields(request)["chunks_deleted"] = deleted
        return {
            "id": doc_id,
            "object": "memrag.document.deleted",
            "deleted": True,
            "chunks": deleted,
        }


def create_app(
    store: Any = None,
    settings: ServerSettings | None = None,
    *,
    service: RagService | None = None,
    compressor: DecodingModel = None,
) -> FastAPI:
    """The OpenAI-compatible RAG server over a memory store.

    Args:
        store: An open :class:`~memrag.store.MemoryStore` (writable for the document
            endpoints). The caller owns it and closes it after the server stops.
        settings: Limits, authentication and defaults (default: :class:`ServerSettings`).
        service: A ready :class:`RagService` instead of ``store``.
        compressor: The compressor (default: the store's).

    Returns:
        The FastAPI app; run it with uvicorn (``memrag serve`` does) or
        :class:`memrag.server.runner.ServerThread`.
    """
    settings = settings or ServerSettings()
    if service is None:
        if store is None:
            raise ValueError("create_app needs a store (or a service)")
        service = RagService(
            store,
            compressor=compressor,
            model_name=settings.model_name,
            stop=settings.stop,
            use_text=settings.context == "text",
            max_prompt_positions=settings.max_prompt_positions,
        )
    server = _Server(service, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # uvicorn has let open requests finish (or cancelled them): stop the batcher.
        await run_in_threadpool(server.close)

    app = FastAPI(
        title="memrag",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.memrag = server
    app.state.shutdown = server.shutdown  # driven by memrag.server.runner
    install_error_handlers(app)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "Retry-After"],
        )
    app.add_middleware(
        RequestLogMiddleware, max_body_bytes=settings.max_body_bytes, shutdown=server.shutdown
    )

    app.add_api_route("/healthz", server.healthz, methods=["GET"])
    api = APIRouter(prefix="/v1", dependencies=[Depends(server.authorize)])
    api.add_api_route("/models", server.list_models, methods=["GET"])
    api.add_api_route("/models/{model_id:path}", server.get_model, methods=["GET"])
    api.add_api_route("/chat/completions", server.chat_completions, methods=["POST"])
    api.add_api_route("/documents", server.add_documents, methods=["POST"])
    api.add_api_route("/documents/{doc_id:path}", server.get_document, methods=["GET"])
    api.add_api_route("/documents/{doc_id:path}", server.delete_document, methods=["DELETE"])
    app.include_router(api)
    return app
