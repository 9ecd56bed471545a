"""Fault injection: a decoder thread that outlives the graceful shutdown cannot keep the server up."""

from __future__ import annotations

import subprocess
import sys
import time

SCRIPT = """
import threading, time
from memrag.cli.serve import exit_now_if_work_lingers
threading.Thread(target=time.sleep, args=(120,), name="prefill").start()  # a long prefill
exit_now_if_work_lingers()
print("not reached")
"""


def test_the_server_process_ends_at_once_when_work_lingers_after_shutdown() -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "not reached" not in done.stdout
    assert time.monotonic() - started < 30  # not the 120 s the thread would take
    assert "prefill" in done.stderr and "abandoned" in done.stderr
