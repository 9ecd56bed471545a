"""Tiny in-process models for tests and examples: no downloads, built in a second.

``tiny_base_model()`` returns a random 2-layer Gemma-3 (or Llama) with hidden size 32 and a
byte-level BPE tokenizer trained in-process on a few sentences. ``tiny_compressor()`` wraps
one in a :class:`~memrag.compressor.Compressor` whose LoRA weights are randomised (not the
zero init of peft), so tests that compare saved and loaded weights can fail.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch

from memrag.compressor.config import CompressorConfig
from memrag.models.loading import BaseModel, prepare_for_memrag

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital and most populous city of France.",
    "Question: What is the capital of France? Answer: Paris",
    "Memory slots compress a document into a few vectors for a frozen decoder.",
    "In 1889 the Eiffel Tower was completed for the World's Fair.",
    "Context: numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ! ? ( ) \" '",
]


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tokenizer.to_str()


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer (any text encodes) with pad=0, eos=1, bos=2 like Gemma."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    return tokenizer


def tiny_base_model(
    *,
    architecture: Literal["gemma3", "llama"] = "gemma3",
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    name: str | None = None,
    sliding_window: int = 64,
) -> BaseModel:
    """A random tiny causal LM and tokenizer, frozen and ready for a compressor.

    The Gemma 3 flavour alternates sliding-window (``sliding_window`` positions) and full
    attention layers, as Gemma 3 does.
    """
    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    shared: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 1024,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    }
    if architecture == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        config = Gemma3TextConfig(
            **shared,
            head_dim=16,
            sliding_window=sliding_window,
            layer_types=["sliding_attention", "full_attention"] * (num_layers // 2)
            + ["sliding_attention"] * (num_layers % 2),
        )
        model = Gemma3ForCausalLM(config)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(**shared)
        model = LlamaForCausalLM(config)
    prepare_for_memrag(model, tokenizer)
    return BaseModel(model=model, tokenizer=tokenizer, name=name or f"tiny-{architecture}-{seed}")


def randomize_lora(compressor: Any, *, seed: int = 0, std: float = 0.05) -> None:
    """Gives every LoRA matrix random values, so the adapter changes the encoder's output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in compressor.peft_model.named_parameters():
            if "lora_" in name:
                noise = torch.randn(parameter.shape, generator=generator) * std
                parameter.copy_(noise.to(parameter.dtype))
    compressor.invalidate_fingerprint()


def tiny_compressor(
    *,
    seed: int = 0,
    segment_length: int = 16,
    compression_rate: int = 4,
    architecture: Literal["gemma3", "llama"] = "gemma3",
    base: BaseModel | None = None,
    slot_kind: Literal["embedding", "kv"] = "embedding",
    kv_positions: Literal["memory", "subset"] = "memory",
    kv_selection: Literal["stride", "prefill", "kvzip", "prefill-salient", "kvzip-salient"] = "stride",
) -> Any:
    """A tiny compressor with random (non-zero) LoRA weights over a fresh tiny base model."""
    from memrag.compressor.model import Compressor

    base = base or tiny_base_model(architecture=architecture, seed=seed)
    config = CompressorConfig(
        base_model=base.name,
        segment_length=segment_length,
        compression_rate=compression_rate,
        slot_kind=slot_kind,
        kv_positions=kv_positions,
        kv_selection=kv_selection,
        lora_rank=4,
        lora_alpha=8,
    )
    compressor = Compressor(base, config, seed=seed)
    randomize_lora(compressor, seed=seed)
    return compressor
