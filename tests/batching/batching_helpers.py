"""Data of the batching tests: passages and questions."""

from __future__ import annotations

PASSAGES = [
    "Paris is the capital and most populous city of France.",
    "In 1889 the Eiffel Tower was completed for the World's Fair.",
    "The quick brown fox jumps over the lazy dog.",
    "Memory slots compress a document into a few vectors for a frozen decoder.",
]
QUESTIONS = ["What is the capital of France?", "When was the tower completed?", "What jumps?"]
