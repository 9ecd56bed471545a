"""Tests for memrag.eval.metrics."""

from __future__ import annotations

import math

import pytest

from memrag.eval import (
    aggregate_squad,
    answer_scores,
    contains_answer,
    corpus_bleu,
    exact_match,
    f1_score,
    normalize_answer,
    reconstruction_exact_match,
    sentence_bleu,
    squad_scores,
)


def toks(text: str) -> list[str]:
    """Splits a test sentence into whitespace tokens."""
    return text.split()


# --- SQuAD ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple, a pear;  THE end.", "apple pear end"),
        ("theatre", "theatre"),  # articles are removed as whole words only
        ("Denver Broncos' win", "denver broncos win"),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def test_exact_match() -> None:
    assert exact_match("the Eiffel Tower", "Eiffel Tower") == 1.0
    assert exact_match("Eiffel Tower.", "eiffel  tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0


def test_f1_partial_overlap() -> None:
    # prediction "the Denver Broncos team" -> tokens [denver, broncos, team]
    # reference  "Broncos of Denver"       -> tokens [broncos, of, denver]
    # common = {denver, broncos} = 2; precision = 2/3, recall = 2/3
    # F1 = 2 * (2/3) * (2/3) / (2/3 + 2/3) = 2/3
    assert f1_score("the Denver Broncos team", "Broncos of Denver") == pytest.approx(2 / 3)
    # prediction [carolina] vs reference [carolina, panthers]:
    # P = 1/1, R = 1/2, F1 = 2 * 1 * 0.5 / 1.5 = 2/3
    assert f1_score("Carolina", "the Carolina Panthers") == pytest.approx(2 / 3)
    # repeated tokens are clipped: [a, a] is [] after article removal, so use "go go"
    # pred [go, go, home] vs ref [go, home]: common = {go: 1, home: 1} = 2
    # P = 2/3, R = 2/2, F1 = 2 * (2/3) / (5/3) = 4/5
    assert f1_score("go go home", "go home") == pytest.approx(0.8)


def test_f1_no_common_token_and_empty() -> None:
    assert f1_score("Paris", "London") == 0.0
    assert f1_score("", "London") == 0.0
    # Official v1.1 script: no common token -> 0, even when both are empty.
    assert f1_score("the", "a") == 0.0
    assert f1_score("Paris", "Paris") == 1.0


def test_squad_scores_max_over_references() -> None:
    em, f1 = squad_scores("Denver", ["Denver Broncos", "the Broncos", "Denver"])
    assert (em, f1) == (1.0, 1.0)
    em, f1 = squad_scores("Denver", ["Denver Broncos", "Broncos"])
    # best F1 is against "Denver Broncos": P = 1, R = 1/2, F1 = 2/3
    assert em == 0.0 and f1 == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        squad_scores("x", [])


def test_aggregate_squad_percentages() -> None:
    result = aggregate_squad(
        [
            ("the Eiffel Tower", ["Eiffel Tower"]),  # EM 1, F1 1
            ("Carolina", ["Carolina Panthers"]),  # EM 0, F1 2/3
            ("Paris", ["London", "Rome"]),  # EM 0, F1 0
            ("Denver", ["Broncos", "denver"]),  # EM 1, F1 1
        ]
    )
    assert result["n"] == 4
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0 + 1) / 4)
    # "Carolina" does not contain "Carolina Panthers"; the other two right answers do.
    assert result["contains"] == pytest.approx(50.0)
    assert aggregate_squad([]) == {"exact_match": 0.0, "f1": 0.0, "contains": 0.0, "n": 0}


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("It was completed in 1889.", "1889", 1.0),  # a long answer holding the span
        ("The Eiffel Tower", "eiffel tower", 1.0),  # normalised: case and article
        ("in 18 months", "1889", 0.0),
        ("1889", "18", 0.0),  # whole words only
        ("Denver Broncos won", "the Denver Broncos", 1.0),
        ("Denver", "Denver Broncos", 0.0),  # part of the answer is not the answer
        ("anything", "the", 0.0),  # a reference that normalises to nothing
        ("", "Paris", 0.0),
    ],
)
def test_contains_answer(prediction: str, reference: str, expected: float) -> None:
    assert contains_answer(prediction, reference) == expected


def test_answer_scores_take_the_best_reference_for_each_metric() -> None:
    scores = answer_scores("The Broncos beat Carolina", ["Denver Broncos", "Broncos"])
    assert scores["contains"] == 1.0 and scores["exact_match"] == 0.0
    assert 0.0 < scores["f1"] < 1.0


# --- BLEU ----------------------------------------------------------------


def test_bleu_perfect_match() -> None:
    tokens = toks("the quick brown fox jumps over the lazy dog")
    assert corpus_bleu([tokens], [tokens]) == pytest.approx(1.0)
    assert sentence_bleu(tokens, tokens) == pytest.approx(1.0)
    assert sentence_bleu(tokens, tokens, smoothing=False) == pytest.approx(1.0)


def test_bleu_brevity_penalty_hand_computed() -> None:
    reference = toks("the cat sat on the mat today")  # r = 7
    hypothesis = toks("the cat sat on the mat")  # c = 6
    # The hypothesis is a contiguous slice of the reference, so every clipped
    # n-gram precision is 1 (6/6, 5/5, 4/4, 3/3). BP = exp(1 - r/c) = exp(-1/6).
    expected = math.exp(1 - 7 / 6)  # ~0.846482
    assert corpus_bleu([reference], [hypothesis]) == pytest.approx(expected)
    assert sentence_bleu(reference, hypothesis) == pytest.approx(expected)
    # A longer hypothesis gets no brevity penalty: "the cat sat on the mat today ." (c = 8)
    # precisions 7/8, 6/7, 5/6, 4/5 -> geometric mean.
    longer = reference + ["."]
    mean = (7 / 8 * 6 / 7 * 5 / 6 * 4 / 5) ** 0.25
    assert corpus_bleu([reference], [longer]) == pytest.approx(mean)


def test_bleu_clipping_and_corpus_aggregation() -> None:
    # Papineni's example: "the the the the the the the" vs "the cat is on the mat":
    # unigram precision is clipped to 2/7 and there are no bigram matches -> BLEU 0.
    assert corpus_bleu([["the", "cat", "is", "on", "the", "mat"]], [["the"] * 7]) == 0.0
    # Corpus statistics are pooled before the precisions are taken:
    refs = [toks("a b c d e"), toks("v w x y z")]
    hyps = [toks("a b c d e"), toks("v w x y q")]
    # unigrams 9/10, bigrams 7/8, trigrams 5/6, 4-grams 3/4; c = r = 10 -> BP = 1
    expected = (9 / 10 * 7 / 8 * 5 / 6 * 3 / 4) ** 0.25
    assert corpus_bleu(refs, hyps) == pytest.approx(expected)


def test_sentence_bleu_smoothing_hand_computed() -> None:
    reference = toks("a b c d e f")
    hypothesis = toks("a b c x e f")
    # matches/totals: 1-grams 5/6, 2-grams 3/5 (ab, bc, ef), 3-grams 1/4 (abc), 4-grams 0/3.
    assert sentence_bleu(reference, hypothesis, smoothing=False) == 0.0
    # add-one on n > 1: 5/6, 4/6, 2/5, 1/4 -> product 1/18; c = r -> BP = 1
    assert sentence_bleu(reference, hypothesis) == pytest.approx((1 / 18) ** 0.25)


def test_bleu_empty_and_degenerate() -> None:
    ref = toks("a b c d")
    assert corpus_bleu([ref], [[]]) == 0.0
    assert sentence_bleu(ref, []) == 0.0
    assert sentence_bleu(ref, [], smoothing=False) == 0.0
    assert sentence_bleu(ref, ["z", "y", "x", "w"]) == 0.0  # no unigram match
    assert corpus_bleu([], []) == 0.0
    with pytest.raises(ValueError):
        corpus_bleu([ref], [ref, ref])
    with pytest.raises(TypeError):
        corpus_bleu(["a b c d"], ["a b c d"])  # strings, not token lists


def test_bleu_matches_nltk() -> None:
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    refs = [
        toks("the cat is on the mat and it is happy"),
        toks("there is a dog in the garden near the old tree"),
        toks("memory slots compress the document into a few vectors"),
    ]
    hyps = [
        toks("the cat sat on the mat and is happy"),
        toks("a dog is in the garden by the tree"),
        toks("memory slots compress documents into few vectors"),
    ]
    expected = nltk_bleu.corpus_bleu([[r] for r in refs], hyps)
    assert corpus_bleu(refs, hyps) == pytest.approx(expected)
    method2 = nltk_bleu.SmoothingFunction().method2
    for ref, hyp in zip(refs, hyps, strict=True):
        expected = nltk_bleu.sentence_bleu([ref], hyp, smoothing_function=method2)
        assert sentence_bleu(ref, hyp) == pytest.approx(expected)


# --- reconstruction ------------------------------------------------------


def test_reconstruction_exact_match() -> None:
    assert reconstruction_exact_match("Hello world.", "  Hello world.\n") == 1.0
    assert reconstruction_exact_match("Hello world.", "hello world.") == 0.0
    assert reconstruction_exact_match("a  b", "a b") == 0.0
