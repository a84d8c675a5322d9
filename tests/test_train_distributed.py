"""Sharded and multi-host training equal the single-device step (issue 5: Sharding, Multi-host).

Every run is a subprocess of tests/train_worker.py (fake CPU devices need XLA_FLAGS before jax is
imported; several hosts are several processes joined by jax.distributed with gloo collectives). The
reference is one process on one device, 3 steps on the synthetic batches of seeds 0, 1, 2 (batch 8).
Step 1 has learning rate 0 (optax warm-up) and the decoder's head is zero-initialised (no gradient reaches
the layers before it until the head has moved, at step 2), so parameters are compared after step 3,
where every parameter has moved and depends on the gradients and Adam moments of every step before.
"""
from __future__ import annotations

import numpy as np
import pytest

from train_worker import jax_cache, run_processes, run_worker  # noqa: F401  (jax_cache: a fixture)

# float32 with a different reduction order (sharded matmuls, psum of gradients over the batch): loss
# differences are ~1e-7; parameters move by ~1e-3 per Adam step, sharding noise is far below that.
LOSS_RTOL = 2e-5
PARAM_ATOL = 2e-5


@pytest.fixture(scope="module")
def reference(tmp_path_factory, jax_cache):
    out = tmp_path_factory.mktemp("reference") / "ref.npz"
    run_worker(["steps", str(out), "--mesh", "1,1,1", "--steps", "3"], jax_cache, devices=1)
    return dict(np.load(out))


def _params(arrays: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _assert_params_close(got: dict, want: dict, before: dict | None = None) -> None:
    assert got.keys() == want.keys() and len(want) > 20
    moved = 0
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=PARAM_ATOL, err_msg=k)
        if before is not None:
            moved += float(np.abs(want[k] - before[k]).max()) > 10 * PARAM_ATOL
    if before is not None:  # the comparison means something only if the updates are much larger than the tolerance
        assert moved > len(want) // 2, f"only {moved} of {len(want)} parameters moved"


def test_sharded_step_equals_single_device(tmp_path, reference, jax_cache):
    """data x fsdp x tensor = 2 x 2 x 2 on 8 fake CPU devices: 3 steps equal the 1-device steps."""
    out = tmp_path / "mesh222.npz"
    run_worker(["steps", str(out), "--mesh", "2,2,2", "--steps", "3"], jax_cache, devices=8)
    got = dict(np.load(out))
    specs = dict(line.split(" ", 1) for line in got["specs"])
    fsdp = [k for k, v in specs.items() if "fsdp" in v]
    tensor = [k for k, v in specs.items() if "tensor" in v]
    assert len(fsdp) > len(specs) // 2, specs  # really sharded: FSDP over most parameters...
    # ...and attention heads and MLP hidden units over "tensor"
    assert any(k.endswith("q/kernel") for k in tensor) and any(k.endswith("mlp/up/kernel") for k in tensor), specs
    np.testing.assert_allclose(got["losses"], reference["losses"], rtol=LOSS_RTOL)
    _assert_params_close(_params(got, "step3/"), _params(reference, "step3/"), before=_params(reference, "step2/"))


def test_two_processes_equal_single_process(tmp_path, reference, jax_cache):
    """2 local processes (jax.distributed, gloo), each feeding half of the global batch: 3 steps and a
    checkpoint; losses and parameters equal the single-process run."""
    out = tmp_path / "multihost.npz"
    run_processes(["multihost", str(out), "--workdir", str(tmp_path / "run")], jax_cache, timeout=400)
    got = dict(np.load(out))
    np.testing.assert_allclose(got["losses"], reference["losses"], rtol=LOSS_RTOL)
    _assert_params_close(_params(got, "step3/"), _params(reference, "step3/"), before=_params(reference, "step2/"))
    # one checkpoint (step 3) with the data state of each process
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == ["3"], steps
    assert sorted(p.name for p in (tmp_path / "run" / "data_state" / "3").iterdir()) == \
        ["process_0.json", "process_1.json"]
