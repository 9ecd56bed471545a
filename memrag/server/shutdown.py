"""Graceful shutdown: the requests still running when the grace period ends get a clean answer.

Asked to stop (SIGTERM, Ctrl-C), uvicorn stops accepting connections and gives the open
requests :data:`~memrag.server.runner.GRACEFUL_SHUTDOWN_SECONDS` to finish; then it cancels
their tasks, which would answer a bare plain-text 500 and log a ``CancelledError`` traceback.
Instead:

* the runner calls :meth:`Shutdown.begin` when the shutdown starts and
  :meth:`Shutdown.stop_requests` shortly before the grace period ends;
* every request waiting on work under its :class:`~memrag.server.limits.RequestGuard`
  (retrieval, the queue, prefill, decoding) is then stopped — its decoder too — and answered
  :func:`shutting_down_error`: a JSON 503 ``server_shutting_down`` with ``Retry-After``, or in
  a stream an error event and ``[DONE]``;
* a request uvicorn cancels all the same (work that is not guarded, such as a document add,
  or a clean-up that outlasts the margin) gets the same answer from
  :class:`~memrag.server.middleware.RequestLogMiddleware`.

Each request still logs its one access-log line, with ``"outcome": "shutdown"``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from memrag.server.errors import APIError

#: ``Retry-After`` of the 503 answered to requests stopped by a shutdown (a restarted server
#: or another replica is likely to answer by then).
RETRY_AFTER_SECONDS = 10

#: Error code of those answers.
SHUTTING_DOWN = "server_shutting_down"


class Shutdown:
    """Where the app's graceful shutdown stands; the runner drives it, the app reads it.

    Attributes:
        begun: The server is shutting down (it accepts no more connections).
        stopping: Set when the requests still running are to be stopped (the grace period is
            about to end); :class:`~memrag.server.limits.RequestGuard`\\ s wait on it.
    """

    def __init__(self) -> None:
        self.begun = False
        self.stopping = asyncio.Event()

    def begin(self) -> None:
        """The shutdown started: open requests may still finish."""
        self.begun = True

    def stop_requests(self) -> None:
        """Stops the requests still running (call it from the server's event loop)."""
        self.begun = True
        self.stopping.set()


def shutdown_of(app: Any) -> Shutdown | None:
    """The :class:`Shutdown` of an app made by :func:`memrag.server.app.create_app` (else none)."""
    shutdown = getattr(getattr(app, "state", None), "shutdown", None)
    return shutdown if isinstance(shutdown, Shutdown) else None


def shutting_down_error() -> APIError:
    """The answer to a request stopped by the shutdown: 503 ``server_shutting_down``."""
    return APIError(
        503,
        "the server is shutting down and stopped this request before it finished; retry it",
        code=SHUTTING_DOWN,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def stream_error_events(error: APIError) -> bytes:
    """The server-sent events that end a stream with ``error``: its body, then ``[DONE]``."""
    return f"data: {json.dumps(error.body(), ensure_ascii=False)}\n\ndata: [DONE]\n\n".encode()
