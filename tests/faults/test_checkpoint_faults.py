"""Checkpoint faults on a small state (a 64 -> 32 linear layer): a save killed during its asynchronous write,
a corrupted newest checkpoint (bit flip, truncation), a full disk while saving. Each time the previous
checkpoint is restored whole and the run can save again."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from etils.epath import gpath

from faults.fault_worker import small_state
from train_worker import ROOT, worker_env
from headsup_jax.train.checkpoint import Checkpointer, CheckpointError

WORKER = os.path.join(os.path.dirname(__file__), "fault_worker.py")


def restored(workdir) -> tuple[int, object]:
    ckpt = Checkpointer(workdir, every=3, keep=3)
    try:
        return ckpt.restore(small_state(0))
    finally:
        ckpt.close()


def assert_state(state, seed: int) -> None:
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(small_state(seed)), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def saved(workdir, *steps) -> Checkpointer:
    ckpt = Checkpointer(workdir, every=3, keep=3)
    for step in steps:
        ckpt.save(step, small_state(step), {"at": step})
    ckpt.wait()
    return ckpt


def test_a_save_killed_during_its_write_is_ignored_with_a_warning(tmp_path, caplog):
    proc = subprocess.run([sys.executable, WORKER, "interrupted_save", str(tmp_path)], env=worker_env(tmp_path / "cache"),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "killed inside the write of checkpoint 6" in proc.stdout
    root = tmp_path / "checkpoints"
    assert [p.name.startswith("6.orbax-checkpoint-tmp") for p in sorted(root.iterdir())] == [False, True]
    with caplog.at_level(logging.WARNING, "headsup_jax"):
        step, state = restored(tmp_path)
    assert step == 3
    assert_state(state, 3)
    assert "checkpoint 6 in" in caplog.text and "was not finished" in caplog.text and "restoring step 3" in caplog.text
    assert sorted(p.name for p in root.iterdir()) == ["3"]  # the half-written folder is gone
    saved(tmp_path, 6).close()  # and step 6 saves afresh
    assert_state(restored(tmp_path)[1], 6)


def _largest_file(folder):
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["bit flip", "truncation", "truncation, no manifest"])
def test_a_corrupt_newest_checkpoint_is_named_and_the_previous_restored(tmp_path, caplog, damage):
    saved(tmp_path, 3, 6).close()
    victim = _largest_file(tmp_path / "checkpoints" / "6")  # an array chunk
    data = bytearray(victim.read_bytes())
    if damage == "bit flip":  # Orbax alone reads this back as other values without an error
        data[len(data) // 2] ^= 0x10
    else:
        data = data[: len(data) // 2]
    victim.write_bytes(bytes(data))
    if damage.endswith("no manifest"):  # a checkpoint written before manifests: Orbax's own error is caught
        (tmp_path / "checkpoint_manifests" / "6.json").unlink()
    with caplog.at_level(logging.WARNING, "headsup_jax"):
        step, state = restored(tmp_path)
    assert step == 3
    assert_state(state, 3)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("checkpoint 6 "), errors
    assert (victim.name in errors[0]) if "manifest" not in damage else ("cannot be read" in errors[0])
    assert "trying the previous checkpoint" in errors[0]
    assert (tmp_path / "checkpoints_corrupt" / "6").is_dir()  # moved out of Orbax's sight
    saved(tmp_path, 6).close()  # so the run saves step 6 again
    assert_state(restored(tmp_path)[1], 6)


def test_a_checkpoint_of_another_model_is_refused_not_treated_as_corrupt(tmp_path):
    from flax import nnx

    saved(tmp_path, 3).close()
    ckpt = Checkpointer(tmp_path, every=3, keep=3)
    with pytest.raises(CheckpointError, match=r"checkpoints/3: the checkpoint does not fit this model"):
        ckpt.restore(nnx.state(nnx.Linear(64, 16, rngs=nnx.Rngs(0))))
    ckpt.close()
    assert not (tmp_path / "checkpoints_corrupt").exists()


@pytest.mark.parametrize("where", ["data_state", "checkpoints"])  # our JSON (at once); Orbax's metadata (async)
def test_disk_full_while_saving_is_a_clear_error_and_the_run_continues_after(tmp_path, monkeypatch, where):
    ckpt = saved(tmp_path, 3)
    full = str(tmp_path / where)
    originals = {name: getattr(gpath._GPath, name) for name in ("write_text", "write_bytes")}

    def hook(name):
        def write(self, *args, **kwargs):
            if str(self).startswith(full):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return originals[name](self, *args, **kwargs)
        return write

    for name in originals:
        monkeypatch.setattr(gpath._GPath, name, hook(name))
    with pytest.raises(CheckpointError) as error:
        ckpt.save(6, small_state(6), {"at": 6})
        ckpt.wait()
    with contextlib.suppress(OSError):  # the failed save's error again
        ckpt.manager.close()
    message = str(error.value)
    assert "writing checkpoint 6 failed: No space left on device" in message and "kept ([3]) are intact" in message
    monkeypatch.undo()  # space is back
    step, state = restored(tmp_path)
    assert step == 3
    assert_state(state, 3)
    saved(tmp_path, 6).close()
    assert_state(restored(tmp_path)[1], 6)


def test_an_unfinished_checkpoint_still_being_written_is_removed_once_its_writer_stops(tmp_path, caplog):
    """The writer threads of a save that failed in this process go on writing into its temporary folder
    for a while; a new Checkpointer's cleanup meets a folder that fills while it is removed."""
    saved(tmp_path, 3).close()
    inner = tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp" / "default.orbax-checkpoint-tmp"
    inner.mkdir(parents=True)
    stop = time.monotonic() + 1.5

    def write():
        i = 0
        while time.monotonic() < stop:
            inner.mkdir(parents=True, exist_ok=True)
            (inner / f"chunk_{i}").write_bytes(b"x" * 64)
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    while writer.is_alive() and len(list(inner.iterdir())) < 500:  # a folder that takes a while to remove
        time.sleep(0.01)
    try:
        with caplog.at_level(logging.WARNING, "headsup_jax"):
            step, state = restored(tmp_path)
    finally:
        writer.join()
    assert step == 3
    assert_state(state, 3)
    saved(tmp_path, 6).close()  # the run saves step 6 afresh
    assert_state(restored(tmp_path)[1], 6)
