"""Subprocess of the fault tests: tests/train_worker.py's modes, with each batch the train loop takes announced
on stdout ("fault_worker: batch K", K counted from 1 in this process) and followed by a pause of
$FAULT_PAUSE_S seconds, so a test can signal or kill the loop while it is inside a known step.

    python tests/faults/fault_worker.py loop OUT.npz --workdir DIR   (as train_worker.py; see its docstring)
        $FAULT_NAN_BATCH=K: batch K's first input image is NaN; $FAULT_ON_NONFINITE: the config's on_nonfinite.
    python tests/faults/fault_worker.py preemption --coordinator HOST:PORT --num_processes N --process_id I
        N processes (jax.distributed, no model) ask `train.preemption.Preemption.reached` at steps 1, 2, ...
        ($FAULT_PAUSE_S apart), printing "fault_worker: step K", then "fault_worker: stopped after step K".
    python tests/faults/fault_worker.py lost_peer WORKDIR --coordinator HOST:PORT --num_processes N --process_id I
        N processes (heartbeat timeout 3 s) run steps 1..9, each a collective, checkpointing a small state every
        3 inside `train.peers.peers_named`, resuming from the newest checkpoint; $FAULT_DIE="I:K": process I
        kills itself (-9) at step K.
    python tests/faults/fault_worker.py interrupted_save WORKDIR
        A small state checkpointed at step 3, then a save of step 6 killed (-9) from inside Orbax's background
        write, just before it renames its temporary folder to 6 (what a kill during the write leaves).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/: train_worker
import train_worker  # noqa: E402


class Announced:
    """A train iterator printing each batch it hands out, then pausing."""

    def __init__(self, it, pause: float, nan_batch: int = 0):
        self.it, self.pause, self.nan_batch, self.count = it, pause, nan_batch, 0

    def __next__(self):
        batch = next(self.it)
        self.count += 1
        if self.count == self.nan_batch:
            batch["inputs"][0] = float("nan")  # [B, N, H, W, 3]: record 0's views
        print(f"fault_worker: batch {self.count}", flush=True)
        time.sleep(self.pause)
        return batch

    def __getattr__(self, name):
        return getattr(self.it, name)


def preemption_steps(coordinator: str, num_processes: int, process_id: int, pause: float) -> None:
    import jax

    jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=60)
    from headsup_jax.train.preemption import Preemption

    with Preemption() as preemption:
        for step in range(1, 1000):
            print(f"fault_worker: step {step}", flush=True)
            time.sleep(pause)
            if preemption.reached(step):
                print(f"fault_worker: stopped after step {step}", flush=True)
                return
    raise SystemExit("fault_worker: no preemption agreed in 1000 steps")


def small_state(seed: int):
    """A small nnx state (a 64 -> 32 linear layer, weights drawn from `seed`)."""
    from flax import nnx

    return nnx.state(nnx.Linear(64, 32, rngs=nnx.Rngs(seed)))


def interrupted_save(workdir: str) -> None:
    from orbax.checkpoint._src.path import atomicity

    from headsup_jax.train.checkpoint import Checkpointer

    ckpt = Checkpointer(workdir, every=3, keep=3)
    ckpt.save(3, small_state(3), {"at": 3})
    ckpt.wait()

    async def killed(*_args, **_kwargs):
        print("fault_worker: killed inside the write of checkpoint 6", flush=True)
        os.kill(os.getpid(), 9)

    atomicity.AtomicRenameTemporaryPath.finalize = killed
    ckpt.save(6, small_state(6), {"at": 6})
    ckpt.wait()
    raise SystemExit("fault_worker: the save of checkpoint 6 finished")


def lost_peer(workdir: str, coordinator: str, num_processes: int, process_id: int, steps: int = 9) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from headsup_jax.train import peers

    peers.initialize(coordinator, num_processes, process_id, heartbeat_timeout=3, initialization_timeout=60)
    import numpy as np
    from jax.experimental import multihost_utils

    from headsup_jax.train.checkpoint import Checkpointer

    host_state = lambda step: jax.tree.map(np.asarray, small_state(step))  # noqa: E731  (the same on every process)
    die = os.environ.get("FAULT_DIE", "-1:-1").split(":")
    ckpt, start, state = Checkpointer(workdir, every=3, keep=2), 0, host_state(0)
    if ckpt.latest_step is not None:
        start, state = ckpt.restore(state)
        print(f"fault_worker: resumed from step {start}", flush=True)
    with peers.peers_named(ckpt):
        for step in range(start + 1, steps + 1):
            if [process_id, step] == [int(x) for x in die]:
                os.kill(os.getpid(), 9)
            multihost_utils.process_allgather(np.float32(step))  # a collective, as each train step has
            print(f"fault_worker: step {step}", flush=True)
            ckpt.save(step, host_state(step), {"step": step})
    ckpt.close()
    print("fault_worker: finished", flush=True)


def main(argv) -> None:
    if argv[0] == "lost_peer":
        _, workdir, _, coordinator, _, num_processes, _, process_id = argv
        return lost_peer(workdir, coordinator, int(num_processes), int(process_id))
    if argv[0] == "interrupted_save":
        return interrupted_save(argv[1])
    from headsup_jax.train import loop

    if argv[0] == "preemption":
        _, _, coordinator, _, num_processes, _, process_id = argv
        return preemption_steps(coordinator, int(num_processes), int(process_id),
                                float(os.environ.get("FAULT_PAUSE_S", "0")))

    make, pause = loop.train_iterator, float(os.environ.get("FAULT_PAUSE_S", "0"))
    nan_batch = int(os.environ.get("FAULT_NAN_BATCH", "0"))
    loop.train_iterator = lambda *a, **k: Announced(make(*a, **k), pause, nan_batch)
    if "FAULT_ON_NONFINITE" in os.environ:
        resume_config = train_worker.resume_config

        def config(**mesh):
            c = resume_config(**mesh)
            c.on_nonfinite = os.environ["FAULT_ON_NONFINITE"]
            return c

        train_worker.resume_config = config
    train_worker.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
