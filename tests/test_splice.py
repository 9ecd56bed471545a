"""The single splice path: padding invariance, labels, generation, stop strings, streaming."""

from __future__ import annotations

import pytest
import torch

from memrag.compressor import Compressor, CompressorMismatchError
from memrag.generation import GenerationOptions, StopStringFilter, answer_text, cut_at_stop
from memrag.splice import IGNORE_INDEX, Task


def _last_logits(compressor: Compressor, prompts) -> torch.Tensor:
    batch = compressor.build(prompts)
    with torch.no_grad():
        logits = compressor.decoder_forward(batch).logits
    return logits[:, -1]


def test_left_padding_does_not_change_next_token_logits(tiny_compressor: Compressor) -> None:
    short, long = tiny_compressor.compress(["Paris.", "The Eiffel Tower was completed in 1889 " * 3])
    prompt = ["Context: ", short, "\nQuestion: What is the capital?\nAnswer:"]
    longer = ["Context: ", long, " and ", short, "\nQuestion: When was it completed?\nAnswer:"]
    alone = _last_logits(tiny_compressor, [prompt])
    batched = _last_logits(tiny_compressor, [longer, prompt])
    assert tiny_compressor.build([longer, prompt]).attention_mask[1, 0] == 0, "row 1 must be padded"
    torch.testing.assert_close(batched[1:], alone, rtol=1e-4, atol=1e-5)


def test_slots_take_their_own_number_of_positions(tiny_compressor: Compressor) -> None:
    (memory,) = tiny_compressor.compress(["The quick brown fox jumps over the lazy dog."])
    text_only = tiny_compressor.build([["Q:"]]).prompt_lengths[0]
    with_slots = tiny_compressor.build([[memory, "Q:"]]).prompt_lengths[0]
    assert with_slots - text_only == memory.num_slots
    with_task = tiny_compressor.build([[memory, Task.RECONSTRUCT]]).prompt_lengths[0]
    assert with_task == 1 + memory.num_slots + 1  # BOS, slots, marker


def test_labels_only_on_target_tokens(tiny_compressor: Compressor) -> None:
    (memory,) = tiny_compressor.compress(["Paris is the capital of France."])
    batch = tiny_compressor.build([[memory, Task.ANSWER], ["longer prompt text here", memory]], ["Paris", "France"])
    target_ids = tiny_compressor.splicer.tokenize("Paris") + [tiny_compressor.tokenizer.eos_token_id]
    row = batch.labels[0]
    labelled = row[row != IGNORE_INDEX].tolist()
    assert labelled == target_ids
    assert (row[: batch.prompt_lengths[0]] == IGNORE_INDEX).all() or batch.attention_mask[0, 0] == 0
    output = tiny_compressor.decoder_forward(batch)
    assert torch.isfinite(output.loss)


def test_loss_backpropagates_into_lora_and_memory(tiny_compressor: Compressor) -> None:
    ids = tiny_compressor.segment("Paris is the capital of France.")
    (slots,) = tiny_compressor.encode_segments(ids)
    from memrag.memory.slots import Slots

    batch = tiny_compressor.splicer.build([[Slots(slots), Task.RECONSTRUCT]], [ids[0]])
    loss = tiny_compressor.decoder_forward(batch).loss
    loss.backward()
    assert tiny_compressor.memory_embeddings.grad is not None
    assert tiny_compressor.task_embeddings.grad is not None
    lora = [p for n, p in tiny_compressor.peft_model.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for p in lora)
    frozen = [p for n, p in tiny_compressor.peft_model.named_parameters() if "lora_" not in n]
    assert all(p.grad is None and not p.requires_grad for p in frozen)


def test_greedy_batch_equals_single_and_is_deterministic(tiny_compressor: Compressor) -> None:
    a, b = tiny_compressor.compress(["Paris is the capital of France.", "In 1889 the tower was completed " * 4])
    prompts = [[a, "\nAnswer:"], ["Context: ", b, "\nAnswer:"]]
    options = GenerationOptions(max_new_tokens=6)
    together = tiny_compressor.generate(prompts, options)
    alone = [tiny_compressor.generate([p], options)[0] for p in prompts]
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.text for g in tiny_compressor.generate(prompts, options)] == [g.text for g in together]
    assert all(0 < g.num_tokens <= 6 for g in together)
    assert together[0].prompt_positions == 1 + a.num_slots + len(tiny_compressor.splicer.tokenize("\nAnswer:"))


def test_sampling_is_seeded(tiny_compressor: Compressor) -> None:
    options = GenerationOptions(max_new_tokens=8, temperature=1.5, seed=123)
    first = tiny_compressor.generate([["Hello"]], options)[0].text
    second = tiny_compressor.generate([["Hello"]], options)[0].text
    assert first == second


def test_stop_strings_cut_the_output(tiny_compressor: Compressor) -> None:
    full = tiny_compressor.generate([["The"]], GenerationOptions(max_new_tokens=12))[0]
    assert len(full.text) > 2
    stop = full.text[len(full.text) // 2 :][:2]
    cut = tiny_compressor.generate([["The"]], GenerationOptions(max_new_tokens=12, stop=[stop]))[0]
    assert stop not in cut.text
    assert full.text.startswith(cut.text)
    assert cut.finish_reason == "stop"


def test_streaming_matches_generate(tiny_compressor: Compressor) -> None:
    (memory,) = tiny_compressor.compress(["Paris is the capital of France."])
    prompt = [memory, "\nAnswer:"]
    options = GenerationOptions(max_new_tokens=10)
    chunks = list(tiny_compressor.stream(prompt, options))
    assert "".join(chunks) == tiny_compressor.generate([prompt], options)[0].text
    full = "".join(chunks)
    if len(full) > 3:
        stop = full[2:4]
        stopped = "".join(tiny_compressor.stream(prompt, GenerationOptions(max_new_tokens=10, stop=[stop])))
        assert stopped == full[: full.find(stop)]


def test_closing_a_stream_early_releases_the_model(tiny_compressor: Compressor) -> None:
    iterator = tiny_compressor.stream(["The"], GenerationOptions(max_new_tokens=200))
    next(iterator, None)
    iterator.close()
    assert tiny_compressor.generate([["The"]], GenerationOptions(max_new_tokens=2))


def test_slots_from_another_compressor_are_refused(tiny_compressor: Compressor) -> None:
    from memrag.testing import tiny_compressor as build

    other = build(seed=5)
    (foreign,) = other.compress(["Paris."])
    with pytest.raises(CompressorMismatchError, match="made by compressor"):
        tiny_compressor.generate([[foreign, "Q"]])


def test_bad_prompt_parts_are_refused(tiny_compressor: Compressor) -> None:
    with pytest.raises(TypeError, match="prompt parts"):
        tiny_compressor.build([[42]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationOptions(max_new_tokens=0)


def test_stop_filter_holds_back_partial_matches() -> None:
    flt = StopStringFilter(["END"])
    out = flt.push("abc E") + flt.push("N") + flt.push("D tail")
    assert out == "abc " and flt.stopped
    flt = StopStringFilter(["END"])
    assert flt.push("abcE") + flt.push("x") + flt.flush() == "abcEx"
    assert cut_at_stop("a.b;c", [";", "."]) == ("a", True)



def test_stop_filter_drops_the_answers_leading_whitespace() -> None:
    flt = StopStringFilter(["\n"])
    assert [flt.push(c) for c in (" ", " The", " Denver\nrest")] == ["", "The", " Denver"]
    assert flt.stopped
    assert answer_text("  The Denver Broncos", []) == ("The Denver Broncos", False)
    # Stop strings are matched on the text as decoded: a leading stop string still ends the answer.
    assert answer_text("\nThe end", ["\n"]) == ("", True)
    assert answer_text(" hi END x", ["END"]) == ("hi ", True)
    raw = StopStringFilter(["END"], strip_leading=False)
    assert raw.push(" a") + raw.flush() == " a"


@pytest.mark.parametrize("stop", [(), ("zq",)])
def test_answers_never_start_with_a_space_streamed_batched_or_not(
    tiny_compressor: Compressor, monkeypatch: pytest.MonkeyPatch, stop: tuple[str, ...]
) -> None:
    """A template-less model answers "Answer:" with " The Denver Broncos"; every path answers
    "The Denver Broncos" (the same text), and the first streamed chunk has no leading space."""
    from memrag.batching import DecodeState, RowText

    tokenizer = tiny_compressor.tokenizer
    decode = tokenizer.decode

    def spaced(token_ids, *args, **kwargs):  # the model's answers all start with a space
        text = decode(token_ids, *args, **kwargs)
        if isinstance(text, list):  # batch_decode's rows
            return [" " + t if t else t for t in text]
        return " " + text if text else text

    monkeypatch.setattr(tokenizer, "decode", spaced)
    prompt = ["The quick brown"]
    options = GenerationOptions(max_new_tokens=8, stop=stop)
    (generated,) = tiny_compressor.generate([prompt], options)
    chunks = [c for c in tiny_compressor.stream(prompt, options) if c]
    batch = tiny_compressor.build([prompt])
    with tiny_compressor.decoder_mode() as decoder, torch.inference_mode():
        state, logits = DecodeState.prefill(decoder, batch)
        row = RowText(tokenizer, options)
        pieces = [row.push(int(logits[0].argmax()))]
        while not row.done:
            state.next_tokens = torch.tensor([row.tokens[-1]])
            pieces.append(row.push(int(state.step(decoder)[0].argmax())))
    assert generated.text and not generated.text[0].isspace()
    assert not chunks[0][0].isspace()
    assert "".join(chunks) == generated.text == "".join(pieces) == row.generation().text
    assert not next(p for p in pieces if p)[0].isspace()


def test_loss_on_target_positions_equals_full_logits_loss(tiny_compressor: Compressor) -> None:
    a, b = tiny_compressor.compress(["Paris is the capital of France.", "In 1889 the tower was completed " * 3])
    batch = tiny_compressor.build([[a, Task.RECONSTRUCT], ["Context:", b, "\nQ: when?\nA:"]], ["Paris ok", "1889"])
    fast = tiny_compressor.decoder_forward(batch).loss
    with tiny_compressor.decoder_mode() as decoder:
        logits = decoder(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
        ).logits
    shifted = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    torch.testing.assert_close(fast, shifted, rtol=1e-5, atol=1e-6)


def test_plain_chat_renders_the_latest_user_message_as_it_is() -> None:
    from types import SimpleNamespace

    from memrag.prompts import PlainChat, render_chat

    tokenizer = SimpleNamespace(chat_template=None)
    qa = "Passage: x\nQuestion: When?\nAnswer:"
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who?"},
        {"role": "assistant", "content": "Bob"},
        {"role": "user", "content": qa},
    ]
    # The default (measured, docs/RESULTS.md "Chat turns"): only the latest message, as trained.
    assert render_chat(tokenizer, chat) == [qa]
    assert render_chat(tokenizer, [chat[0], chat[-1]]) == [qa]
    assert PlainChat(history="qa").render(chat) == f"Question: Who?\nAnswer: Bob\n{qa}"
    assert PlainChat(system="prefix", history="drop").render(chat) == f"Be brief.\n{qa}"
    assert PlainChat(history="transcript").render(chat) == f"User: Who?\nAssistant: Bob\n{qa}"
    # A chat that does not end with a user message stays a transcript.
    assert render_chat(tokenizer, chat[:3]) == ["System: Be brief.\nUser: Who?\nAssistant: Bob\nAssistant:"]
    with pytest.raises(ValueError, match="history must be"):
        PlainChat(history="all")
