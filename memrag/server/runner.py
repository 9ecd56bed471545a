"""Running the app: in the foreground (``memrag serve``) or in a background thread.

Both stop gracefully (:mod:`memrag.server.shutdown`): open requests get
:data:`GRACEFUL_SHUTDOWN_SECONDS` to finish, and those still running
:data:`STOP_MARGIN_SECONDS` before the end are stopped and answered a JSON 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from memrag.server.shutdown import shutdown_of

#: Seconds uvicorn waits for open requests when asked to stop.
GRACEFUL_SHUTDOWN_SECONDS = 5

#: Seconds before the end of the grace period at which the app stops the requests still
#: running, so that they are answered (and their decoders stopped) before uvicorn cancels
#: them. With a grace period under twice this, they are stopped halfway through it.
STOP_MARGIN_SECONDS = 1.0


def _config(app: Any, log_level: str, **options: Any) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,  # the app logs one structured line per request itself
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        **options,
    )


def stop_delay(grace: float | None) -> float | None:
    """Seconds after a shutdown starts at which the requests still running are stopped
    (none: a grace period without end)."""
    if grace is None:
        return None
    return grace - STOP_MARGIN_SECONDS if grace >= 2 * STOP_MARGIN_SECONDS else grace / 2


def _server(config: Any) -> Any:
    """A uvicorn server that tells the app (a :func:`~memrag.server.app.create_app` one)
    when its graceful shutdown begins and when to stop what is still running."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            shutdown = shutdown_of(self.config.app)
            delay = stop_delay(self.config.timeout_graceful_shutdown)
            timer = None
            if shutdown is not None:
                shutdown.begin()
                if delay is not None:
                    timer = asyncio.get_running_loop().call_later(delay, shutdown.stop_requests)
            try:
                await super().shutdown(sockets)
            finally:
                if timer is not None:
                    timer.cancel()

    return GracefulServer(config)


def run_server(
    app: Any, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info"
) -> None:
    """Serves ``app`` with uvicorn until interrupted (Ctrl-C / SIGTERM), then stops gracefully.

    After SIGTERM it returns, so that the caller closes what it opened (``memrag serve`` its
    store) and exits with status 0; after Ctrl-C it raises :class:`KeyboardInterrupt`.
    """
    server = _server(_config(app, log_level, host=host, port=port))
    with _sigterm_stops(server):
        server.run()


@contextlib.contextmanager
def _sigterm_stops(server: Any) -> Iterator[None]:
    """SIGTERM asks ``server`` to exit, and nothing more.

    uvicorn handles SIGTERM itself while it serves, then restores the handler it found and
    raises the signal again; under the default handler that would kill the process before
    the caller's clean-up (a store's last index checkpoint) ran.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        server.should_exit = True

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ServerThread:
    """Serves an ASGI app with uvicorn from a background thread (tests, notebooks, benchmarks).

    Example:
        .. code-block:: python

            with ServerThread(create_app(store)) as server:
                client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused")

    Args:
        app: The ASGI app.
        host: Address to bind (default loopback).
        port: Port to bind (0: a free one, see :attr:`port`).
        log_level: uvicorn's log level.
    """

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
    ) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self.log_level = log_level
        self.port: int | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        if self.port is None:
            raise RuntimeError("the server is not running")
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        """Binds the port, starts serving, and waits until the server accepts connections.

        Raises:
            RuntimeError: the server did not start within ``timeout`` seconds.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._socket = sock
        self.port = sock.getsockname()[1]
        self._server = _server(_config(self.app, self.log_level))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="memrag-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Asks the server to exit and waits for its thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self._thread = None
        self._server = None
        self._socket = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
