"""Interrupted training (the real train loop in subprocesses, tests/train_worker.py's shrunk tiny config:
8 synthetic subjects, 32 x 24 images, batch 8, 6 steps, checkpoints every 3):

SIGTERM (a preemption notice) inside step 2: the run saves a checkpoint at step 2 within seconds and exits
0. The same command resumes from step 2 and is killed (-9) inside step 5, after its step-3 checkpoint; run
again, it resumes from step 3 and ends with an uninterrupted run's parameters, having read the same batches.
"""
from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from train_worker import ROOT, free_port, jax_cache, run_worker, worker_env  # noqa: F401  (jax_cache: a fixture)

WORKER = pathlib.Path(__file__).with_name("fault_worker.py")
PAUSE = 0.5  # seconds after each batch is announced: the signal lands inside that step
STOP_WITHIN = 20.0  # seconds from SIGTERM to the checkpoint written (the step's remainder, one save)


@pytest.fixture(scope="module")
def full(tmp_path_factory, jax_cache, synthetic_data):
    """The uninterrupted 6-step run (its workdir and saved arrays) on the shared synthetic dataset."""
    workdir = tmp_path_factory.mktemp("full")
    (workdir / "run").mkdir()
    (workdir / "run" / "data").symlink_to(synthetic_data)
    run_worker(["loop", str(workdir / "out.npz"), "--workdir", str(workdir / "run")], jax_cache)
    return workdir / "run", dict(np.load(workdir / "out.npz"))


def interrupted(workdir, out, cache, at_batch: int, sig, ready=lambda: True) -> tuple[int, list[str], float]:
    """The loop with pauses, sent `sig` once it announces batch `at_batch` and `ready()` holds
    -> (exit code, output lines, seconds from the signal to the preemption log line, if any)."""
    env = dict(worker_env(cache), FAULT_PAUSE_S=str(PAUSE))
    proc = subprocess.Popen([sys.executable, str(WORKER), "loop", str(out), "--workdir", str(workdir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines, sent, stopped = [], None, None
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if sent is None and line.strip() == f"fault_worker: batch {at_batch}":
                while not ready():
                    time.sleep(0.05)
                proc.send_signal(sig)
                sent = time.perf_counter()
            if sent is not None and stopped is None and "SIGTERM (preemption): stopped" in line:
                stopped = time.perf_counter() - sent
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sent is not None, "\n".join(lines[-60:])
    return proc.returncode, lines, stopped


def _part(tmp_path, full_run):
    part = tmp_path / "part"
    part.mkdir()
    (part / "data").symlink_to(full_run / "data")  # the same generated subjects, not generated twice
    return part


def _assert_params(got, ref):
    params = [k for k in ref if k.startswith("param/")]
    assert len(params) > 20 and set(params) == {k for k in got if k.startswith("param/")}
    for k in params:
        np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-6, err_msg=k)


def test_sigterm_then_kill_9_each_resume_to_the_uninterrupted_parameters(tmp_path, full, jax_cache):
    full_run, ref = full
    part = _part(tmp_path, full_run)
    # SIGTERM inside step 2: checkpoint at step 2 within seconds, exit 0, no further step
    code, lines, stopped = interrupted(part, tmp_path / "first.npz", jax_cache, 2, signal.SIGTERM)
    log = "\n".join(lines)
    assert code == 0, log[-4000:]
    assert stopped is not None and stopped < STOP_WITHIN, log[-4000:]
    assert "stopped after step 2 with its checkpoint saved" in log
    assert "fault_worker: batch 3" not in log
    first = dict(np.load(tmp_path / "first.npz"))  # the newest checkpoint, restored in a new experiment
    assert int(first["step"]) == 2 and sorted(p.name for p in (part / "checkpoints").iterdir()) == ["2"]
    assert list(first["batches"]) == list(ref["batches"][:2])

    # the same command continues from step 2; kill -9 inside its step 5, once the step-3 checkpoint is final
    code, lines, _ = interrupted(part, tmp_path / "second.npz", jax_cache, 3, signal.SIGKILL,
                                 ready=lambda: (part / "checkpoints" / "3").is_dir())  # renamed when complete
    log = "\n".join(lines)
    assert code == -signal.SIGKILL and "resumed from step 2" in log, log[-4000:]
    assert not (tmp_path / "second.npz").exists()

    # and again: from step 3 (the last complete checkpoint) to the end, as if never interrupted
    log = run_worker(["loop", str(tmp_path / "resumed.npz"), "--workdir", str(part)], jax_cache)
    assert "resumed from step 3" in log
    resumed = dict(np.load(tmp_path / "resumed.npz"))
    assert int(resumed["step"]) == 6
    assert list(resumed["batches"]) == list(ref["batches"][3:])  # the exact next batches
    _assert_params(resumed, ref)


def test_preemption_flag_is_set_by_sigterm_and_the_handler_restored():
    from headsup_jax.train.preemption import Preemption

    before = signal.getsignal(signal.SIGTERM)
    with Preemption() as preemption:
        assert not preemption.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)  # would end pytest without the handler
        assert preemption.reached(1)
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_to_one_of_two_processes_stops_both_after_the_same_step(jax_cache):
    """jax.distributed on 2 local processes, SIGTERM to process 1 only: JAX's preemption service (not a handler
    of ours, which would hide the signal from it) has both stop after the same step, past the notice."""
    port = free_port()
    env = dict(worker_env(jax_cache), FAULT_PAUSE_S="0.05")
    procs = [subprocess.Popen([sys.executable, str(WORKER), "preemption", "--coordinator", f"127.0.0.1:{port}",
                               "--num_processes", "2", "--process_id", str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=ROOT) for i in range(2)]
    try:
        for line in procs[1].stdout:
            if line.strip() == "fault_worker: step 5":
                procs[1].send_signal(signal.SIGTERM)
                break
        logs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], logs
    stops = [re.findall(r"fault_worker: stopped after step (\d+)", log) for log in logs]
    assert len(stops[0]) == len(stops[1]) == 1 and stops[0] == stops[1] and int(stops[0][0]) > 5, logs
