"""Question-free salient tokens and the forcing of positions into every layer."""

from __future__ import annotations

import torch

from memrag.memory.salience import (
    capped_rows,
    force_rows,
    forced_salient_rows,
    is_salient,
    salient_rows,
)
from memrag.testing import tiny_tokenizer


def test_digits_and_capitalised_word_starts_are_salient_and_other_pieces_are_not() -> None:
    assert is_salient(" 1889", first=False)
    assert is_salient("5", first=False)  # a digit inside a number split per digit
    assert is_salient(" Paris", first=False)
    assert is_salient("Paris", first=True)  # the chunk's first token starts a word
    assert not is_salient("Paris", first=False)  # the middle of a word such as "eParis"
    assert not is_salient(" tower", first=False)
    assert not is_salient(",", first=False)


def test_salient_rows_of_a_text_are_its_names_and_numbers() -> None:
    tokenizer = tiny_tokenizer()
    ids = tokenizer("the tower in Paris was built in 1889", add_special_tokens=False)["input_ids"]
    rows = salient_rows(tokenizer, ids)
    text = "".join(tokenizer.decode([ids[row]]) for row in rows)
    assert "Paris" in text and "1" in text and "tower" not in text
    assert all(is_salient(tokenizer.decode([ids[row]]), first=row == 0) for row in rows)
    others = [i for i in range(len(ids)) if i not in rows]
    assert not any(is_salient(tokenizer.decode([ids[i]]), first=i == 0) for i in others)


def test_capped_rows_keep_the_best_scored_candidates_by_their_mean_over_layers() -> None:
    scores = torch.tensor([[0.0, 9.0], [5.0, 5.0], [1.0, 1.0], [8.0, 0.0], [3.0, 3.0]])
    assert capped_rows(scores, [1, 2, 4], 5) == [1, 2, 4]
    assert capped_rows(scores, [0, 1, 2, 3], 2) == [0, 1]  # means 4.5, 5, 1, 4
    assert capped_rows(scores, [0, 1], 0) == []


def test_forced_rows_are_kept_at_every_layer_and_the_input_is_untouched() -> None:
    scores = torch.tensor([[9.0, 9.0], [0.0, 0.0], [8.0, 0.1], [0.2, 8.0], [0.1, 0.2]])
    before = scores.clone()
    forced = force_rows(scores, [1, 4])
    top = torch.topk(forced, 3, dim=0).indices
    for layer in range(2):
        assert {1, 4} <= set(top[:, layer].tolist())
    assert torch.equal(scores, before)
    assert force_rows(scores, []) is scores


def test_a_salient_selection_forces_at_most_half_the_slots_and_at_least_one() -> None:
    tokenizer = tiny_tokenizer()
    ids = tokenizer("Paris 1889 London 1851 Rome", add_special_tokens=False)["input_ids"]
    salient = salient_rows(tokenizer, ids)
    scores = torch.arange(len(ids), dtype=torch.float32).unsqueeze(1).repeat(1, 2)
    assert len(salient) > 2
    assert forced_salient_rows(tokenizer, ids, scores, 4) == salient[-2:]  # the best-scored two
    assert forced_salient_rows(tokenizer, ids, scores, 1) == salient[-1:]
