"""SIGTERM (a preemption notice) -> the train loop stops after the current step, with a checkpoint at it.

One process: our handler only sets a flag (nothing else runs inside a signal handler), which the loop reads
after each step. Several processes (`jax.distributed`): JAX's preemption service already catches SIGTERM and
agrees, in the background, on the first step every process can stop at (the largest step any of them has
reached, plus one); `orbax.checkpoint.multihost.reached_preemption` (JAX's
`multihost_utils.reached_preemption_sync_point`), a local read asked at every step, says when it is reached,
so all processes save the same step and none waits on a collective the others skipped.
"""
from __future__ import annotations

import signal
import threading

import jax
import orbax.checkpoint as ocp


class Preemption:
    """`with Preemption() as p:` ... `p.reached(step)` after each step: stop and save there when True."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> Preemption:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def reached(self, step: int) -> bool:
        """Whether to stop after `step` (every process gets the same answer at the same step)."""
        if jax.process_count() > 1:  # False when the preemption service is off (jax_enable_preemption_service)
            return ocp.multihost.reached_preemption(step)
        return self.requested
