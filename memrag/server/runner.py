"""Running the app: in the foreground (``memrag serve``) or in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

#: Seconds uvicorn waits for open requests when asked to stop.
GRACEFUL_SHUTDOWN_SECONDS = 5


def _config(app: Any, log_level: str, **options: Any) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,  # the app logs one structured line per request itself
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        **options,
    )


def run_server(
    app: Any, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info"
) -> None:
    """Serves ``app`` with uvicorn until interrupted (Ctrl-C / SIGTERM)."""
    import uvicorn

    uvicorn.Server(_config(app, log_level, host=host, port=port)).run()


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
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._socket = sock
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(_config(self.app, self.log_level))
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
