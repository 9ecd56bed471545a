"""``python -m memrag.cli``: the ``memrag`` command (also for ``torchrun -m memrag.cli``)."""

from memrag.cli import main

main()
