"""Teacher-forced scoring: logits at chosen target offsets equal the full computation's."""

from __future__ import annotations

import pytest
import torch

from memrag.scoring import target_logits


@pytest.mark.parametrize("memory", ["text", "kv-exact"])
def test_target_offsets_pick_the_same_logits_as_the_full_computation(tiny_compressor, memory) -> None:
    from memrag.memory.builders import build_memory
    from memrag.memory.spec import resolve_memory_spec
    from memrag.prompts import question_likelihood_prompt, question_target_ids

    passages = ["The Spree flows through Berlin.", "Paris lies on the Seine in France."]
    if memory == "text":
        contexts = passages
    else:
        contexts = build_memory(tiny_compressor, resolve_memory_spec("kv-exact"), passages)
    prompts = [question_likelihood_prompt(c) for c in contexts]
    target = question_target_ids(tiny_compressor.tokenizer, "Which river flows through Berlin?")
    with torch.inference_mode():
        full = target_logits(tiny_compressor, prompts, [target, target])
        offsets = [0, 3, len(target) - 1]
        chosen = target_logits(tiny_compressor, prompts, [target, target], target_offsets=offsets)
    assert chosen.labels.tolist() == [[target[o] for o in offsets]] * 2
    assert torch.allclose(chosen.logits, full.logits[:, offsets], atol=1e-4)
    with pytest.raises(ValueError, match="one length"):
        target_logits(tiny_compressor, prompts, [target, target[:-1]], target_offsets=[0])
