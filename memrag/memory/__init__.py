"""Every kind of memory a store can hold for a chunk, and the K/V splice path.

* :class:`MemoryKind` names the kinds (``embedding``, ``kv-exact``, ``kv-pruned``, ``kv``).
* :class:`KVSlots` holds a chunk's keys (before the rotary embedding) and values.
* :class:`MemorySpec` says how a store makes its memory; :func:`build_memory` makes it.
* :class:`KVPrefill` turns prompts that mix text, embedding slots and K/V memory into decoder
  inputs plus a cache prefix (used through :meth:`memrag.compressor.Compressor.build`).
* :mod:`memrag.memory.codec` packs K/V memory into store shards (float16, bfloat16, int8).
"""

from __future__ import annotations

from memrag.utils.lazy import lazy_exports

_EXPORTS = {
    "MemoryKind": "memrag.memory.kinds",
    "KVSlots": "memrag.memory.kv",
    "UnsupportedModelError": "memrag.memory.anatomy",
    "decoder_anatomy": "memrag.memory.anatomy",
    "capture_kv": "memrag.memory.capture",
    "KVPrefill": "memrag.memory.prefill",
    "MemorySpec": "memrag.memory.spec",
    "build_memory": "memrag.memory.builders",
    "KVCodec": "memrag.memory.codec",
    "PruningConfig": "memrag.memory.pruning",
    "RecoveryConfig": "memrag.memory.recovery",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
