"""Subprocess of the fault tests: tests/train_worker.py's modes, with each batch the train loop takes announced
on stdout ("fault_worker: batch K", K counted from 1 in this process) and followed by a pause of
$FAULT_PAUSE_S seconds, so a test can signal or kill the loop while it is inside a known step.

    python tests/faults/fault_worker.py loop OUT.npz --workdir DIR   (as train_worker.py; see its docstring)
"""
from __future__ import annotations

import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/: train_worker
import train_worker  # noqa: E402


class Announced:
    """A train iterator printing each batch it hands out, then pausing."""

    def __init__(self, it, pause: float):
        self.it, self.pause, self.count = it, pause, 0

    def __next__(self):
        batch = next(self.it)
        self.count += 1
        print(f"fault_worker: batch {self.count}", flush=True)
        time.sleep(self.pause)
        return batch

    def __getattr__(self, name):
        return getattr(self.it, name)


def main(argv) -> None:
    from headsup_jax.train import loop

    make, pause = loop.train_iterator, float(os.environ.get("FAULT_PAUSE_S", "0"))
    loop.train_iterator = lambda *a, **k: Announced(make(*a, **k), pause)
    train_worker.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
