"""``memrag serve``: an OpenAI-compatible HTTP server doing RAG over a memory store.

Needs FastAPI and uvicorn (installed with memrag). Names are imported lazily::

    from memrag.server import ServerSettings, create_app

    app = create_app(store, ServerSettings(api_key="secret", max_queue=16))
"""

from __future__ import annotations

from memrag.utils.lazy import lazy_exports

_EXPORTS = {
    "create_app": "memrag.server.app",
    "ServerSettings": "memrag.server.settings",
    "load_api_key": "memrag.server.settings",
    "API_KEY_ENV": "memrag.server.settings",
    "RagService": "memrag.server.service",
    "GenerationLimiter": "memrag.server.limits",
    "ServerThread": "memrag.server.runner",
    "APIError": "memrag.server.errors",
    "ACCESS_LOGGER": "memrag.server.middleware",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, ())
