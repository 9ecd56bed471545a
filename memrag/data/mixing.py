"""Two resumable example streams interleaved at random, as one resumable stream.

Fine-tuning mixes the QA stream with a label-free continuation stream (Wikipedia, Gutenberg)
so that slots learn to carry a passage, not only SQuAD's question style; the trainer sees one
stream and saves one position.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from memrag.data.examples import ResumableStream, rng_state_from_json, rng_state_to_json


class InterleavedStream:
    """Examples from ``primary``, or with probability ``secondary_probability`` from ``secondary``.

    Both streams are endless in training; when one ends (a finite stream) the other goes on
    alone, and the interleaved stream ends with the last of them.

    Args:
        primary: The main stream (e.g. QA examples).
        secondary: The stream mixed in (e.g. continuation examples).
        secondary_probability: Chance that an example comes from ``secondary``, in ``[0, 1]``.
        seed: Seed of the choice.

    Raises:
        ValueError: A probability outside ``[0, 1]``.
    """

    def __init__(
        self,
        primary: ResumableStream,
        secondary: ResumableStream,
        *,
        secondary_probability: float,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= secondary_probability <= 1.0:
            raise ValueError(f"secondary_probability must be in [0, 1], got {secondary_probability}")
        self.primary = primary
        self.secondary = secondary
        self.secondary_probability = secondary_probability
        self.rng = random.Random(seed)
        self._ended = {"primary": False, "secondary": False}

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        first = "secondary" if self.rng.random() < self.secondary_probability else "primary"
        for name in (first, "primary" if first == "secondary" else "secondary"):
            if self._ended[name]:
                continue
            try:
                return next(getattr(self, name))
            except StopIteration:
                self._ended[name] = True
        raise StopIteration

    @property
    def reports(self) -> list[Any]:
        """Bad-row reports of both streams."""
        return [*getattr(self.primary, "reports", []), *getattr(self.secondary, "reports", [])]

    def state_dict(self) -> dict[str, Any]:
        """Both streams' positions and the choice's RNG (JSON-serialisable)."""
        return {
            "rng": rng_state_to_json(self.rng),
            "ended": dict(self._ended),
            "primary": self.primary.state_dict(),
            "secondary": self.secondary.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from :meth:`state_dict` output.

        Raises:
            ValueError: The saved position is not an interleaved stream's.
        """
        missing = {"rng", "primary", "secondary"} - set(state)
        if missing:
            raise ValueError(
                f"saved data position is not an interleaved stream's (missing {', '.join(sorted(missing))}); "
                "was the run started without the continuation stream?"
            )
        self.rng.setstate(rng_state_from_json(state["rng"]))
        self._ended = {"primary": False, "secondary": False, **state.get("ended", {})}
        self.primary.load_state_dict(state["primary"])
        self.secondary.load_state_dict(state["secondary"])
