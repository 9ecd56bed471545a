"""ASGI middleware: request ids, the body size limit, and one structured log line per request.

Each request gets an id (the client's ``X-Request-ID`` when it is sane, else a new one),
echoed in the ``x-request-id`` response header. When the request is over — a stream
included — one JSON line is logged on the ``memrag.server.access`` logger::

    {"event": "request", "request_id": "req-…", "method": "POST", "path": "/v1/chat/completions",
     "status": 200, "latency_ms": 812.4, "stream": false, "prompt_tokens": 41,
     "completion_tokens": 16, "docs": ["tower#0"], "queue_ms": 0.1, ...}

Handlers add fields through :func:`log_fields`.

A request still running when a graceful shutdown ends is answered a JSON 503
``server_shutting_down`` (a stream: an error event) and logged like any other, even when
uvicorn cancels it (:mod:`memrag.server.shutdown`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memrag.server.errors import APIError
from memrag.server.shutdown import Shutdown, shutting_down_error, stream_error_events

#: The logger of the per-request lines.
ACCESS_LOGGER = "memrag.server.access"
#: Response header carrying the request id.
REQUEST_ID_HEADER = "x-request-id"

access_logger = logging.getLogger(ACCESS_LOGGER)
logger = logging.getLogger(__name__)
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_STATE_KEY = "memrag_log"


class BodyTooLargeError(APIError):
    """The request body exceeds the server's limit (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"request body exceeds the limit of {limit} bytes",
            code="request_too_large",
        )


def configure_access_log(stream: Any = None) -> logging.Handler:
    """Sends the per-request JSON lines to ``stream`` (default stderr), one bare line each.

    Returns:
        The handler added to the access logger (remove it to undo).
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)
    access_logger.propagate = False
    return handler


def log_fields(request: Request) -> dict[str, Any]:
    """The dict of fields the request's log line will carry (handlers add to it)."""
    state = request.scope.setdefault("state", {})
    return state.setdefault(_STATE_KEY, {})


def request_id(request: Request) -> str:
    """The request's id."""
    return str(log_fields(request).get("request_id", ""))


class RequestLogMiddleware:
    """Assigns request ids, enforces ``max_body_bytes``, logs one JSON line per request.

    Args:
        app: The wrapped ASGI app.
        max_body_bytes: Largest request body; a larger ``Content-Length`` is answered 413
            at once, and a body that turns out larger while read raises
            :class:`BodyTooLargeError` in the handler reading it.
        shutdown: The app's graceful shutdown: a request cancelled once it has begun (uvicorn
            cancels those still running when the grace period ends) is answered
            :func:`~memrag.server.shutdown.shutting_down_error` instead of failing.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, shutdown: Shutdown | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        given = headers.get(REQUEST_ID_HEADER, "")
        rid = given if _SANE_ID.match(given) else f"req-{uuid.uuid4().hex[:20]}"
        fields = scope.setdefault("state", {}).setdefault(_STATE_KEY, {})
        fields.update(request_id=rid)
        status = {"code": 500}
        response: dict[str, Any] = {"started": False, "ended": False, "content_type": b""}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                response["started"] = True
                raw = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                response["content_type"] = next(
                    (v for k, v in raw if k.lower() == b"content-type"), b""
                )
                message = {**message, "headers": [*raw, (REQUEST_ID_HEADER.encode(), rid.encode())]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                response["ended"] = True
            await send(message)

        received = {"bytes": 0}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > self.max_body_bytes:
                    raise BodyTooLargeError(self.max_body_bytes)
            return message

        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            length = 0
        try:
            if length > self.max_body_bytes:
                error = BodyTooLargeError(self.max_body_bytes)
                fields["error"] = error.code
                await error.response()(scope, receive, send_with_id)
            else:
                await self.app(scope, limited_receive, send_with_id)
        except asyncio.CancelledError:
            if self.shutdown is None or not self.shutdown.begun:
                raise
            # uvicorn ended the request at the end of its graceful shutdown: answer it.
            _uncancel()
            fields.update(outcome="shutdown", error=shutting_down_error().code)
            await self._answer_shutdown(scope, receive, send_with_id, response)
        finally:
            self._log(scope, fields, status["code"], start)

    @staticmethod
    async def _answer_shutdown(
        scope: Scope, receive: Receive, send: Send, response: dict[str, Any]
    ) -> None:
        """Ends a cancelled request's response with the shutdown error, however far it got."""
        error = shutting_down_error()
        try:
            if not response["started"]:
                await error.response()(scope, receive, send)
            elif not response["ended"]:
                is_stream = response["content_type"].startswith(b"text/event-stream")
                body = stream_error_events(error) if is_stream else b""
                await send({"type": "http.response.body", "body": body, "more_body": False})
        except Exception:  # noqa: BLE001 - the client may be gone too; the log line says it all
            logger.debug("could not answer a request stopped by the shutdown", exc_info=True)

    @staticmethod
    def _log(scope: Scope, fields: dict[str, Any], status: int, start: float) -> None:
        error = scope.get("state", {}).get("memrag_error")
        if error and "error" not in fields:
            fields["error"] = error
        client = scope.get("client")
        line = {
            "event": "request",
            "request_id": fields.pop("request_id", None),
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": status,
            "latency_ms": round((time.perf_counter() - start) * 1000, 2),
            "client": client[0] if client else None,
            **fields,
        }
        level = logging.WARNING if status >= 500 else logging.INFO
        access_logger.log(level, json.dumps(line, ensure_ascii=False, default=str))


def _uncancel() -> None:
    """Marks the current task's cancellation as handled (Python >= 3.11), so that later
    awaits and timeouts in it behave as usual."""
    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()
