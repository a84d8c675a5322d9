"""Multi-process: one of 2 local jax.distributed processes dies (kill -9 at step 5, between checkpoints 3 and 6).
The other does not hang: within seconds of the heartbeat timeout (3 s here) it stops with an error naming
the lost process and the checkpoint to resume from; the same command on both resumes from step 3."""
from __future__ import annotations

import subprocess
import sys
import time

from faults.test_interrupted_training import WORKER
from train_worker import ROOT, free_port, worker_env

WITHIN = 30.0  # seconds from the death to the survivor's exit: the heartbeat timeout, the exit's own wait


def processes(workdir, tmp_path, **env) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen([sys.executable, str(WORKER), "lost_peer", str(workdir), "--coordinator",
                              f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i)],
                             env=dict(worker_env(tmp_path / "cache"), **env), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for i in range(2)]


def finish(procs, timeout=60) -> list[str]:
    try:
        return [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_the_survivor_of_a_dead_process_stops_naming_it_and_both_resume(tmp_path):
    procs = processes(tmp_path / "run", tmp_path, FAULT_DIE="1:5")
    procs[1].wait(timeout=60)
    died = time.perf_counter()
    logs = finish(procs, timeout=WITHIN)
    assert time.perf_counter() - died < WITHIN
    assert procs[1].returncode == -9 and procs[0].returncode != 0, logs
    assert "fault_worker: step 4" in logs[0] and "fault_worker: step 5" not in logs[0]
    assert "PeerLost: process 0 of 2: process 1 stopped answering (died or unreachable)" in logs[0], logs[0][-3000:]
    assert "resume from checkpoint 3" in logs[0]

    procs = processes(tmp_path / "run", tmp_path)
    logs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], logs
    for log in logs:
        assert "fault_worker: resumed from step 3" in log and "fault_worker: step 4" in log, log[-3000:]
        assert "fault_worker: finished" in log
