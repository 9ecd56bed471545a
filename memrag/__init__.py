"""memrag: RAG that reads documents once, offline, as memory slots for a frozen LLM.

The public API is imported lazily, so ``import memrag`` is cheap and does not import torch.
"""

from __future__ import annotations

from memrag.utils.lazy import lazy_exports
from memrag.version import __version__

_EXPORTS = {
    "Compressor": "memrag.compressor.model",
    "CompressorConfig": "memrag.compressor.config",
    "CompressorMismatchError": "memrag.compressor.model",
    "GenerationOptions": "memrag.generation",
    "Generation": "memrag.generation",
    "Slots": "memrag.memory.slots",
    "Splicer": "memrag.splice",
    "SpliceBatch": "memrag.splice",
    "Task": "memrag.splice",
    "KVSlots": "memrag.memory.kv",
    "KVPrefill": "memrag.prefill",
    "MemoryKind": "memrag.memory.kinds",
    "MemoryStore": "memrag.store.memory_store",
    "Answerer": "memrag.rag.answerer",
    "resolve_compressor": "memrag.compressor.resolve",
    "BaseModel": "memrag.models.loading",
    "load_base_model": "memrag.models.loading",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, ("__version__",))
