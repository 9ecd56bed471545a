"""The In-context Autoencoder: one frozen base LM, used as a LoRA encoder and as the decoder.

The encoder is the base model with a peft LoRA adapter enabled. Each segment of at most
``segment_length`` tokens is followed by ``ceil(len / compression_rate)`` learned memory
embeddings; the encoder's last-layer hidden states at those positions are the segment's
slots. The decoder is the same model with its adapter disabled: it is never trained, and
its vocabulary and embedding matrix stay exactly the base model's. Task markers are learned
vectors outside the vocabulary.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from memrag.compressor.config import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    CONFIG_NAME,
    EMBEDDINGS_NAME,
    CompressorConfig,
)
from memrag.compressor.kv_encoder import encode_kv_segments, encoder_rows
from memrag.compressor.shipped import resolve_compressor_path, source_name
from memrag.generation import Generation, GenerationOptions, generate, stream
from memrag.memory.kinds import MemoryKind
from memrag.memory.kv import KVSlots
from memrag.memory.slots import Slots
from memrag.models.loading import BaseModel, load_base_model, model_signature
from memrag.prefill import KVPrefill
from memrag.splice import (
    PromptPart,
    SpliceBatch,
    Splicer,
    Task,
    has_kv_parts,
    left_padded,
    position_ids_from_mask,
)
from memrag.utils.atomic import atomic_directory
from memrag.utils.progress import progress

logger = logging.getLogger(__name__)

_MEMORY_KEY = "memory_embeddings"
_TASK_KEY = "task_embeddings"


class CompressorMismatchError(ValueError):
    """A saved compressor does not fit the base model (or its files do not fit each other)."""


class Compressor(nn.Module):
    """Compresses text into memory slots and decodes from spliced prompts.

    Build a fresh one with :meth:`from_base`, load a trained one with :meth:`from_pretrained`.

    Args:
        base: The loaded base model. Its weights are wrapped in place by the LoRA adapter.
        config: The compressor's configuration.
        seed: Seed for the initial memory/task embeddings (``None``: torch's global RNG).
    """

    def __init__(self, base: BaseModel, config: CompressorConfig, *, seed: int | None = None) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model
        from peft.tuners.tuners_utils import BaseTunerLayer

        if hasattr(base.model, "peft_config"):
            raise ValueError(
                f"the base model {base.name!r} already carries a compressor's adapter; load a "
                "fresh base model for each compressor (or pass none and let it load its own)"
            )
        self.config = config
        self.tokenizer = base.tokenizer
        self.base_name = base.name
        signature = model_signature(base.model)
        if not config.base_model_signature:
            config.base_model_signature = signature
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            # transformers' own deprecation noise when peft inspects the model.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            if seed is not None:
                # peft initialises LoRA from torch's global RNG: seed it (in a forked RNG
                # state) so the same seed always gives the same compressor.
                torch.manual_seed(seed)
            self.peft_model = get_peft_model(base.model, lora)
        hidden = int(base.model.config.hidden_size)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        mean, std = self._token_embedding_stats()
        memory = mean + std * torch.randn(config.num_memory_tokens, hidden, generator=generator)
        task = mean + std * torch.randn(len(Task), hidden, generator=generator)
        device = self.token_embeddings.weight.device
        self.memory_embeddings = nn.Parameter(memory.to(device))
        self.task_embeddings = nn.Parameter(task.to(device))
        self._lock = threading.RLock()
        self._fingerprint: str | None = None
        # The LoRA-wrapped layers, toggled by decoder_mode. (peft's own disable_adapter()
        # inspects the whole model on every call: about 15 ms per request on a CPU.)
        self._adapter_layers = [m for m in self.peft_model.modules() if isinstance(m, BaseTunerLayer)]
        self._decoder_depth = 0
        # K/V memory of leading prompt text (BOS, "Passage: "), shared by every K/V prompt.
        self._kv_memo: collections.OrderedDict = collections.OrderedDict()
        self._kv_memo_lock = threading.Lock()
        #: Cross-chunk recovery applied to prompts with several K/V chunks
        #: (:class:`~memrag.memory.recovery.RecoveryConfig`; ``None``: off).
        self.kv_recovery: Any = None

    # ------------------------------------------------------------------ construction / io
    @classmethod
    def from_base(
        cls,
        base: BaseModel | str = "gemma-3-270m",
        config: CompressorConfig | None = None,
        *,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = torch.float32,
        seed: int | None = 0,
    ) -> Compressor:
        """A freshly initialised (untrained) compressor over ``base``.

        Args:
            base: A loaded :class:`BaseModel` or a name/path for :func:`load_base_model`.
            config: Compressor settings; defaults to :class:`CompressorConfig` for ``base``.
            device: Where to load ``base`` when given by name.
            dtype: Weight dtype when ``base`` is given by name.
            seed: Seed of the initial memory/task embeddings.
        """
        if isinstance(base, str):
            base = load_base_model(base, device=device, dtype=dtype)
        config = config or CompressorConfig(base_model=base.name, base_model_revision=base.revision)
        return cls(base, config, seed=seed)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        *,
        base: BaseModel | None = None,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = torch.float32,
    ) -> Compressor:
        """Loads a saved compressor (``None``: the trained default shipped with memrag).

        Args:
            path: A directory written by :meth:`save_pretrained`, or a shipped name.
            base: The base model to use; loaded from the config's ``base_model`` when omitted.
            device: Device for the base model when it is loaded here.
            dtype: Dtype for the base model when it is loaded here.

        Raises:
            CompressorMismatchError: the base model differs from the one the compressor was
                trained for, the saved shapes are wrong, or the files are corrupt.
            FileNotFoundError: a file of the saved compressor is missing.
        """
        from peft import LoraConfig

        directory = resolve_compressor_path(path)
        for name in (CONFIG_NAME, ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, EMBEDDINGS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} is not a memrag compressor: missing {name}")
        raw = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
        stored_fingerprint = raw.get("fingerprint")
        config = CompressorConfig.from_dict(raw)
        if base is None:
            base = load_base_model(
                config.base_model, device=device, dtype=dtype, revision=config.base_model_revision
            )
        actual = model_signature(base.model)
        if actual != config.base_model_signature:
            raise CompressorMismatchError(
                f"the compressor in {directory} was trained for base model "
                f"{config.base_model!r} {_describe(config.base_model_signature)}, but the base "
                f"model given ({base.name!r}) is {_describe(actual)}"
            )
        lora = LoraConfig.from_pretrained(str(directory))
        for field_name, expected in (
            ("r", config.lora_rank),
            ("lora_alpha", config.lora_alpha),
        ):
            if getattr(lora, field_name) != expected:
                raise CompressorMismatchError(
                    f"{directory / ADAPTER_CONFIG_NAME}: {field_name}={getattr(lora, field_name)} "
                    f"but {CONFIG_NAME} says {expected}"
                )
        compressor = cls(base, config)
        compressor.load_weights(directory, expected_fingerprint=stored_fingerprint)
        compressor.source = source_name(directory)
        logger.info("loaded compressor %s (fingerprint %s)", directory, compressor.fingerprint)
        return compressor

    def load_weights(self, directory: str | Path, *, expected_fingerprint: str | None = None) -> None:
        """Loads the learned weights (LoRA adapter, memory and task embeddings) in place.

        The settings are not compared here; :meth:`from_pretrained` and the trainer's resume
        check them before calling this.

        Args:
            directory: A directory written by :meth:`save_pretrained`.
            expected_fingerprint: When given, the loaded weights must reproduce it.

        Raises:
            CompressorMismatchError: a tensor is missing, unexpected or of the wrong shape, or
                the weights do not reproduce ``expected_fingerprint``.
        """
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        directory = Path(directory)
        adapter = load_file(str(directory / ADAPTER_WEIGHTS_NAME))
        _check_state(directory / ADAPTER_WEIGHTS_NAME, adapter, get_peft_model_state_dict(self.peft_model))
        embeddings = load_file(str(directory / EMBEDDINGS_NAME))
        _check_state(
            directory / EMBEDDINGS_NAME,
            embeddings,
            {_MEMORY_KEY: self.memory_embeddings, _TASK_KEY: self.task_embeddings},
        )
        set_peft_model_state_dict(self.peft_model, adapter)
        with torch.no_grad():
            self.memory_embeddings.copy_(embeddings[_MEMORY_KEY])
            self.task_embeddings.copy_(embeddings[_TASK_KEY])
        self.invalidate_fingerprint()
        if expected_fingerprint is not None and expected_fingerprint != self.fingerprint:
            raise CompressorMismatchError(
                f"{directory}: weights do not match the stored fingerprint "
                f"({self.fingerprint} != {expected_fingerprint}); the files are corrupt or were mixed"
            )

    def _saved_tensors(self, dtype: torch.dtype | None = None) -> tuple[dict, dict]:
        from peft import get_peft_model_state_dict

        def cast(tensor: torch.Tensor) -> torch.Tensor:
            tensor = tensor.detach().to("cpu")
            return (tensor.to(dtype) if dtype is not None else tensor).contiguous()

        adapter = {k: cast(v) for k, v in get_peft_model_state_dict(self.peft_model).items()}
        embeddings = {
            _MEMORY_KEY: cast(self.memory_embeddings),
            _TASK_KEY: cast(self.task_embeddings),
        }
        return adapter, embeddings

    def save_pretrained(self, directory: str | Path, *, dtype: str | torch.dtype | None = None) -> Path:
        """Writes the compressor to ``directory`` atomically (never the base model's weights).

        Args:
            directory: Target directory; replaced as a whole if it exists.
            dtype: Store the learned weights in this dtype (e.g. ``bfloat16`` to halve the size).
        """
        from memrag.utils.torch_utils import resolve_dtype

        target = Path(directory)
        adapter, embeddings = self._saved_tensors(resolve_dtype(dtype) if dtype else None)
        fingerprint = _fingerprint(self.config, adapter, embeddings)
        with atomic_directory(target) as tmp:
            self.config.save(tmp / CONFIG_NAME, fingerprint)
            # The adapter config names the base model by its memrag name, never a local path.
            peft_config = copy.copy(self.peft_model.peft_config["default"])
            peft_config.base_model_name_or_path = self.config.base_model
            peft_config.save_pretrained(str(tmp))
            save_file(adapter, str(tmp / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
            save_file(embeddings, str(tmp / EMBEDDINGS_NAME), metadata={"format": "pt"})
        logger.info("saved compressor to %s (fingerprint %s)", target, fingerprint)
        return target

    @property
    def fingerprint(self) -> str:
        """Hash of the config and all learned weights; stores record it with their slots."""
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(self.config, *self._saved_tensors())
        return self._fingerprint

    def set_compression_rate(self, rate: int) -> None:
        """Changes the rate of a compressor whose slots are a subset of the text's own K/V
        positions (its weights do not depend on the number of kept positions); the unused
        memory embeddings are resized to the new config's count, so it saves and loads.

        Raises:
            ValueError: the compressor's slots depend on its rate (memory tokens, embeddings).
        """
        config = self.config
        if config.uses_memory_tokens:
            raise ValueError(
                f"cannot change the compression rate of a compressor with {config.slot_kind} "
                f"slots read at memory tokens: only subset K/V slots do not depend on it"
            )
        self.config = dataclasses.replace(config, compression_rate=rate)
        count = self.config.num_memory_tokens
        rows = self.memory_embeddings.data
        index = torch.arange(count, device=rows.device) % rows.shape[0]
        self.memory_embeddings = nn.Parameter(rows[index].clone())
        self.invalidate_fingerprint()

    def invalidate_fingerprint(self) -> None:
        """Forget the cached fingerprint (call after changing the weights, e.g. a train step)."""
        self._fingerprint = None

    # ------------------------------------------------------------------ modes
    @property
    def causal_lm(self) -> Any:
        """The Hugging Face causal LM (with LoRA layers injected)."""
        return self.peft_model.get_base_model()

    @property
    def token_embeddings(self) -> nn.Module:
        """The base model's input embedding module."""
        return self.peft_model.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        """Device of the model weights."""
        return self.token_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model weights."""
        return self.token_embeddings.weight.dtype

    @property
    def hidden_size(self) -> int:
        """Width of a slot."""
        return int(self.token_embeddings.weight.shape[-1])

    @contextlib.contextmanager
    def decoder_mode(self) -> Iterator[Any]:
        """Yields the frozen decoder: the base LM with the adapter disabled.

        Re-entrant: nested uses keep the adapter disabled until the outermost one exits.
        """
        with self._lock:
            if self._decoder_depth == 0:
                self._enable_adapter(False)
            self._decoder_depth += 1
            try:
                yield self.causal_lm
            finally:
                self._decoder_depth -= 1
                if self._decoder_depth == 0:
                    self._enable_adapter(True)

    def _enable_adapter(self, enabled: bool) -> None:
        for layer in self._adapter_layers:
            layer.enable_adapters(enabled)

    @contextlib.contextmanager
    def encoder_mode(self) -> Iterator[Any]:
        """Yields the encoder backbone (adapter enabled), returning hidden states."""
        with self._lock:
            yield self.causal_lm.base_model

    @property
    def splicer(self) -> Splicer:
        """The splice path shared by training, inference, LangChain and the server."""
        return Splicer(self.tokenizer, self.token_embeddings, self.task_embeddings)

    def _token_embedding_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.peft_model.get_input_embeddings().weight
        sample = torch.arange(0, weight.shape[0], max(1, weight.shape[0] // 1024), device=weight.device)
        with torch.no_grad():
            embedded = self.peft_model.get_input_embeddings()(sample).float().cpu()
        return embedded.mean(0), embedded.std(0)

    # ------------------------------------------------------------------ encoding
    def segment(self, text: str) -> list[list[int]]:
        """Token ids of ``text`` cut into segments of at most ``segment_length`` tokens."""
        return self.segment_ids(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def segment_ids(self, ids: Sequence[int]) -> list[list[int]]:
        """Token ids cut into consecutive segments of at most ``segment_length`` tokens."""
        size = self.config.segment_length
        return [list(ids[i : i + size]) for i in range(0, len(ids), size)]

    def check_segment(self, ids: Sequence[int]) -> None:
        """Refuses a segment the encoder cannot take (empty, or longer than ``segment_length``)."""
        if not ids:
            raise ValueError("cannot encode an empty segment")
        if len(ids) > self.config.segment_length:
            raise ValueError(
                f"segment of {len(ids)} tokens exceeds segment_length={self.config.segment_length}"
            )

    def encode_segments(self, segments: Sequence[Sequence[int]]) -> list[Any]:
        """Slots of each token segment, in one left-padded batch with the adapter enabled.

        ``embedding`` slots are ``(ceil(len/rate), hidden)`` tensors: the encoder's last hidden
        states at the memory tokens. ``kv`` slots are :class:`~memrag.memory.kv.KVSlots`
        (:mod:`memrag.compressor.kv_encoder`). Gradients flow (training calls this directly;
        :meth:`compress` wraps it in inference mode).
        """
        if not segments:
            return []
        if self.config.memory_kind.packed_kv:
            return encode_kv_segments(self, segments)
        rows, counts = [], []
        for ids in segments:
            self.check_segment(ids)
            row, pick = encoder_rows(self, ids)
            rows.append(row)
            counts.append(len(pick))
        inputs, mask = left_padded(rows)
        length = inputs.shape[1]
        with self.encoder_mode() as backbone:
            hidden = backbone(
                inputs_embeds=inputs,
                attention_mask=mask,
                position_ids=position_ids_from_mask(mask),
                use_cache=False,
            ).last_hidden_state
        return [hidden[i, length - count :] for i, count in enumerate(counts)]

    def join_segments(self, pieces: Sequence[Any], num_tokens: int, fingerprint: str = "") -> Slots | KVSlots:
        """One text's slots from its segments' slots (from :meth:`encode_segments`), in order."""
        if self.config.memory_kind.packed_kv:
            return KVSlots.concatenate(list(pieces), fingerprint=fingerprint, num_tokens=num_tokens)
        return Slots(
            tensor=torch.cat(list(pieces), dim=0),
            kind=self.config.slot_kind,
            fingerprint=fingerprint,
            num_tokens=num_tokens,
            segment_slot_counts=[piece.shape[0] for piece in pieces],
        )

    def compress(
        self,
        texts: Sequence[str] | str,
        *,
        batch_size: int = 16,
        show_progress: bool = False,
    ) -> list[Slots | KVSlots]:
        """Compresses each text into memory slots.

        Segments of all texts are sorted by length and encoded in batches of ``batch_size``
        segments; each text's slots are its segments' slots concatenated in order.

        Args:
            texts: Texts to compress (a single string is accepted too).
            batch_size: Segments per encoder forward pass.
            show_progress: Show a progress bar over segments.

        Returns:
            One :class:`Slots` per text (:class:`~memrag.memory.kv.KVSlots` for a ``kv``
            compressor), on the model's device and dtype.

        Raises:
            ValueError: a text is empty or whitespace-only (its index is named). A document
                with nothing to remember has no slots; callers should skip it.
        """
        if isinstance(texts, str):
            texts = [texts]
        empty = [i for i, text in enumerate(texts) if not text or not text.strip()]
        if empty:
            raise ValueError(f"cannot compress empty or whitespace-only text (indices {empty[:10]})")
        per_text = [self.segment(text) for text in texts]
        flat = [(t, s, seg) for t, segs in enumerate(per_text) for s, seg in enumerate(segs)]
        order = sorted(range(len(flat)), key=lambda i: len(flat[i][2]), reverse=True)
        outputs: dict[int, Any] = {}
        with torch.inference_mode(), progress(
            total=len(flat), desc="compressing", unit="seg", disable=not show_progress
        ) as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                slots = self.encode_segments([flat[i][2] for i in batch])
                for i, tensor in zip(batch, slots):
                    outputs[i] = tensor
                bar.update(len(batch))
        fingerprint = self.fingerprint
        results: list[Slots | KVSlots] = []
        cursor = 0
        for segs in per_text:
            pieces = [outputs[cursor + k] for k in range(len(segs))]
            cursor += len(segs)
            results.append(self.join_segments(pieces, sum(len(seg) for seg in segs), fingerprint))
        return results

    # ------------------------------------------------------------------ decoding
    def check_slots(self, prompts: Sequence[Sequence[PromptPart]]) -> None:
        """Refuses slots (embedding or trained ``kv``) made by a different compressor.

        (K/V memory made by the frozen decoder is checked against its store's fingerprint
        where it is read; any compressor over the same base model can splice it.)
        """
        mine = self.fingerprint
        for parts in prompts:
            for part in parts:
                trained = isinstance(part, Slots) or (
                    isinstance(part, KVSlots) and part.kind == MemoryKind.KV.value
                )
                if trained and part.fingerprint and part.fingerprint != mine:
                    raise CompressorMismatchError(
                        f"slots were made by compressor {part.fingerprint}, not by this one ({mine})"
                    )

    def build(
        self,
        prompts: Sequence[Sequence[PromptPart]],
        targets: Sequence[str | Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> SpliceBatch:
        """Splices ``prompts``: the one path from prompt parts to decoder inputs.

        Prompts of text, embedding slots and task markers become a dense left-padded batch
        (:meth:`memrag.splice.Splicer.build`; with ``targets`` for training). Prompts holding
        K/V memory take the K/V prefill (:class:`memrag.prefill.KVPrefill`): the batch
        then carries a cache with every position but each row's tail, computed here with the
        frozen decoder. ``kwargs`` go to the splice path taken (``tail=`` and ``recovery=``
        for K/V prompts; ``recovery`` defaults to :attr:`kv_recovery`).
        """
        self.check_slots(prompts)
        if not has_kv_parts(prompts):
            return self.splicer.build(prompts, targets, **kwargs)
        recovery = kwargs.pop("recovery", self.kv_recovery)
        with self.decoder_mode() as decoder:
            prefill = KVPrefill(
                decoder,
                self.splicer,
                memo=self._kv_memo,
                memo_lock=self._kv_memo_lock,
                recovery=recovery,
            )
            if targets is not None:
                options = {k: kwargs.pop(k) for k in ("append_eos", "max_target_tokens") if k in kwargs}
                ids = [self.splicer.target_ids(target, **options) for target in targets]
                return prefill.build(prompts, targets=ids, **kwargs)
            return prefill.build(prompts, **kwargs)

    def decoder_forward(self, batch: SpliceBatch) -> Any:
        """Runs the frozen decoder on a spliced batch; returns the HF output (loss if labels).

        With labels, logits are computed only for the trailing positions that hold targets
        (targets always end the left-padded rows): the vocabulary projection dominates the cost
        of a small model with a large vocabulary, and prompt positions need none. ``logits``
        then covers only those positions; the loss equals the full computation's.
        """
        labels = batch.labels
        kwargs: dict[str, Any] = {}
        if labels is not None:
            labelled = (labels != -100).any(dim=0).nonzero()
            first = int(labelled[0]) if labelled.numel() else labels.shape[1] - 1
            keep = labels.shape[1] - first + 1
            if keep < labels.shape[1]:
                kwargs["logits_to_keep"] = keep
                labels = labels[:, -keep:]
        with self.decoder_mode() as decoder:
            return decoder(
                inputs_embeds=batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                labels=labels,
                use_cache=False,
                **kwargs,
            )

    def generate(
        self,
        prompts: Sequence[Sequence[PromptPart]],
        options: GenerationOptions | None = None,
    ) -> list[Generation]:
        """Generates an answer for each spliced prompt with the frozen decoder."""
        options = options or GenerationOptions()
        batch = self.build(prompts)
        with self.decoder_mode() as decoder:
            return generate(decoder, self.tokenizer, batch, options)

    def stream(
        self, prompt: Sequence[PromptPart], options: GenerationOptions | None = None
    ) -> Iterator[str]:
        """Yields text chunks of the answer to one spliced prompt as they are generated.

        The iterator is a :class:`~memrag.generation.TextStream`: after it ends, its
        ``num_tokens`` and ``finish_reason`` are what :meth:`generate` would report.
        """
        options = options or GenerationOptions()
        batch = self.build([prompt])
        return stream(
            self.causal_lm,
            self.tokenizer,
            batch,
            options,
            lock=self._lock,
            enter_decoder=self.decoder_mode,
        )


def _describe(signature: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in sorted(signature.items())) + ")"


def _check_state(path: Path, loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    if missing or unexpected:
        raise CompressorMismatchError(
            f"{path}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}"
        )
    for key, tensor in expected.items():
        if tuple(loaded[key].shape) != tuple(tensor.shape):
            raise CompressorMismatchError(
                f"{path}: tensor {key} has shape {tuple(loaded[key].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )


def _fingerprint(config: CompressorConfig, adapter: dict, embeddings: dict) -> str:
    digest = hashlib.sha256(json.dumps(config.identity(), sort_keys=True).encode())
    for group in (adapter, embeddings):
        for key in sorted(group):
            # Hashed as float32 (exact for bf16/fp16), so a bf16 file and the float32 copy
            # loaded from it have the same fingerprint, as they make the same slots.
            tensor = group[key].detach().to(device="cpu", dtype=torch.float32).contiguous()
            digest.update(f"{key}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:24]
