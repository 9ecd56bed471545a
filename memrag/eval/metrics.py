"""Evaluation metrics: SQuAD v1.1 EM/F1, ``contains``, BLEU-4 and reconstruction match.

The SQuAD functions reproduce the official v1.1 evaluation script
(``evaluate-v1.1.py``): answers are normalised (lower-cased, punctuation
removed, articles ``a``/``an``/``the`` removed, whitespace collapsed), then
compared exactly (EM) or as bags of tokens (F1), taking the maximum over the
reference answers. ``contains`` (the "match" / "accuracy" of RAG papers such as PISCO and
xRAG) asks whether a normalised reference appears in the normalised prediction as a run of
whole words, so a long answer that holds the right span counts and a short wrong one does not:
with F1 beside it, a reader sees content and style apart.

BLEU follows Papineni et al. (2002): modified (clipped) n-gram precisions for
n = 1..4 with uniform weights and the brevity penalty, computed on token lists
supplied by the caller (no tokenisation is done here).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_MAX_N = 4


def normalize_answer(text: str) -> str:
    """Normalises an answer as the official SQuAD v1.1 script does.

    Lower-cases, removes ASCII punctuation, removes the articles ``a``, ``an``
    and ``the``, and collapses whitespace.

    Args:
        text: The raw answer.

    Returns:
        The normalised answer.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, ground_truth: str) -> float:
    """Returns 1.0 if the normalised answers are equal, else 0.0.

    Args:
        prediction: The predicted answer.
        ground_truth: One reference answer.
    """
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Returns the SQuAD v1.1 token F1 between two answers.

    As in the official v1.1 script, the score is 0.0 when the normalised
    answers share no token (including when either or both are empty).

    Args:
        prediction: The predicted answer.
        ground_truth: One reference answer.

    Returns:
        The F1 score in [0, 1].
    """
    pred_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(pred_tokens) & Counter(truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def contains_answer(prediction: str, ground_truth: str) -> float:
    """Returns 1.0 if the normalised reference appears in the normalised prediction, else 0.0.

    The match is on whole words (``"1889"`` is in ``"completed in 1889"``, ``"18"`` is not);
    a reference that normalises to nothing never matches.

    Args:
        prediction: The predicted answer.
        ground_truth: One reference answer.
    """
    truth = normalize_answer(ground_truth)
    if not truth:
        return 0.0
    return float(f" {truth} " in f" {normalize_answer(prediction)} ")


def answer_scores(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """EM, F1 and ``contains`` of a prediction, each the maximum over the references.

    Returns:
        ``{"exact_match", "f1", "contains"}``, each in [0, 1].

    Raises:
        ValueError: If ``references`` is empty.
    """
    em, f1 = squad_scores(prediction, references)
    contains = max(contains_answer(prediction, ref) for ref in references)
    return {"exact_match": em, "f1": f1, "contains": contains}


def squad_scores(prediction: str, references: Sequence[str]) -> tuple[float, float]:
    """Returns (EM, F1) of a prediction, each the maximum over the references.

    Args:
        prediction: The predicted answer.
        references: The reference answers (at least one).

    Returns:
        ``(exact_match, f1)``, each in [0, 1].

    Raises:
        ValueError: If ``references`` is empty.
    """
    if isinstance(references, str):
        raise TypeError("references must be a sequence of strings, not a string")
    if not references:
        raise ValueError("at least one reference answer is required")
    em = max(exact_match(prediction, ref) for ref in references)
    f1 = max(f1_score(prediction, ref) for ref in references)
    return em, f1


def aggregate_squad(
    examples: Iterable[tuple[str, Sequence[str]]],
) -> dict[str, float]:
    """Averages SQuAD EM, F1 and ``contains`` over examples, as percentages.

    Args:
        examples: ``(prediction, references)`` pairs.

    Returns:
        ``{"exact_match": ..., "f1": ..., "contains": ..., "n": ...}`` with the scores in
        0..100 (0.0 for no examples) and ``n`` the number of examples.
    """
    totals = {"exact_match": 0.0, "f1": 0.0, "contains": 0.0}
    n = 0
    for prediction, references in examples:
        for name, value in answer_scores(prediction, references).items():
            totals[name] += value
        n += 1
    result: dict[str, float] = {name: 100.0 * total / n if n else 0.0 for name, total in totals.items()}
    result["n"] = n
    return result


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    """Counts the n-grams of a token sequence."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _match_counts(
    reference: Sequence[str], hypothesis: Sequence[str]
) -> tuple[list[int], list[int]]:
    """Returns clipped n-gram matches and hypothesis n-gram totals, n = 1..4."""
    if isinstance(reference, str) or isinstance(hypothesis, str):
        raise TypeError("BLEU takes token lists, not strings; split the text first")
    matches, totals = [], []
    for n in range(1, _MAX_N + 1):
        hyp_counts = _ngrams(hypothesis, n)
        matches.append(sum((hyp_counts & _ngrams(reference, n)).values()))
        totals.append(max(len(hypothesis) - n + 1, 0))
    return matches, totals


def _brevity_penalty(ref_len: int, hyp_len: int) -> float:
    """Papineni brevity penalty: 1 if c > r, else exp(1 - r / c)."""
    if hyp_len == 0:
        return 0.0
    if hyp_len > ref_len:
        return 1.0
    return math.exp(1.0 - ref_len / hyp_len)


def _bleu(precisions: Sequence[float], ref_len: int, hyp_len: int) -> float:
    """Combines n-gram precisions (uniform weights) with the brevity penalty."""
    if hyp_len == 0 or min(precisions) <= 0.0:
        return 0.0
    log_mean = sum(math.log(p) for p in precisions) / len(precisions)
    return _brevity_penalty(ref_len, hyp_len) * math.exp(log_mean)


def corpus_bleu(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]]) -> float:
    """Returns corpus-level BLEU-4 (Papineni et al., 2002), without smoothing.

    Clipped n-gram matches and n-gram totals are summed over the corpus before
    the precisions are taken; the brevity penalty uses the total reference and
    hypothesis lengths. The score is 0.0 if any n-gram order has no match.

    Args:
        references: One reference token list per hypothesis.
        hypotheses: The hypothesis token lists.

    Returns:
        BLEU in [0, 1] (0.0 for an empty corpus).

    Raises:
        ValueError: If the two sequences differ in length.
        TypeError: If a reference or hypothesis is a string, not a token list.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"got {len(references)} references for {len(hypotheses)} hypotheses")
    matches = [0] * _MAX_N
    totals = [0] * _MAX_N
    ref_len = hyp_len = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        m, t = _match_counts(reference, hypothesis)
        matches = [a + b for a, b in zip(matches, m, strict=True)]
        totals = [a + b for a, b in zip(totals, t, strict=True)]
        ref_len += len(reference)
        hyp_len += len(hypothesis)
    if min(totals) == 0:
        return 0.0
    precisions = [m / t for m, t in zip(matches, totals, strict=True)]
    return _bleu(precisions, ref_len, hyp_len)


def sentence_bleu(
    reference: Sequence[str], hypothesis: Sequence[str], smoothing: bool = True
) -> float:
    """Returns sentence-level BLEU-4 of one hypothesis against one reference.

    With ``smoothing=True``, the precisions for n > 1 use add-one smoothing,
    ``(matches + 1) / (total + 1)`` (the "BLEU+1" of Lin & Och, 2004; NLTK's
    ``SmoothingFunction().method2`` in recent versions). The unigram precision
    is never smoothed, so a hypothesis with no matching token scores 0.0, as
    does an empty hypothesis. An order n with no hypothesis n-gram (a
    hypothesis shorter than n tokens) gets precision (0 + 1) / (0 + 1) = 1, so
    a short exact match scores 1.0 (NLTK would use 1 / 2 there). Without
    smoothing this equals :func:`corpus_bleu` on a one-sentence corpus.

    Args:
        reference: The reference tokens.
        hypothesis: The hypothesis tokens.
        smoothing: Whether to apply add-one smoothing to n > 1 precisions.

    Returns:
        BLEU in [0, 1].

    Raises:
        TypeError: If the reference or hypothesis is a string, not a token list.
    """
    if not smoothing:
        return corpus_bleu([reference], [hypothesis])
    matches, totals = _match_counts(reference, hypothesis)
    if not hypothesis:
        return 0.0
    precisions = [matches[0] / totals[0]]
    precisions += [(m + 1) / (t + 1) for m, t in zip(matches[1:], totals[1:], strict=True)]
    return _bleu(precisions, len(reference), len(hypothesis))


def reconstruction_exact_match(reference: str, hypothesis: str) -> float:
    """Returns 1.0 if the texts are equal after stripping surrounding whitespace.

    Args:
        reference: The original text.
        hypothesis: The reconstructed text.
    """
    return float(reference.strip() == hypothesis.strip())
