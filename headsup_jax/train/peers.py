"""A multi-process run whose peer died: the survivors stop, naming it, instead of hanging.

A collective with a dead peer fails (CPU: gloo's closed connection) or blocks (accelerators) until JAX's
coordination service misses the peer's heartbeats (`initialize(..., heartbeat_timeout)`; `headsup train
--heartbeat_timeout`), when it ends every process. Inside `peers_named(ckpt)`, an error of this process
is first checked against the service: if processes are gone, `PeerLost` names them and the checkpoint
the restart of all of them resumes from. The service's answer is a barrier of the live processes, so it
is awaited at most the heartbeat timeout and a margin (a peer blocked in a collective never joins it).
"""
from __future__ import annotations

import contextlib
import logging
import threading

import jax

log = logging.getLogger(__name__)


_heartbeat = {"timeout": 100}  # seconds, as given to initialize (JAX's default otherwise)


class PeerLost(RuntimeError):
    pass


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               heartbeat_timeout: int = 100, **kwargs) -> None:
    """jax.distributed.initialize with `heartbeat_timeout` seconds, remembered for `lost_processes`."""
    _heartbeat["timeout"] = heartbeat_timeout
    jax.distributed.initialize(coordinator, num_processes, process_id, heartbeat_timeout_seconds=heartbeat_timeout,
                               **kwargs)


def lost_processes() -> list[int]:
    """Processes of this run the coordination service no longer hears from (it takes up to the heartbeat
    timeout to decide); [0], the coordinator, when the service itself cannot be reached; [] on one process
    or when no answer comes in time."""
    from jax._src import distributed

    client, n = distributed.global_state.client, jax.process_count()
    if client is None or n == 1:
        return []
    answer = {}

    def ask():
        try:
            answer["live"] = client.get_live_nodes(list(range(n)))
        except Exception:  # noqa: BLE001 (the service runs in process 0: unreachable when it died)
            answer["live"] = {}
            answer["lost"] = [0]

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(_heartbeat["timeout"] + 30)
    if "live" not in answer:
        log.warning("no answer from the coordination service on which processes are alive")
        return []
    return answer.get("lost") or sorted(set(range(n)) - set(answer["live"]))


@contextlib.contextmanager
def peers_named(ckpt):
    """Turns an error raised while other processes are gone into PeerLost naming them (`ckpt`: the run's
    Checkpointer, for the step a restart resumes from); other errors pass unchanged."""
    try:
        yield
    except Exception as e:  # noqa: BLE001
        lost = lost_processes()
        if not lost:
            raise
        n, first = jax.process_count(), (str(e).strip().splitlines() or [type(e).__name__])[0]
        message = (f"process {jax.process_index()} of {n}: process{'es' if len(lost) > 1 else ''} "
                   f"{', '.join(map(str, lost))} stopped answering (died or unreachable): {first}; restart all "
                   f"{n} processes with the same command to resume from checkpoint {ckpt.latest_step}")
        log.error("%s", message)
        raise PeerLost(message) from e
