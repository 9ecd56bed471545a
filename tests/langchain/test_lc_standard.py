"""LangChain's own standard test suites for ChatMemrag, run on a tiny random compressor."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from memrag.langchain import ChatMemrag, InMemoryDocumentSource
from memrag.testing import tiny_compressor


@functools.cache
def _source() -> InMemoryDocumentSource:
    source = InMemoryDocumentSource(tiny_compressor(seed=0))
    source.add_texts(
        ["Paris is the capital of France.", "The Eiffel Tower was completed in 1889."],
        ids=["paris", "tower"],
    )
    return source


class _Capabilities:
    """What ChatMemrag can and cannot do, declared through the suites' own flags."""

    @property
    def chat_model_class(self) -> type[ChatMemrag]:
        return ChatMemrag

    @property
    def has_tool_calling(self) -> bool:
        # The frozen decoder is a plain causal LM: it has no tool-call output format to parse.
        return False

    @property
    def has_structured_output(self) -> bool:
        # No tool calling and no constrained (JSON-schema) decoding, so no structured output.
        return False

    @property
    def supports_model_override(self) -> bool:
        # One instance serves one compressor and its decoder; a per-call `model` cannot swap
        # weights (a different name raises ValueError).
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestChatMemragUnit(_Capabilities, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        # No max_tokens here: test_standard_params passes its own.
        return {"source": _source()}


class TestChatMemragIntegration(_Capabilities, ChatModelIntegrationTests):
    """The integration suite runs the (tiny) model locally: no network, no API key."""

    # The suite's async tests are plain coroutines written for asyncio "auto" mode; marking
    # the class runs them under pytest-asyncio without changing the project's mode (the mark
    # is harmless on the sync tests, hence the filter).
    pytestmark = [
        pytest.mark.asyncio,
        pytest.mark.filterwarnings("ignore:The test <Function.*is not an async function"),
    ]

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Short answers keep the suite fast; the random model never stops on its own.
        return {"source": _source(), "max_tokens": 8}
