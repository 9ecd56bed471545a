"""The ``full-kv`` mode's storage: each chunk's complete key/value cache, computed offline.

This is the TurboRAG / LMCache approach: the decoder reads every chunk once, offline, and its
per-layer keys and values are stored (float16). At query time the retrieved chunks' caches
are concatenated into one ``past_key_values`` prefix, so only the question is prefilled.

What is cached for a chunk are the tokens of its part of the QA prompt
(:func:`memrag.prompts.qa_parts`: ``"Passage: "``, the chunk, ``"\\n"``), tokenized exactly as
the splicer tokenizes them, so the token sequence equals the ``text`` mode's. Each chunk is
computed on its own after the BOS token (position 0), at positions ``1..n``; the BOS token's
cache is stored once. Chunks therefore never attend to each other — the price of
pre-computation, and the reason TurboRAG fine-tunes its model.

Rotary positions at query time (``positions``):

* ``"reorder"`` (default): each chunk's keys are rotated by the offset it takes in the
  concatenated prefix, so every cached position has exactly the rotary position it would have
  in the ``text`` prompt (rotations compose: R(a)R(b) = R(a+b)). The question continues at
  position = prefix length. This is TurboRAG's "reordered positions".
* ``"composite"``: keys keep the positions they were computed at (every chunk at ``1..n``);
  the question still continues at position = prefix length. TurboRAG's "composite positions".

Sliding-window layers (Gemma 3 has 512-token windows on five of every six layers) are handled
by transformers' own cache: the prefix is loaded into a ``DynamicCache`` built from the model
config, whose sliding layers keep only the last ``window - 1`` prefix positions and report the
full length for the mask, exactly the positions a question token sees when the whole ``text``
prompt is prefilled. Models whose tokenizer has a chat template are not supported (the QA
prompt is then rendered by the template around the passages).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from memrag.prompts import qa_parts
from memrag.utils.atomic import atomic_path
from memrag.utils.progress import progress
from memrag.utils.torch_utils import dtype_name, resolve_dtype

logger = logging.getLogger(__name__)

Positions = Literal["reorder", "composite"]
POSITIONS: tuple[str, ...] = ("reorder", "composite")

_BOS_FILE = "bos.safetensors"
_IDS_KEY = "token_ids"


def chunk_token_ids(splicer: Any, text: str) -> list[int]:
    """Token ids of one chunk's part of the QA prompt, as the splicer tokenizes them."""
    parts = qa_parts([text], "")[:-1]  # the passage's parts; the last part is the question
    return [token for part in parts for token in splicer.tokenize(part)]


@dataclass
class ChunkKV:
    """The key/value cache of one run of tokens.

    Attributes:
        token_ids: ``(n,)`` the tokens.
        keys: Per layer, ``(kv_heads, n, head_dim)``.
        values: Per layer, ``(kv_heads, n, head_dim)``.
        start: Rotary position of the first token when the cache was computed.
    """

    token_ids: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    start: int

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return int(self.token_ids.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors as a flat safetensors dict."""
        flat = {_IDS_KEY: self.token_ids.to(torch.int32).contiguous()}
        for layer, (key, value) in enumerate(zip(self.keys, self.values)):
            flat[f"k.{layer}"] = key.contiguous()
            flat[f"v.{layer}"] = value.contiguous()
        return flat

    @classmethod
    def from_tensors(cls, flat: dict[str, torch.Tensor], start: int) -> ChunkKV:
        """Inverse of :meth:`tensors`."""
        layers = sum(1 for key in flat if key.startswith("k."))
        return cls(
            token_ids=flat[_IDS_KEY].long(),
            keys=[flat[f"k.{i}"] for i in range(layers)],
            values=[flat[f"v.{i}"] for i in range(layers)],
            start=start,
        )


class FullKVStore:
    """A directory of pre-computed key/value caches, one safetensors file per chunk.

    Args:
        directory: Where the files live (created when building).
        dtype: Dtype the caches are stored in.
    """

    def __init__(self, directory: str | Path, *, dtype: str | torch.dtype = "float16") -> None:
        self.directory = Path(directory)
        self.dtype = resolve_dtype(dtype)

    def path(self, chunk_id: str) -> Path:
        """The file of ``chunk_id`` (named by a hash: ids may hold any character)."""
        digest = hashlib.sha256(chunk_id.encode("utf-8")).hexdigest()[:32]
        return self.directory / f"{digest}.safetensors"

    def file_bytes(self, chunk_id: str) -> int:
        """Bytes on disk of one chunk's cache."""
        return self.path(chunk_id).stat().st_size

    def _save(self, path: Path, kv: ChunkKV) -> None:
        flat = kv.tensors()
        for name, tensor in flat.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                info = torch.finfo(tensor.dtype)
                flat[name] = torch.nan_to_num(tensor, nan=0.0, posinf=info.max, neginf=info.min)
                logger.warning(
                    "%s: %s overflows %s; clamped", path.name, name, dtype_name(tensor.dtype)
                )
        with atomic_path(path) as tmp:
            save_file(
                flat, str(tmp), metadata={"start": str(kv.start), "format": "memrag-full-kv-1"}
            )

    def build(
        self,
        compressor: Any,
        chunks: Sequence[tuple[str, str]],
        *,
        batch_size: int = 8,
        show_progress: bool = False,
    ) -> float:
        """Computes and stores the cache of every ``(chunk_id, text)`` with the frozen decoder.

        Chunks are length-sorted and run in right-padded batches (a causal model's real
        positions never see the padding after them). Only the decoder runs (the adapter is
        disabled); logits are computed for one position per row.

        Returns:
            Seconds spent (forward passes, casting and writing).
        """
        import time

        from transformers import DynamicCache

        self.directory.mkdir(parents=True, exist_ok=True)
        tokenizer = compressor.tokenizer
        splicer = compressor.splicer
        bos = tokenizer.bos_token_id
        head = [bos] if bos is not None else []
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        started = time.perf_counter()
        rows = [(chunk_id, chunk_token_ids(splicer, text)) for chunk_id, text in chunks]
        rows.sort(key=lambda row: len(row[1]), reverse=True)
        device = compressor.device
        with (
            compressor.decoder_mode() as decoder,
            torch.inference_mode(),
            progress(
                total=len(rows), desc="full-kv", unit="chunk", disable=not show_progress
            ) as bar,
        ):
            if head:
                cache = DynamicCache()
                decoder(
                    input_ids=torch.tensor([head], device=device),
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                self._save(
                    self.directory / _BOS_FILE,
                    self._extract(cache, 0, 0, len(head), torch.tensor(head), 0),
                )
            for begin in range(0, len(rows), batch_size):
                batch = rows[begin : begin + batch_size]
                width = len(head) + max(len(ids) for _, ids in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                for r, (_, ids) in enumerate(batch):
                    input_ids[r, : len(head) + len(ids)] = torch.tensor(head + ids)
                cache = DynamicCache()  # no config: every layer keeps all positions
                decoder(
                    input_ids=input_ids.to(device),
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                for r, (chunk_id, ids) in enumerate(batch):
                    kv = self._extract(cache, r, len(head), len(ids), torch.tensor(ids), len(head))
                    self._save(self.path(chunk_id), kv)
                bar.update(len(batch))
        return time.perf_counter() - started

    def _extract(
        self, cache: Any, row: int, begin: int, length: int, ids: torch.Tensor, start: int
    ) -> ChunkKV:
        def take(tensor: torch.Tensor) -> torch.Tensor:
            return tensor[row, :, begin : begin + length].to(device="cpu", dtype=self.dtype)

        return ChunkKV(
            token_ids=ids,
            keys=[take(layer.keys) for layer in cache.layers],
            values=[take(layer.values) for layer in cache.layers],
            start=start,
        )

    def _read(self, path: Path) -> ChunkKV:
        with safe_open(str(path), framework="pt") as handle:
            start = int((handle.metadata() or {}).get("start", 0))
            flat = {name: handle.get_tensor(name) for name in handle.keys()}
        return ChunkKV.from_tensors(flat, start)

    def load(self, chunk_ids: Sequence[str]) -> list[ChunkKV]:
        """The caches of ``chunk_ids``, in order.

        Raises:
            FileNotFoundError: a chunk has no stored cache.
        """
        return [self._read(self.path(chunk_id)) for chunk_id in chunk_ids]

    def load_bos(self) -> ChunkKV | None:
        """The BOS token's cache (``None`` for a tokenizer without BOS)."""
        path = self.directory / _BOS_FILE
        return self._read(path) if path.is_file() else None


class KeyRotation:
    """Moves cached keys to other rotary positions, using the model's own rotary module.

    Works for models whose modeling module defines ``rotate_half`` and whose decoder has a
    ``rotary_emb`` module covering the whole head (Llama, Gemma 3, Mistral, Qwen ...).
    Per-layer rotary bases (Gemma 3's local and global layers) are honoured.

    Args:
        decoder: The Hugging Face causal LM.
    """

    def __init__(self, decoder: Any) -> None:
        backbone = getattr(decoder, "model", None)
        self.rotary = getattr(backbone, "rotary_emb", None)
        self.rotate_half = getattr(sys.modules.get(type(decoder).__module__), "rotate_half", None)
        self.layer_types = list(getattr(decoder.config, "layer_types", None) or [])
        self.takes_layer_type = (
            self.rotary is not None
            and "layer_type" in inspect.signature(self.rotary.forward).parameters
        )
        self._table: dict[
            tuple[int, str | None, torch.device], tuple[torch.Tensor, torch.Tensor]
        ] = {}

    @property
    def available(self) -> bool:
        """Whether this model's keys can be re-rotated."""
        return self.rotary is not None and self.rotate_half is not None

    def _cos_sin(
        self, delta: int, layer: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layer_type = self.layer_types[layer] if layer < len(self.layer_types) else None
        key = (delta, layer_type if self.takes_layer_type else None, device)
        if key not in self._table:
            probe = torch.zeros(1, dtype=torch.float32, device=device)
            positions = torch.tensor([[0, delta]], device=device)
            if self.takes_layer_type:
                cos, sin = self.rotary(probe, positions, layer_type)
            else:
                cos, sin = self.rotary(probe, positions)
            # Position 0 has cos = attention scaling, sin = 0: divide any scaling out, so that
            # a rotation applied to an already-rotated key does not scale it twice.
            scale = cos[0, 0, 0].float()
            self._table[key] = (cos[0, 1].float() / scale, sin[0, 1].float() / scale)
        return self._table[key]

    def shift(self, keys: torch.Tensor, delta: int, layer: int) -> torch.Tensor:
        """``keys`` (``(..., n, head_dim)``) moved ``delta`` positions later at layer ``layer``."""
        if delta == 0:
            return keys
        if not self.available:
            raise RuntimeError("this model's rotary embedding cannot be re-applied")
        cos, sin = self._cos_sin(delta, layer, keys.device)
        if cos.shape[-1] != keys.shape[-1]:
            raise RuntimeError(
                f"rotary width {cos.shape[-1]} != head dim {keys.shape[-1]} (partial rotary)"
            )
        work = keys.float()
        return (work * cos + self.rotate_half(work) * sin).to(keys.dtype)


def prefix_cache(
    decoder: Any,
    parts: Sequence[ChunkKV],
    *,
    positions: Positions = "reorder",
    rotation: KeyRotation | None = None,
) -> tuple[Any, torch.Tensor]:
    """Concatenates cached runs of tokens into one ``DynamicCache`` for ``decoder``.

    Args:
        decoder: The causal LM the caches were computed with.
        parts: The runs in prompt order (the BOS run first, then the chunks).
        positions: ``"reorder"`` or ``"composite"`` (see the module docstring).
        rotation: A :class:`KeyRotation` for ``decoder`` (made here when omitted).

    Returns:
        The cache (in the decoder's dtype and device) and the prefix's token ids.
    """
    from transformers import DynamicCache

    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if not parts:
        raise ValueError("an empty prefix has no cache")
    weight = decoder.get_input_embeddings().weight
    rotation = rotation or (KeyRotation(decoder) if positions == "reorder" else None)
    layers = len(parts[0].keys)
    keys: list[list[torch.Tensor]] = [[] for _ in range(layers)]
    values: list[list[torch.Tensor]] = [[] for _ in range(layers)]
    offset = 0
    for part in parts:
        delta = offset - part.start if positions == "reorder" else 0
        for layer in range(layers):
            key = part.keys[layer].to(device=weight.device, dtype=weight.dtype)
            keys[layer].append(rotation.shift(key, delta, layer) if rotation is not None else key)
            values[layer].append(part.values[layer].to(device=weight.device, dtype=weight.dtype))
        offset += part.length
    cache = DynamicCache(config=decoder.config)
    for layer in range(layers):
        cache.update(
            torch.cat(keys[layer], dim=-2).unsqueeze(0),
            torch.cat(values[layer], dim=-2).unsqueeze(0),
            layer,
        )
    return cache, torch.cat([part.token_ids for part in parts])
