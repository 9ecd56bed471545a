"""Continuous batching: one thread decodes every submitted prompt together, a step at a time.

:class:`BatchedGenerator` owns a thread that loops:

1. **Gather.** When idle, it waits for a request, then up to ``batch_window`` seconds more
   (or until ``max_batch_size`` requests wait) so that requests arriving together start
   together.
2. **Join.** Waiting requests (as many as there is room for) are spliced with the one splice
   path, :meth:`memrag.compressor.Compressor.build`, prefilled in one forward pass, and their
   first tokens sampled; their cache is merged into the running batch (left padding). New
   requests thus join at the next *step*, not at the next batch (continuous batching): a
   request never waits for the longest answer of the batch before it to finish, and rows
   that finish leave at once, so the batch stays full under load.
3. **Step.** One forward pass feeds every row its last token; each row's next token is
   chosen with its own options (:class:`~memrag.batching.sampling.RowSampler`) and its text
   checked for stop strings and length (:class:`~memrag.batching.rows.RowText`). Finished,
   failed and cancelled rows leave the batch; the others go on.

Faults stay with their row: a prompt that cannot be spliced or prefilled is retried alone
(only it fails), a row whose sampling fails fails alone, and a cancelled row (its client left)
is dropped at the next step. A failing forward pass of the whole step fails the rows in it
(the batcher then goes on with new requests). Every row ends exactly once, through its
:class:`~memrag.batching.handle.RowHandle`.

The decoder is entered (:meth:`~memrag.compressor.Compressor.decoder_mode`, the compressor's
lock) for each step only, so other users of the model (e.g. compressing documents) take
turns with the steps.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from memrag.batching.handle import RowCancelledError, RowHandle
from memrag.batching.kernels import PackedLinears, packed_linears_supported
from memrag.batching.rows import RowText
from memrag.batching.sampling import RowSampler
from memrag.batching.state import DecodeState
from memrag import generation
from memrag.generation import GenerationOptions, PrefillStoppedError
from memrag.splice import PromptPart, has_kv_parts

logger = logging.getLogger(__name__)

#: Default most rows decoded together.
DEFAULT_MAX_BATCH_SIZE = 8
#: Default seconds an idle batcher waits for more requests before it starts a batch.
DEFAULT_BATCH_WINDOW = 0.01


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down and accepts no more requests."""


@dataclass(eq=False)
class _Row:
    prompt: Sequence[PromptPart]
    options: GenerationOptions
    handle: RowHandle
    sampler: RowSampler
    text: RowText | None = None
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class _Stats:
    steps: int = 0
    rows_decoded: int = 0
    prefills: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0


class BatchedGenerator:
    """Decodes prompts submitted from any thread together, with continuous batching.

    Example:
        .. code-block:: python

            with BatchedGenerator(compressor, max_batch_size=8) as batcher:
                handle = batcher.submit(prompt, GenerationOptions(max_new_tokens=32))
                answer = "".join(handle)  # the text as it streams, chunk by chunk
                finish_reason = handle.generation.finish_reason

    Args:
        compressor: The :class:`~memrag.compressor.Compressor` whose frozen decoder answers.
        max_batch_size: Most rows decoded in one step.
        batch_window: Seconds an idle batcher waits for more requests before it starts.
        packed_weights: Decode steps of several rows with oneDNN-packed weights
            (:class:`~memrag.batching.kernels.PackedLinears`; CPU and float32 only; a second
            copy of the linear weights in memory). ``None``: wherever supported.

    Raises:
        ValueError: ``max_batch_size`` < 1 or ``batch_window`` < 0.
    """

    def __init__(
        self,
        compressor: Any,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        batch_window: float = DEFAULT_BATCH_WINDOW,
        packed_weights: bool | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not batch_window >= 0:
            raise ValueError(f"batch_window must be >= 0 seconds, got {batch_window}")
        self.compressor = compressor
        self.max_batch_size = int(max_batch_size)
        self.batch_window = float(batch_window)
        self._cond = threading.Condition()
        self._pending: list[_Row] = []
        self._rows: list[_Row] = []
        self._state: DecodeState | None = None
        self._closing = False
        self._abort = False
        self._thread: threading.Thread | None = None
        self._stats = _Stats()
        supported = packed_linears_supported(compressor.causal_lm)
        if packed_weights and not supported:
            raise ValueError("packed_weights needs a float32 model on a CPU with oneDNN")
        self._packed = (
            PackedLinears(compressor.causal_lm)
            if (supported if packed_weights is None else packed_weights)
            else None
        )

    # ------------------------------------------------------------------ public API
    def submit(self, prompt: Sequence[PromptPart], options: GenerationOptions | None = None) -> RowHandle:
        """Queues one prompt; its text arrives through the returned handle.

        Args:
            prompt: Prompt parts (text, slots, task markers, K/V memory), as for
                :meth:`~memrag.compressor.Compressor.generate`.
            options: How to decode this row (greedy by default).

        Raises:
            BatcherClosedError: :meth:`close` was called.
            TypeError: ``options`` is not a :class:`GenerationOptions`.
        """
        options = options or GenerationOptions()
        if not isinstance(options, GenerationOptions):
            raise TypeError(f"options must be GenerationOptions, got {type(options).__name__}")
        row = _Row(list(prompt), options, RowHandle(), RowSampler(options, self.compressor.device))
        row.handle._on_cancel = lambda: self._cancel_pending(row)
        with self._cond:
            if self._closing:
                raise BatcherClosedError("the batched generator is closed")
            self._pending.append(row)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="memrag-batcher", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return row.handle

    @property
    def packed_weights(self) -> bool:
        """Whether steps of several rows use oneDNN-packed weights."""
        return self._packed is not None

    def warm_up(self) -> None:
        """Does the one-off work now rather than in the first batch (packing the weights)."""
        if self._packed is not None:
            with self.compressor.decoder_mode():
                self._packed.pack()

    def stats(self) -> dict[str, Any]:
        """Rows decoding and waiting, and counters since the start."""
        stats = self._stats
        return {
            "rows": len(self._rows),
            "pending": len(self._pending),
            "steps": stats.steps,
            "mean_rows_per_step": round(stats.rows_decoded / stats.steps, 3) if stats.steps else 0.0,
            "prefills": stats.prefills,
            "completed": stats.completed,
            "failed": stats.failed,
            "cancelled": stats.cancelled,
        }

    def close(self, timeout: float = 0.0) -> None:
        """Stops accepting requests, lets running rows finish for up to ``timeout`` seconds,
        then cancels the rest (:class:`RowCancelledError`) and stops the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is None:
            return
        thread.join(max(0.0, timeout))
        with self._cond:
            self._abort = True
            self._cond.notify_all()
        thread.join()

    def __enter__(self) -> BatchedGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        while True:
            joiners = self._next_joiners()
            if joiners is None:
                break
            try:
                with self.compressor.decoder_mode() as decoder, torch.inference_mode():
                    self._drop_cancelled()
                    if joiners:
                        self._join(decoder, joiners)
                    if self._state is not None:
                        self._step(decoder)
            except Exception as err:  # noqa: BLE001 - a failed step fails its rows, not the batcher
                logger.error("a batched decoding step failed; its rows fail", exc_info=err)
                for row in self._rows + [r for r in joiners if not r.handle.done]:
                    self._fail(row, err)
                self._rows, self._state = [], None
        self._shut_down()

    def _next_joiners(self) -> list[_Row] | None:
        """Rows to join the batch now (waits while idle); ``None`` when the thread should stop."""
        with self._cond:
            while not (self._abort or self._pending or self._rows):
                if self._closing:
                    return None
                self._cond.wait()
            if self._abort:
                return None
            if not self._rows and self.batch_window > 0:
                deadline = time.monotonic() + self.batch_window
                while len(self._pending) < self.max_batch_size and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            room = self.max_batch_size - len(self._rows)
            joiners, self._pending = self._pending[:room], self._pending[room:]
            return joiners

    def _cancel_pending(self, row: _Row) -> None:
        """Ends a cancelled row at once if it has not joined the batch yet."""
        with self._cond:
            if row not in self._pending:
                return
            self._pending.remove(row)
        self._cancelled(row, "the row was cancelled")

    def _shut_down(self) -> None:
        with self._cond:
            leftover, self._pending = self._rows + self._pending, []
            self._rows, self._state = [], None
        for row in leftover:
            self._cancelled(row, "the batched generator was closed")

    def _drop_cancelled(self) -> None:
        keep = [i for i, row in enumerate(self._rows) if not row.handle.cancelled]
        if len(keep) == len(self._rows):
            return
        for i, row in enumerate(self._rows):
            if row.handle.cancelled:
                self._cancelled(row, "the row was cancelled")
        self._rows = [self._rows[i] for i in keep]
        self._state = self._state.select(keep) if self._state is not None else None

    # ------------------------------------------------------------------ joining
    def _join(self, decoder: Any, joiners: list[_Row]) -> None:
        live = []
        for row in joiners:
            if row.handle.cancelled:
                self._cancelled(row, "the row was cancelled")
            else:
                live.append(row)
        for rows, state, logits in self._prefill(decoder, live):
            keep = [i for i, row in enumerate(rows) if self._advance(row, logits[i], len(rows))]
            kept = _continue(state, rows, keep)
            if kept is None:
                continue
            self._rows += [rows[i] for i in keep]
            self._state = kept if self._state is None else self._state.merge(kept)

    def _prefill(
        self, decoder: Any, rows: list[_Row]
    ) -> list[tuple[list[_Row], DecodeState, torch.Tensor]]:
        """Splices and prefills ``rows`` together; a group that fails is retried row by row,
        so only the rows that fail on their own fail."""
        if not rows:
            return []
        if len(rows) > 1 and any(_long_kv_prompt(row.prompt) for row in rows):
            # Several K/V prompts are spliced with all their text computed in one pass; a long
            # one is prefilled alone, in pieces that a cancel or deadline can stop between.
            return [part for row in rows for part in self._prefill(decoder, [row])]
        try:
            batch = self.compressor.build([row.prompt for row in rows])
            with self._kernels(len(rows)):
                state, logits = DecodeState.prefill(
                    decoder, batch, should_stop=lambda: self._abort or all(r.handle.cancelled for r in rows)
                )
        except PrefillStoppedError:
            for row in rows:
                self._cancelled(row, "the row was cancelled during its prefill")
            return []
        except Exception as err:  # noqa: BLE001 - isolate the row(s) at fault
            if len(rows) == 1:
                logger.warning("a prompt could not be spliced or prefilled: %s", err)
                self._fail(rows[0], err)
                return []
            logger.warning("a batch of %d prompts failed (%s); prefilling them one by one", len(rows), err)
            return [part for row in rows for part in self._prefill(decoder, [row])]
        self._stats.prefills += 1
        prefilled = batch.prefilled_lengths or batch.prompt_lengths
        for row, positions, computed in zip(rows, batch.prompt_lengths, prefilled):
            row.text = RowText(
                self.compressor.tokenizer,
                row.options,
                prompt_positions=int(positions),
                prefilled_positions=int(computed),
            )
        return [(rows, state, logits)]

    # ------------------------------------------------------------------ stepping
    def _step(self, decoder: Any) -> None:
        state = self._state
        assert state is not None
        rows = self._rows
        with self._kernels(len(rows)):
            logits = state.step(decoder)
        self._stats.steps += 1
        self._stats.rows_decoded += len(rows)
        keep = [i for i, row in enumerate(rows) if self._advance(row, logits[i], len(rows))]
        self._rows = [rows[i] for i in keep]
        self._state = _continue(state, rows, keep)

    def _kernels(self, rows: int) -> contextlib.AbstractContextManager[Any]:
        """The packed weights for a pass over several rows; one row runs exactly as the
        one-at-a-time path does (default kernels)."""
        if self._packed is not None and rows > 1:
            return self._packed.active()
        return contextlib.nullcontext()

    def _advance(self, row: _Row, logits: torch.Tensor, batch_rows: int) -> bool:
        """Samples the row's next token and emits its text; returns whether it goes on."""
        assert row.text is not None
        try:
            token = row.sampler(logits)
            text = row.text.push(token)
        except Exception as err:  # noqa: BLE001 - this row's options or text failed, not the batch
            logger.warning("a row failed while decoding: %s", err)
            self._fail(row, err)
            return False
        row.handle.note_batch(batch_rows)
        row.handle.emit(text)
        if row.text.done:
            self._stats.completed += 1
            row.handle.finish(row.text.generation())
            return False
        return True

    def _fail(self, row: _Row, error: BaseException) -> None:
        if not row.handle.done:
            self._stats.failed += 1
        row.handle.fail(error)

    def _cancelled(self, row: _Row, why: str) -> None:
        if not row.handle.done:
            self._stats.cancelled += 1
        row.handle.fail(RowCancelledError(why))


def _continue(state: DecodeState, rows: list[_Row], keep: list[int]) -> DecodeState | None:
    """``state`` narrowed to the rows ``keep`` (``None`` if none), each fed its last token next."""
    if len(keep) < len(rows):
        narrowed = state.select(keep)
        if narrowed is None:
            return None
        state = narrowed
    tokens = [rows[i].text.tokens[-1] for i in keep]  # type: ignore[union-attr]
    state.next_tokens = torch.tensor(tokens, dtype=torch.long, device=state.next_tokens.device)
    return state


def _long_kv_prompt(prompt: Sequence[PromptPart]) -> bool:
    """Whether ``prompt`` holds K/V memory and more text than one prefill piece (characters
    bound tokens from above, so this errs toward prefilling alone)."""
    text = sum(len(part) for part in prompt if isinstance(part, str))
    return text > generation.PREFILL_CHUNK_POSITIONS and has_kv_parts([prompt])
