"""ASGI middleware: request ids, the body size limit, and one structured log line per request.

Each request gets an id (the client's ``X-Request-ID`` when it is sane, else a new one),
echoed in the ``x-request-id`` response header. When the request is over — a stream
included — one JSON line is logged on the ``memrag.server.access`` logger::

    {"event": "request", "request_id": "req-…", "method": "POST", "path": "/v1/chat/completions",
     "status": 200, "latency_ms": 812.4, "stream": false, "prompt_tokens": 41,
     "completion_tokens": 16, "docs": ["tower#0"], "queue_ms": 0.1, ...}

Handlers add fields through :func:`log_fields`.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memrag.server.errors import APIError

#: The logger of the per-request lines.
ACCESS_LOGGER = "memrag.server.access"
#: Response header carrying the request id.
REQUEST_ID_HEADER = "x-request-id"

access_logger = logging.getLogger(ACCESS_LOGGER)
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
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                raw = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                message = {**message, "headers": [*raw, (REQUEST_ID_HEADER.encode(), rid.encode())]}
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
        finally:
            self._log(scope, fields, status["code"], start)

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
