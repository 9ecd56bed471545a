"""Training the compressor: arguments, data streams, objectives, trainer, recipes.

Kept apart as in sentence-transformers: :mod:`.arguments` (what to do), :mod:`.data` (resumable
example streams), :mod:`.objectives` (losses), :mod:`.trainer` (the loop and checkpoints),
:mod:`.evaluators` (periodic metrics) and :mod:`.recipes` (pretraining and fine-tuning wired
together, as the CLI runs them).

The names below are imported lazily, so importing the package (or its light
:mod:`.arguments`) does not import torch.
"""

from __future__ import annotations

from memrag.utils.lazy import lazy_exports

_EXPORTS = {
    "FinetuneDataArguments": "memrag.training.arguments",
    "LossEvaluator": "memrag.training.evaluators",
    "ModelArguments": "memrag.training.arguments",
    "ObjectiveOutput": "memrag.training.objectives",
    "PretrainDataArguments": "memrag.training.arguments",
    "PretrainExample": "memrag.data.examples",
    "PretrainObjective": "memrag.training.objectives",
    "PretrainStream": "memrag.data.examples",
    "QAExample": "memrag.data.examples",
    "QAObjective": "memrag.training.objectives",
    "QAStream": "memrag.data.examples",
    "ReconstructionEvaluator": "memrag.training.evaluators",
    "SquadEvaluator": "memrag.training.evaluators",
    "Trainer": "memrag.training.trainer",
    "TrainerState": "memrag.training.checkpoint",
    "TrainingArguments": "memrag.training.arguments",
    "finetuning_trainer": "memrag.training.recipes",
    "holdout_start_line": "memrag.data.examples",
    "latest_checkpoint": "memrag.training.checkpoint",
    "list_checkpoints": "memrag.training.checkpoint",
    "pretraining_trainer": "memrag.training.recipes",
    "qa_prompt": "memrag.prompts",
    "qa_target_ids": "memrag.prompts",
    "reconstruct_prompt": "memrag.prompts",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, ())
