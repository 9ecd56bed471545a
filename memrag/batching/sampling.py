"""Choosing each row's next token: greedy, or sampled with its own temperature, top-k, top-p and seed.

The warpers are those ``generate`` applies for :class:`~memrag.generation.GenerationOptions`
(temperature, then top-k, then top-p over the float32 logits). Each sampled row draws from a
``torch.Generator`` of its own, seeded with the request's ``seed`` (or with a seed drawn from
torch's global RNG when it has none): a seeded row gets the same tokens whatever rows share
its batch. (They are not the draws of the one-at-a-time ``generate`` path, which uses the
global RNG.)
"""

from __future__ import annotations

import torch

from memrag.generation import GenerationOptions


class RowSampler:
    """Picks one row's next token from its logits.

    Args:
        options: The row's decoding options.
        device: Where its logits live (the generator is made there).
    """

    def __init__(self, options: GenerationOptions, device: torch.device) -> None:
        self.greedy = options.temperature == 0
        self.temperature = float(options.temperature)
        self.top_k = int(options.top_k or 0)
        self.top_p = float(options.top_p)
        self.generator: torch.Generator | None = None
        if not self.greedy:
            seed = options.seed
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)).item())
            self.generator = torch.Generator(device=device).manual_seed(int(seed))

    def __call__(self, logits: torch.Tensor) -> int:
        """The next token id for ``logits`` (``(vocab,)``, any float dtype)."""
        if self.greedy:
            return int(torch.argmax(logits))
        return sample(
            logits, self.temperature, self.top_k, self.top_p, generator=self.generator
        )


def warp_scores(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """``logits`` as ``generate`` warps them before sampling: scaled by the temperature, then
    everything outside the top ``top_k`` and outside the top-``top_p`` mass set to ``-inf``.

    Args:
        logits: ``(vocab,)`` scores of one row.
        temperature: Above 0.
        top_k: Keep the ``top_k`` best tokens (0: all).
        top_p: Keep the smallest set of best tokens whose probability reaches ``top_p``.
    """
    scores = logits.float() / temperature
    vocab = scores.shape[-1]
    if 0 < top_k < vocab:
        threshold = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[-1] = False  # keep at least the best token
        scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    return scores


def sample(
    logits: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    *,
    generator: torch.Generator | None = None,
) -> int:
    """Draws a token from ``logits`` warped by :func:`warp_scores`.

    Raises:
        RuntimeError: the warped scores are not a distribution (e.g. NaN temperature).
    """
    probabilities = warp_scores(logits, temperature, top_k, top_p).softmax(dim=-1)
    return int(torch.multinomial(probabilities, 1, generator=generator).item())
