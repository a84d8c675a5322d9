"""Resume (issue 5): 6 steps in one run equal 3 steps + checkpoint + a new process resuming from the
workdir alone + 3 steps: the same parameters and the same 6 batches, in order.

Runs `headsup_jax.train.loop.train` in subprocesses of tests/train_worker.py (the tiny config shrunk:
8 synthetic subjects, 32 x 24 images, 2 + 2 views, batch 8, checkpoint every 3 steps). The stopped run
uses `train(..., stop_at=3)` with the 6-step schedule, as a preempted job would. Each worker logs the
batches its loop consumed (subjects and a checksum of the input images) and restores the newest
checkpoint into a freshly built experiment.
"""
from __future__ import annotations

import numpy as np

from train_worker import jax_cache, run_worker  # noqa: F401  (jax_cache: a fixture)


def test_resume_equals_uninterrupted(tmp_path, jax_cache):
    full, part = tmp_path / "full", tmp_path / "part"
    run_worker(["loop", str(tmp_path / "full.npz"), "--workdir", str(full)], jax_cache)
    part.mkdir()
    (part / "data").symlink_to(full / "data")  # the same generated subjects, not generated twice
    run_worker(["loop", str(tmp_path / "first.npz"), "--workdir", str(part), "--stop_at", "3"], jax_cache)
    run_worker(["loop", str(tmp_path / "resumed.npz"), "--workdir", str(part)], jax_cache)
    ref, first, resumed = (dict(np.load(tmp_path / f"{n}.npz")) for n in ("full", "first", "resumed"))

    assert (int(ref["step"]), int(first["step"]), int(resumed["step"])) == (6, 3, 6)
    # the data iterator continues on the exact next batch
    assert len(ref["batches"]) == 6 and len(set(ref["batches"])) == 6
    assert list(first["batches"]) + list(resumed["batches"]) == list(ref["batches"])
    assert resumed["data_state"] == ref["data_state"]
    params = [k for k in ref if k.startswith("param/")]
    assert len(params) > 20
    # after 3 steps the parameters differ from the end (else the comparison below would prove nothing) ...
    assert sum(not np.allclose(first[k], ref[k], rtol=0, atol=1e-5) for k in params) > len(params) // 2
    # ... and the resumed run ends where the uninterrupted one does (same ops, same order: float32 exact
    # up to the non-associativity XLA may introduce between processes; allow 1e-6)
    for k in params:
        np.testing.assert_allclose(resumed[k], ref[k], rtol=0, atol=1e-6, err_msg=k)
