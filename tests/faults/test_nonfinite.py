"""NaN injected into one batch (its first record's input images) of the real train loop, in subprocesses on
train_worker's shrunk tiny config: on_nonfinite="skip" drops that update (the parameters stay those of the
step before, exactly: here the initial ones), logs and counts it (the count carried through a resume); "raise" stops at that step naming it and the non-finite
quantities, before any checkpoint of it. Also: a finite loss with a non-finite gradient is caught."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tensorboard_events import scalars
from train_worker import ROOT, jax_cache, param_arrays, resume_config, worker_env  # noqa: F401  (a fixture)
from headsup_jax.train import loop
from headsup_jax.train.experiment import build_experiment

from faults.test_interrupted_training import WORKER


def run(workdir, out, cache, stop_at: int, **env) -> subprocess.CompletedProcess:
    env = dict(worker_env(cache), **{f"FAULT_{k.upper()}": str(v) for k, v in env.items()})
    return subprocess.run([sys.executable, str(WORKER), "loop", str(out), "--workdir", str(workdir),
                           "--stop_at", str(stop_at)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def params(path) -> dict:
    return {k: v for k, v in np.load(path).items() if k.startswith("param/")}


def test_a_nan_batch_is_skipped_and_counted_or_stops_the_run(tmp_path, jax_cache, linked_data):
    skip = linked_data(tmp_path / "skip")
    skipped = run(skip, tmp_path / "skip.npz", jax_cache, 1, on_nonfinite="skip", nan_batch=1)
    log = skipped.stdout + skipped.stderr
    assert skipped.returncode == 0, log[-4000:]
    assert "step 1: loss is nan, grad_norm is nan: its update was skipped" in log
    experiment = build_experiment(resume_config())
    init = param_arrays(experiment, experiment.state)  # what step 1 started from
    after = params(tmp_path / "skip.npz")
    assert int(np.load(tmp_path / "skip.npz")["step"]) == 1 and len(init) > 20 and init.keys() == after.keys()
    for k in init:  # the update was dropped (applied, even at the warm-up's lr 0, NaN would spread)
        assert np.isfinite(after[k]).all(), k
        np.testing.assert_array_equal(after[k], init[k], err_msg=k)
    assert scalars(skip / "tensorboard", "skipped_updates") == {1: 1.0}
    resumed = run(skip, tmp_path / "resumed.npz", jax_cache, 2, on_nonfinite="skip")  # from step 1's checkpoint
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert scalars(skip / "tensorboard", "skipped_updates") == {1: 1.0, 2: 1.0}  # the count survives a resume

    stop = linked_data(tmp_path / "raise")
    failed = run(stop, tmp_path / "raised.npz", jax_cache, 1, on_nonfinite="raise", nan_batch=1)
    log = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "NonFiniteLoss: step 1: loss is nan, grad_norm is nan" in log, log[-4000:]
    assert "last good checkpoint: None" in log
    assert not (stop / "checkpoints").exists() or not any((stop / "checkpoints").iterdir())


def test_a_finite_loss_with_a_non_finite_gradient_is_caught():
    config = resume_config()
    pending = [(1, {"loss": np.float32(1.0), "grad_norm": np.float32(2.0)}),
               (2, {"loss": np.float32(1.0), "grad_norm": np.float32(np.inf)})]
    with pytest.raises(loop.NonFiniteLoss, match=r"^step 2: grad_norm is inf \("):
        loop._check_finite(pending, config, type("C", (), {"latest_step": 1})())
    config.on_nonfinite = "skip"
    assert loop._check_finite(pending, config, None) == 1
