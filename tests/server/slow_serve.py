"""``memrag serve`` over a decoder that is slow and never ends its answers (the shutdown test).

Usage: ``python slow_serve.py GRACE_SECONDS STEP_SECONDS serve --store ... [memrag serve options]``

Every decoder call sleeps ``STEP_SECONDS`` and the end-of-sequence token is never chosen, so
a request with a large ``max_tokens`` and a stop string the model never writes is still
being answered when the graceful shutdown (``GRACE_SECONDS``) ends.
"""

from __future__ import annotations

import sys
import time
from typing import Any


def main() -> None:
    grace, step, arguments = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]

    import memrag.server.runner as runner
    from memrag.cli.app import app
    from memrag.store import MemoryStore

    runner.GRACEFUL_SHUTDOWN_SECONDS = grace
    real_open = MemoryStore.open

    def open_slowly(*args: Any, **kwargs: Any) -> Any:
        store = real_open(*args, **kwargs)
        model = store.compressor.causal_lm
        forward, eos = model.forward, store.compressor.tokenizer.eos_token_id

        def slow_forward(*f_args: Any, **f_kwargs: Any) -> Any:
            time.sleep(step)
            output = forward(*f_args, **f_kwargs)
            output.logits[..., eos] = float("-inf")
            return output

        model.forward = slow_forward
        return store

    MemoryStore.open = open_slowly  # type: ignore[method-assign]
    app(arguments, prog_name="memrag")


if __name__ == "__main__":
    main()
