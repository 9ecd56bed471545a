"""Evaluation metrics for memrag: SQuAD EM/F1, ``contains``, BLEU-4, reconstruction match."""

from memrag.eval.metrics import (
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

__all__ = [
    "aggregate_squad",
    "answer_scores",
    "contains_answer",
    "corpus_bleu",
    "exact_match",
    "f1_score",
    "normalize_answer",
    "reconstruction_exact_match",
    "sentence_bleu",
    "squad_scores",
]
