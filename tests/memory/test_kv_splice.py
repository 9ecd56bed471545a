"""The K/V splice path: moved caches equal computing them in place, batching, mixing parts."""

from __future__ import annotations

import pytest
import torch

from memrag.compressor import Compressor, CompressorConfig
from memrag.generation import GenerationOptions
from memrag.memory.anatomy import UnsupportedModelError, decoder_anatomy
from memrag.memory.builders import build_memory
from memrag.memory.capture import capture_kv
from memrag.memory.kv import KVSlots
from memrag.memory.spec import MemorySpec
from memrag.testing import randomize_lora, tiny_base_model

#: Float32 tiny models: a moved cache matches recomputation up to summation order.
ATOL = 1e-5

CHUNK_A = "Paris is the capital and most populous city of France."
CHUNK_B = "In 1889 the Eiffel Tower was completed for the World's Fair."
QUESTION = "\nQuestion: What is the capital of France?\nAnswer:"


def _compressor(architecture: str = "gemma3", sliding_window: int = 64) -> Compressor:
    base = tiny_base_model(architecture=architecture, sliding_window=sliding_window, num_layers=2)
    config = CompressorConfig(base_model=base.name, segment_length=16, lora_rank=4, lora_alpha=8)
    compressor = Compressor(base, config, seed=0)
    randomize_lora(compressor)
    return compressor


def _exact(compressor: Compressor, text: str, context: list[int]) -> KVSlots:
    with compressor.decoder_mode() as decoder:
        (captured,) = capture_kv(decoder, [compressor.splicer.tokenize(text)], context=context)
    span = captured.keys.shape[0]
    offsets = torch.arange(span).unsqueeze(1).expand(span, captured.keys.shape[1]).clone()
    return KVSlots(captured.keys, captured.values, offsets, span, num_tokens=span)


def _kv_last_logits(compressor: Compressor, prompt: list) -> torch.Tensor:
    batch = compressor.build([prompt])
    cached = batch.cache.get_seq_length()
    with compressor.decoder_mode() as decoder, torch.no_grad():
        logits = decoder(
            inputs_embeds=batch.inputs_embeds[:, cached:],
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids[:, cached:],
            cache=batch.cache,
        ).logits
    return logits[0, -1]


def _reference_logits(compressor: Compressor, segments: list[tuple[list[int], str]]) -> torch.Tensor:
    """Next-token logits of ``segments`` computed in place, each ``"chunk"`` segment seeing only
    itself (the rest sees everything before it), within the sliding window on sliding layers."""
    ids = [token for tokens, _ in segments for token in tokens]
    owner = [index for index, (tokens, _) in enumerate(segments) for _ in tokens]
    kinds = [kind for tokens, kind in segments for _ in tokens]
    length = len(ids)
    allowed = torch.zeros((length, length), dtype=torch.bool)
    for q in range(length):
        for k in range(q + 1):
            if kinds[q] != "chunk" or owner[k] == owner[q]:
                allowed[q, k] = True
    anatomy = decoder_anatomy(compressor.causal_lm)
    distance = torch.arange(length).unsqueeze(1) - torch.arange(length).unsqueeze(0)
    masks = {}
    for layer_type, window in zip(anatomy.layer_types, anatomy.windows):
        visible = allowed if window is None else allowed & (distance < window)
        masks[layer_type] = torch.zeros((1, 1, length, length)).masked_fill(
            ~visible, torch.finfo(torch.float32).min
        )
    mask = masks if anatomy.mask_by_type else next(iter(masks.values()))
    with compressor.decoder_mode() as decoder, torch.no_grad():
        logits = decoder(
            input_ids=torch.tensor([ids]),
            attention_mask=mask,
            position_ids=torch.arange(length).unsqueeze(0),
        ).logits
    return logits[0, -1]


@pytest.mark.parametrize("architecture", ["gemma3", "llama"])
def test_chunk_cached_at_one_and_moved_to_p_equals_computing_it_at_p(architecture: str) -> None:
    """After its BOS token at 0, a chunk sits at 1..n; moved to p it must equal the chunk
    computed after a BOS token at p - 1: the same pre-rotary keys and values, and keys rotated
    to p that equal the model's own cached keys there."""
    compressor = _compressor(architecture)
    bos = compressor.tokenizer.bos_token_id
    ids = compressor.splicer.tokenize(CHUNK_A)
    p = 23
    at_one = _exact(compressor, CHUNK_A, [bos])
    with compressor.decoder_mode() as decoder:
        (at_p,) = capture_kv(decoder, [ids], context=[bos], start=p - 1)
        cache = _model_cache(decoder, [bos] + ids, start=p - 1)
    torch.testing.assert_close(at_p.keys, at_one.keys, rtol=0, atol=ATOL)
    torch.testing.assert_close(at_p.values, at_one.values, rtol=0, atol=ATOL)
    anatomy = decoder_anatomy(compressor.causal_lm)
    positions = p + at_one.offsets[:, 0]
    for layer in range(anatomy.num_layers):
        moved = anatomy.rotate(at_one.keys[:, layer].transpose(0, 1), positions, layer)
        torch.testing.assert_close(moved, cache.layers[layer].keys[0, :, 1:], rtol=0, atol=ATOL)
        torch.testing.assert_close(
            at_one.values[:, layer].transpose(0, 1), cache.layers[layer].values[0, :, 1:], rtol=0, atol=ATOL
        )


def _model_cache(decoder, ids: list[int], start: int):
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.no_grad():
        decoder(
            input_ids=torch.tensor([ids]),
            position_ids=torch.arange(start, start + len(ids)).unsqueeze(0),
            cache=cache,
        )
    return cache


@pytest.mark.parametrize("architecture", ["gemma3", "llama"])
def test_chunk_moved_into_a_prompt_equals_computing_it_there_masked(architecture: str) -> None:
    """A chunk cached alone (no context, positions 0..n-1) and spliced after some text gives the
    logits of the whole prompt computed in one pass with the chunk's attention to the text
    masked out."""
    compressor = _compressor(architecture)
    bos = compressor.tokenizer.bos_token_id
    tokenize = compressor.splicer.tokenize
    memory = _exact(compressor, CHUNK_A, [])
    filler = "The quick brown fox jumps over the lazy dog. " * 2
    moved = _kv_last_logits(compressor, [filler, memory, QUESTION])
    reference = _reference_logits(
        compressor,
        [([bos] + tokenize(filler), "text"), (tokenize(CHUNK_A), "chunk"), (tokenize(QUESTION), "text")],
    )
    assert len(tokenize(filler)) > 10
    torch.testing.assert_close(moved, reference, rtol=0, atol=ATOL)


@pytest.mark.parametrize("architecture", ["gemma3", "llama"])
@pytest.mark.parametrize("order", ["ab", "ba"])
def test_two_chunks_equal_computing_them_in_place_with_cross_attention_masked(architecture: str, order: str) -> None:
    compressor = _compressor(architecture)
    bos = compressor.tokenizer.bos_token_id
    tokenize = compressor.splicer.tokenize
    texts = [CHUNK_A, CHUNK_B] if order == "ab" else [CHUNK_B, CHUNK_A]
    memories = [_exact(compressor, text, []) for text in texts]
    prompt = ["Passage: ", memories[0], "\nPassage: ", memories[1], QUESTION]
    reference = _reference_logits(
        compressor,
        [
            ([bos] + tokenize("Passage: "), "text"),
            (tokenize(texts[0]), "chunk"),
            (tokenize("\nPassage: "), "text"),
            (tokenize(texts[1]), "chunk"),
            (tokenize(QUESTION), "text"),
        ],
    )
    torch.testing.assert_close(_kv_last_logits(compressor, prompt), reference, rtol=0, atol=ATOL)


def test_exact_memory_equals_text_even_past_the_sliding_window() -> None:
    """A chunk computed after the same prefix as in the prompt is the text, exactly; the
    prompt (about 40 positions) is much longer than the 8-position window."""
    compressor = _compressor("gemma3", sliding_window=8)
    assert "sliding_attention" in decoder_anatomy(compressor.causal_lm).layer_types
    prefix = [compressor.tokenizer.bos_token_id] + compressor.splicer.tokenize("Passage: ")
    memory = _exact(compressor, CHUNK_A + " " + CHUNK_B, prefix)
    text_batch = compressor.build([["Passage: ", CHUNK_A + " " + CHUNK_B, QUESTION]])
    with compressor.decoder_mode() as decoder, torch.no_grad():
        text_logits = decoder(
            inputs_embeds=text_batch.inputs_embeds, attention_mask=text_batch.attention_mask
        ).logits[0, -1]
    torch.testing.assert_close(
        _kv_last_logits(compressor, ["Passage: ", memory, QUESTION]), text_logits, rtol=0, atol=ATOL
    )
    options = GenerationOptions(max_new_tokens=8)
    assert compressor.generate([["Passage: ", memory, QUESTION]], options)[0].text == (
        compressor.generate([["Passage: ", CHUNK_A + " " + CHUNK_B, QUESTION]], options)[0].text
    )


@pytest.mark.parametrize("architecture", ["gemma3", "llama"])
def test_prompts_mixing_text_slots_and_kv_generate_the_same_batched_and_alone(architecture: str) -> None:
    compressor = _compressor(architecture, sliding_window=16)
    exact = build_memory(compressor, MemorySpec("kv-exact"), [CHUNK_A, CHUNK_B])
    pruned = build_memory(compressor, MemorySpec("kv-pruned"), [CHUNK_B])
    (slots,) = compressor.compress([CHUNK_A])
    prompts = [
        ["Passage: ", exact[0], "\nPassage: ", slots, "\nPassage: ", exact[1], QUESTION],
        ["Passage: ", slots, "\nPassage: ", CHUNK_B, QUESTION],
        ["Passage: ", pruned[0], "\nPassage: ", CHUNK_A, "\nQuestion: When?\nAnswer:"],
        [exact[1], "\nQuestion: Why?"],
        ["Passage: ", exact[0], QUESTION],
    ]
    options = GenerationOptions(max_new_tokens=6)
    alone = [compressor.generate([prompt], options)[0] for prompt in prompts]
    together = compressor.generate(prompts, options)
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.num_tokens for g in together] == [g.num_tokens for g in alone]
    assert [g.prompt_positions for g in together] == [g.prompt_positions for g in alone]


def test_pruned_memory_keeps_positions_and_the_question_follows_the_whole_span() -> None:
    from memrag.memory.spec import parse_memory_mode

    compressor = _compressor()
    (pruned,) = build_memory(compressor, parse_memory_mode("kv-pruned:spread"), [CHUNK_A])
    (exact,) = build_memory(compressor, MemorySpec("kv-exact"), [CHUNK_A])
    assert pruned.span == exact.span and pruned.num_slots == -(-exact.span // 4)
    text = compressor.build([["Passage: ", CHUNK_A, QUESTION]])
    batch = compressor.build([["Passage: ", pruned, QUESTION]])
    assert batch.prompt_lengths == text.prompt_lengths
    # The question sits where it sits after the full text, not after the kept entries.
    assert batch.position_ids[0, -1].item() == text.prompt_lengths[0] - 1
    assert batch.cache.get_seq_length() == 1 + len(compressor.splicer.tokenize("Passage: ")) + pruned.num_slots
    # Compact (the default): the kept entries take consecutive positions, the question follows.
    (compact,) = build_memory(compressor, MemorySpec("kv-pruned"), [CHUNK_A])
    assert compact.span == compact.num_slots == pruned.num_slots
    assert compact.offsets[:, 0].tolist() == list(range(compact.num_slots))
    short = compressor.build([["Passage: ", compact, QUESTION]])
    assert short.prompt_lengths[0] == text.prompt_lengths[0] - (exact.span - compact.span)


def test_streaming_a_kv_prompt_matches_generate() -> None:
    compressor = _compressor()
    (memory,) = build_memory(compressor, MemorySpec("kv-exact"), [CHUNK_A])
    options = GenerationOptions(max_new_tokens=8)
    prompt = ["Passage: ", memory, QUESTION]
    expected = compressor.generate([prompt], options)[0]
    stream = compressor.stream(prompt, options)
    assert "".join(stream) == expected.text
    assert stream.num_tokens == expected.num_tokens


def test_leading_text_memory_is_kept_between_calls() -> None:
    compressor = _compressor()
    (memory,) = build_memory(compressor, MemorySpec("kv-exact"), [CHUNK_A])
    first = compressor.build([["Passage: ", memory, QUESTION]])
    second = compressor.build([["Passage: ", memory, QUESTION]])
    leading = 1 + len(compressor.splicer.tokenize("Passage: "))
    assert first.prefilled_lengths[0] - second.prefilled_lengths[0] == leading
    assert second.prefilled_lengths[0] == len(compressor.splicer.tokenize(QUESTION))


def test_bad_prompts_and_memory_are_refused() -> None:
    compressor = _compressor()
    (memory,) = build_memory(compressor, MemorySpec("kv-exact"), [CHUNK_A])
    with pytest.raises(ValueError, match="cannot end with K/V memory"):
        compressor.build([["Passage: ", memory]])
    with pytest.raises(ValueError, match="K/V prefill"):
        compressor.splicer.build([["Passage: ", memory, QUESTION]])
    wrong = KVSlots(
        memory.keys[:, :1], memory.values[:, :1], memory.offsets[:, :1], memory.span
    )
    with pytest.raises(ValueError, match="1 layers, the decoder 2"):
        compressor.build([[wrong, QUESTION]])
    with pytest.raises(ValueError, match="offsets must lie"):
        KVSlots(memory.keys, memory.values, memory.offsets + memory.span, memory.span)


def test_models_without_rotary_positions_are_refused() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        decoder_anatomy(model)


def test_memory_longer_than_the_context_is_refused() -> None:
    compressor = _compressor()
    limit = compressor.causal_lm.config.max_position_embeddings
    with pytest.raises(ValueError, match=r"text 1 has \d+ tokens.*context \(" + str(limit)):
        build_memory(compressor, MemorySpec("kv-exact"), ["short", "word " * (limit + 5)])


def test_a_store_made_without_naming_its_memory_keeps_the_default_kind(tmp_path) -> None:
    from memrag.memory.spec import DEFAULT_MEMORY, FALLBACK_MEMORY, resolve_memory_spec
    from memrag.store import MemoryStore
    from memrag.testing import tiny_compressor

    # Whatever the compressor's slots, the default is the decoder's own K/V as int8.
    kv_compressor = tiny_compressor(seed=0, slot_kind="kv", kv_positions="subset")
    for name, compressor, expected in (
        ("kv", kv_compressor, DEFAULT_MEMORY),
        ("embedding", _compressor(), DEFAULT_MEMORY),
    ):
        with MemoryStore.create(tmp_path / name, compressor, "hashing:16", fidelity="none") as store:
            assert store.memory.settings == resolve_memory_spec(expected).to_dict()
            store.add([CHUNK_A], ids=["a"])
            assert isinstance(store.get(["a"])[0].context(), KVSlots)
    assert (DEFAULT_MEMORY, FALLBACK_MEMORY) == ("kv-exact:int8", "kv-exact:int8")
    # Were the default trained memory, a compressor of another slot kind would get the fallback.
    import memrag.memory.spec as spec_module

    original = spec_module.DEFAULT_MEMORY
    spec_module.DEFAULT_MEMORY = "kv:int8"
    try:
        assert spec_module.default_memory("kv") == "kv:int8"
        assert spec_module.default_memory("embedding") == FALLBACK_MEMORY
    finally:
        spec_module.DEFAULT_MEMORY = original


def test_memory_reuse_reports_the_average_cost_of_every_text_computed() -> None:
    from memrag.memory.builders import MemoryReuse
    from memrag.memory.spec import parse_memory_mode

    reuse = MemoryReuse()
    reuse.record("exact", 6.0, 2)  # e.g. a first batch, warming up
    reuse.record("exact", 2.0, 2)
    assert reuse.seconds["exact"] == pytest.approx(2.0)

    compressor = _compressor()
    spec = parse_memory_mode("kv-exact")
    reuse = MemoryReuse()
    build_memory(compressor, spec, ["one passage here", "another passage"], reuse=reuse)
    build_memory(compressor, spec, ["another passage", "a third, new passage"], reuse=reuse)
    assert reuse._spent["exact"][1] == 3  # every text counted once, the reused one not again


def test_a_text_too_long_is_named_by_its_own_index_when_others_repeat_or_were_made() -> None:
    from memrag.memory.builders import MemoryReuse

    compressor = _compressor()
    limit = compressor.causal_lm.config.max_position_embeddings
    reuse = MemoryReuse()
    build_memory(compressor, MemorySpec("kv-exact"), ["short"], reuse=reuse)
    too_long = "word " * (limit + 5)
    with pytest.raises(ValueError, match=r"text 3 has \d+ tokens"):
        build_memory(compressor, MemorySpec("kv-exact"), ["short", "other", "other", too_long], reuse=reuse)
    with pytest.raises(ValueError, match=r"chunk 'c' has \d+ tokens"):
        build_memory(compressor, MemorySpec("kv-exact"), ["short", too_long], names=["chunk 'a'", "chunk 'c'"])
