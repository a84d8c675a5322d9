"""Resume: 6 steps in one run equal 3 steps + checkpoint + a new process resuming from the workdir alone
+ 3 steps: the same parameters and the same 6 batches, in order; also onto other device and process counts.

Runs `headsup_jax.train.loop.train` in subprocesses of tests/train_worker.py (the tiny config shrunk:
8 synthetic subjects, 32 x 24 images, 2 + 2 views, batch 8, checkpoint every 3 steps). The stopped run
uses `train(..., stop_at=3)` with the 6-step schedule, as a preempted job would. Each worker logs the
batches its loop consumed (subjects and a checksum of the input images) and restores the newest
checkpoint into a freshly built experiment.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from train_worker import BATCH, jax_cache, run_processes, run_worker  # noqa: F401  (jax_cache: a fixture)

SHARDED_ATOL = 2e-5  # another reduction order (sharded matmuls, psum over devices): see test_train_distributed


@pytest.fixture(scope="module")
def full(tmp_path_factory, jax_cache):
    """The uninterrupted 6-step run on one device (its workdir and saved arrays)."""
    workdir = tmp_path_factory.mktemp("full")
    log = run_worker(["loop", str(workdir / "out.npz"), "--workdir", str(workdir / "run")], jax_cache)
    # a first run says what the one-time data generation does and how long it will take
    assert "first run: generating 8 synthetic subjects" in log and "about" in log, log[-3000:]
    return workdir / "run", dict(np.load(workdir / "out.npz"))


def _part(tmp_path, full_run):
    part = tmp_path / "part"
    part.mkdir()
    (part / "data").symlink_to(full_run / "data")  # the same generated subjects, not generated twice
    return part


def _assert_params(got, ref, atol):
    params = [k for k in ref if k.startswith("param/")]
    assert len(params) > 20 and set(params) == {k for k in got if k.startswith("param/")}
    for k in params:
        np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=atol, err_msg=k)


def test_resume_equals_uninterrupted(tmp_path, full, jax_cache):
    full_run, ref = full
    part = _part(tmp_path, full_run)
    run_worker(["loop", str(tmp_path / "first.npz"), "--workdir", str(part), "--stop_at", "3"], jax_cache)
    run_worker(["loop", str(tmp_path / "resumed.npz"), "--workdir", str(part)], jax_cache)
    first, resumed = (dict(np.load(tmp_path / f"{n}.npz")) for n in ("first", "resumed"))

    assert (int(ref["step"]), int(first["step"]), int(resumed["step"])) == (6, 3, 6)
    # the data iterator continues on the exact next batch
    assert len(ref["batches"]) == 6 and len(set(ref["batches"])) == 6
    assert list(first["batches"]) + list(resumed["batches"]) == list(ref["batches"])
    assert resumed["data_state"] == ref["data_state"]
    params = [k for k in ref if k.startswith("param/")]
    # after 3 steps the parameters differ from the end (else the comparison below would prove nothing) ...
    assert sum(not np.allclose(first[k], ref[k], rtol=0, atol=1e-5) for k in params) > len(params) // 2
    # ... and the resumed run ends where the uninterrupted one does (same ops, same order: float32 exact
    # up to the non-associativity XLA may introduce between processes; allow 1e-6)
    _assert_params(resumed, ref, 1e-6)
    # the run recorded which template "auto" resolved to, and its hash
    assert json.loads((part / "config.json").read_text())["template"] == "procedural"
    assert json.loads((part / "template.json").read_text())["template"] == "procedural"


def test_restore_from_eight_devices_onto_one(tmp_path, full, jax_cache):
    """3 steps FSDP-sharded over 8 fake devices, resumed on 1 device: the same batches and parameters."""
    full_run, ref = full
    part = _part(tmp_path, full_run)
    run_worker(["loop", str(tmp_path / "first.npz"), "--workdir", str(part), "--stop_at", "3", "--mesh", "1,8,1"],
               jax_cache, devices=8)
    run_worker(["loop", str(tmp_path / "resumed.npz"), "--workdir", str(part)], jax_cache)
    first, resumed = (dict(np.load(tmp_path / f"{n}.npz")) for n in ("first", "resumed"))
    assert (int(first["step"]), int(resumed["step"])) == (3, 6)
    assert list(first["batches"]) + list(resumed["batches"]) == list(ref["batches"])  # one process: same data
    _assert_params(resumed, ref, SHARDED_ATOL)


def test_two_process_fsdp_loop_with_image_logs_resumes_a_one_process_run(tmp_path, full, jax_cache):
    """`loop.train` itself on 2 local processes (gloo) with parameters FSDP-sharded over both and held-out
    renders logged every step (evaluation over sharded state on every process), resuming a 1-process
    checkpoint: the data position is resharded (24 records read -> each process starts 12 records into
    its shard), with a warning, and the run finishes with both processes' data states saved."""
    full_run, ref = full
    part = _part(tmp_path, full_run)
    run_worker(["loop", str(tmp_path / "first.npz"), "--workdir", str(part), "--stop_at", "3"], jax_cache)
    logs = run_processes(["loop", str(tmp_path / "resumed.npz"), "--workdir", str(part), "--mesh", "1,2,1",
                          "--images_every", "1"], jax_cache)
    for log in logs:
        assert "saved by 1 process(es), this run has 2: resharding the data position" in log, log[-3000:]
    resumed = dict(np.load(tmp_path / "resumed.npz"))
    assert int(resumed["step"]) == 6 and int(resumed["process_count"]) == 2
    assert json.loads(str(resumed["data_state"]))["start"] == 3 * BATCH // 2
    states = sorted((part / "data_state" / "6").iterdir())
    assert [p.name for p in states] == ["process_0.json", "process_1.json"]
    # held-out renders were logged at steps 4, 5, 6 (TensorBoard events by process 0 only)
    from tensorboard_events import image_steps

    assert image_steps(part / "tensorboard", "validation/renders_vs_targets") == [4, 5, 6]
    # the run trained: parameters moved from the 1-process checkpoint at step 3
    first = dict(np.load(tmp_path / "first.npz"))
    params = [k for k in first if k.startswith("param/")]
    assert sum(not np.allclose(first[k], resumed[k], rtol=0, atol=1e-5) for k in params) > len(params) // 2
