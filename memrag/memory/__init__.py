"""Every kind of memory a store can hold for a chunk: kinds, K/V memory, making and storing it.

* :class:`MemoryKind` names the kinds (``embedding``, ``kv-exact``, ``kv-pruned``, ``kv``).
* :class:`KVSlots` holds a chunk's keys (before the rotary embedding) and values.
* :class:`MemorySpec` says how a store makes its memory; :func:`build_memory` makes it.
* :class:`Memory` is what embedding slots and K/V memory both offer (kind, count, bytes).
* :mod:`memrag.memory.codec` packs K/V memory into store shards (float16, bfloat16, int8, int4,
  k8v4, int4r, int4c); :mod:`memrag.memory.calibration` measures a store's ``int4c`` channel
  calibration.

Splicing K/V memory into a prompt is :mod:`memrag.prefill` (beside :mod:`memrag.splice`), which
imports this package; nothing here imports the splice path.
"""

from __future__ import annotations

from memrag.utils.lazy import lazy_exports

_EXPORTS = {
    "MemoryKind": "memrag.memory.kinds",
    "KVSlots": "memrag.memory.kv",
    "UnsupportedModelError": "memrag.memory.anatomy",
    "decoder_anatomy": "memrag.memory.anatomy",
    "capture_kv": "memrag.memory.capture",
    "Memory": "memrag.memory.protocol",
    "MemorySpec": "memrag.memory.spec",
    "build_memory": "memrag.memory.builders",
    "KVCodec": "memrag.memory.codec",
    "PruningConfig": "memrag.memory.pruning",
    "RecoveryConfig": "memrag.memory.recovery",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
