"""Errors in the OpenAI error shape: ``{"error": {"message", "type", "param", "code"}}``.

Every error the server sends has that shape, so OpenAI clients raise their usual exception
classes (``BadRequestError``, ``AuthenticationError``, ``RateLimitError``, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

#: OpenAI error ``type`` for each status the server sends.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answered with ``status`` and the OpenAI error body.

    Args:
        status: HTTP status code.
        message: Human-readable message.
        code: Machine-readable code (OpenAI style, e.g. ``"invalid_api_key"``).
        param: The request parameter at fault, if any.
        headers: Extra response headers (``Retry-After``, ``WWW-Authenticate``).
        type: Error type (default: from :data:`ERROR_TYPES`).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        self.type = type or ERROR_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {...}}``."""
        return error_body(self.message, self.type, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        """This error as a response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(
    message: str, type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 ``invalid_request_error``."""
    return APIError(400, message, param=param, code=code)


def validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """A readable message and the offending parameter for pydantic validation errors."""
    parts = []
    param = None
    for error in errors[:5]:
        location = [str(p) for p in error.get("loc", ()) if not _type_tag(p)]
        where = ".".join(location)
        if param is None and location:
            param = where
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more, param


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "body"}


def _type_tag(part: Any) -> bool:
    """Whether a pydantic error location part names a union member type, not a field."""
    if isinstance(part, int):
        return False
    text = str(part)
    return text.lower() in _TYPE_NAMES or any(c in text for c in "[](-")


def install_error_handlers(app: FastAPI) -> None:
    """Makes every error the app answers use the OpenAI shape (never FastAPI's 422)."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        request.state.memrag_error = exc.code or exc.type
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc.errors())
        request.state.memrag_error = "invalid_request_error"
        return bad_request(message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        error = APIError(exc.status_code, str(exc.detail), code=code, headers=exc.headers)
        request.state.memrag_error = error.code or error.type
        return error.response()

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        request.state.memrag_error = "internal_error"
        return APIError(500, "internal server error", code="internal_error").response()
