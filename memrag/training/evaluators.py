"""What the trainer measures periodically: held-out loss, reconstruction BLEU, SQuAD F1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memrag.data.readers import QARecord
from memrag.training.objectives import Objective


class LossEvaluator:
    """Mean target-token loss of an objective over fixed held-out examples.

    Returns ``{"loss": ..., "loss_<kind>": ...}``.
    """

    def __init__(self, objective: Objective, examples: Sequence[Any], *, batch_size: int = 8) -> None:
        self.objective = objective
        self.examples = list(examples)
        self.batch_size = batch_size

    def __call__(self, compressor: Any) -> dict[str, float]:
        if not self.examples:
            return {}
        total, tokens = 0.0, 0
        parts: dict[str, list[float]] = {}
        for start in range(0, len(self.examples), self.batch_size):
            output = self.objective(compressor, self.examples[start : start + self.batch_size])
            total += float(output.loss_sum)
            tokens += output.num_tokens
            for kind, (value, count) in output.parts.items():
                entry = parts.setdefault(kind, [0.0, 0])
                entry[0] += value
                entry[1] += count
        metrics = {"loss": total / max(tokens, 1)}
        metrics.update({f"loss_{kind}": value / max(count, 1) for kind, (value, count) in parts.items()})
        return metrics


class ReconstructionEvaluator:
    """BLEU-4 and exact match of reconstructing fixed held-out segments.

    Returns ``{"ae_bleu4": 0..1, "ae_exact_match": %}``.
    """

    def __init__(self, segments: Sequence[Sequence[int]], *, batch_size: int = 8) -> None:
        self.segments = [list(s) for s in segments]
        self.batch_size = batch_size

    def __call__(self, compressor: Any) -> dict[str, float]:
        if not self.segments:
            return {}
        from memrag.eval.ae import evaluate_ae

        result = evaluate_ae(compressor, self.segments, batch_size=self.batch_size)
        return {"ae_bleu4": result.overall["bleu4"], "ae_exact_match": result.overall["exact_match"]}


class SquadEvaluator:
    """SQuAD EM/F1 answering fixed questions from their passage's slots.

    Returns ``{"squad_em": %, "squad_f1": %}``.
    """

    def __init__(self, records: Sequence[QARecord], *, batch_size: int = 8, max_new_tokens: int = 32) -> None:
        self.records = list(records)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    def __call__(self, compressor: Any) -> dict[str, float]:
        if not self.records:
            return {}
        from memrag.eval.qa import evaluate_qa

        result = evaluate_qa(
            compressor, self.records, modes=("slots",), batch_size=self.batch_size, max_new_tokens=self.max_new_tokens
        ).results["slots"]
        return {"squad_em": result["exact_match"], "squad_f1": result["f1"]}
