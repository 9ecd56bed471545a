"""``MemragLLM``: a LangChain completion LLM that splices stored memory slots into its prompt."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LLM
from langchain_core.outputs import Generation as LCGeneration
from langchain_core.outputs import GenerationChunk, LLMResult
from langchain_core.runnables.config import run_in_executor

from memrag.generation import Generation
from memrag.langchain._base import MODEL_CONFIG, MemragModelMixin
from memrag.rag.answerer import StreamEnd
from memrag.rag.prompt import PromptSpec, completion_spec
from memrag.rag.threads import iterate_in_thread

logger = logging.getLogger(__name__)


class MemragLLM(MemragModelMixin, LLM):
    """Completion LLM over a frozen decoder that reads documents as memory slots.

    The prompt is used as is (no chat template, the tokenizer's BOS token first). Every signed
    document marker in it (:func:`~memrag.langchain.format_docs`,
    :func:`~memrag.rag.markers.document_marker`) is replaced by the document's slots
    (its text, for documents flagged ``use_text``).

    ``batch``/``generate`` decode all prompts together with the compressor's batched
    ``generate`` (``batch_size`` prompts per call). ``generation_info`` carries
    ``finish_reason`` and ``usage_metadata`` (decoder positions prefilled, tokens generated);
    ``llm_output`` carries ``model_name`` and the summed ``token_usage``.
    """

    model_config = MODEL_CONFIG
    _ls_model_type: ClassVar[Literal["chat", "llm"]] = "llm"

    @property
    def _llm_type(self) -> str:
        return "memrag"

    def to_spec(self, prompt: str) -> PromptSpec:
        """Parses a completion prompt (markers verified with this model's reference key)."""
        return completion_spec(self.parse_text(prompt))

    def _info(self, spec: PromptSpec, generation: Generation) -> dict[str, Any]:
        return {
            "finish_reason": generation.finish_reason,
            "usage_metadata": self.usage(generation),
            "memrag_documents": spec.document_ids,
        }

    # ------------------------------------------------------------------ LangChain hooks
    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return self._generate([prompt], stop, run_manager, **kwargs).generations[0][0].text

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        options = self.generation_options(stop, kwargs)
        specs = [self.to_spec(prompt) for prompt in prompts]
        if self.streaming and len(prompts) == 1:
            pairs = [self._collect(self._stream(prompts[0], stop, run_manager, **kwargs))]
        else:
            pairs = [
                (LCGeneration(text=g.text, generation_info=self._info(spec, g)), g)
                for spec, g in zip(specs, self.answerer.run_specs(specs, options))
            ]
        usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        for _, generation in pairs:
            for key, value in self.usage(generation).items():
                if key in usage:
                    usage[key] += value
        return LLMResult(
            generations=[[lc_generation] for lc_generation, _ in pairs],
            llm_output={"model_name": self.model_name, "token_usage": usage},
        )

    @staticmethod
    def _collect(chunks: Iterator[GenerationChunk]) -> tuple[LCGeneration, Generation]:
        merged: GenerationChunk | None = None
        for chunk in chunks:
            merged = chunk if merged is None else merged + chunk
        if merged is None or not merged.generation_info:
            raise RuntimeError("the stream ended without its final chunk")
        info = merged.generation_info
        usage = info["usage_metadata"]
        cached = usage.get("input_token_details", {}).get("cache_read", 0)
        generation = Generation(
            merged.text,
            usage["output_tokens"],
            info["finish_reason"],
            usage["input_tokens"],
            usage["input_tokens"] - cached,
        )
        return LCGeneration(text=merged.text, generation_info=info), generation

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        # LLM's default answers prompts one by one; this keeps them in one batched decode.
        sync_manager = run_manager.get_sync() if run_manager else None
        return await run_in_executor(None, self._generate, prompts, stop, sync_manager, **kwargs)

    def _chunks(
        self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Iterator[GenerationChunk]:
        options = self.generation_options(stop, kwargs)
        spec = self.to_spec(prompt)
        with contextlib.closing(self.answerer.stream_spec(spec, options)) as items:
            for item in items:
                if isinstance(item, StreamEnd):
                    yield GenerationChunk(
                        text="", generation_info=self._info(spec, item.generation)
                    )
                else:
                    yield GenerationChunk(text=item)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        with contextlib.closing(self._chunks(prompt, stop, kwargs)) as chunks:
            for chunk in chunks:
                if run_manager is not None and chunk.text:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        async for chunk in iterate_in_thread(self._chunks(prompt, stop, kwargs)):
            if run_manager is not None and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
