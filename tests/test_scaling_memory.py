"""`headsup plan-memory`: the tiny config planned on 2 fake CPU devices (a subprocess of the CLI, which starts its
own subprocess with XLA_FLAGS), checked against an independent count of the parameters' per-device bytes, and
its argument errors."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from train_worker import jax_cache  # noqa: F401  (a fixture: the shared persistent compilation cache)

TINY = "configs/headsup.py:tiny"
GIB = 2**30


def plan_memory_cli(*args, cache=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if cache:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
    return subprocess.run([sys.executable, "-m", "headsup_jax.cli", "plan-memory", *args], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory, jax_cache):
    """The tiny plan on 1 x 2 x 1 devices (batch 4) with a limit below it: (completed process, plan dict)."""
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    r = plan_memory_cli("--config", TINY, "--devices", "2", "--mesh", "1x2x1", "--set", "template=procedural",
                        "--limit-gib", "0.001", "--json", str(out), cache=jax_cache)
    return r, json.loads(out.read_text())


def test_prints_the_table_and_exits_2_over_the_limit(tiny_plan):
    r, plan = tiny_plan
    assert r.returncode == 2, r.stderr
    for row in ("| mesh data x fsdp x tensor, devices | 1 x 2 x 1, 2 |", "| global batch (per device) | 4 (2) |",
                "| parameters (float32 shards, exact) |", "| optimizer state (shards, exact) |",
                "| activations and temporaries (temp, memory_analysis) |", "| renderer: fwd + bwd of 2 x 2 views",
                "| **total: temp + argument + output - alias** |", "| TPU v5p (459 TFLOP/s bf16) | 2 |"):
        assert row in r.stdout, row
    message = r.stderr.strip().splitlines()[-1]
    total = plan["memory"]["total"] / GIB
    assert message.startswith(f"headsup: error: {TINY} needs {total:.2f} GiB a device > --limit-gib 0.001 ")
    assert "on 2 devices, mesh 1x2x1, batch 4" in message


def test_parameter_bytes_equal_an_independent_count(tiny_plan):
    """Each float32 parameter with an even dimension is split in 2 by FSDP (no logical rule applies at
    tensor = 1), the others replicated; Adam's two moments are laid out like the parameters."""
    import jax
    import numpy as np
    from flax import nnx

    from headsup_jax.train.config import load_config
    from headsup_jax.train.experiment import new_model, template_and_atlas

    _, plan = tiny_plan
    config = load_config(TINY)
    config.template = "procedural"
    template, atlas = template_and_atlas(config)
    params = jax.tree.leaves(nnx.state(nnx.eval_shape(lambda: new_model(config, template, atlas)), nnx.Param))
    assert all(p.dtype == np.float32 for p in params)
    full = sum(math.prod(p.shape) * 4 for p in params)
    want = sum(math.prod(p.shape) * 4 // (2 if any(d % 2 == 0 for d in p.shape) else 1) for p in params)
    assert plan["params"] * 4 == full
    assert plan["bytes"]["params"] == want and want < 0.6 * full
    assert 0 <= plan["bytes"]["optimizer"] - 2 * want <= 64  # + Adam's step counts
    mem = plan["memory"]
    assert mem["total"] == mem["temp"] + mem["argument"] + mem["output"] - mem["alias"]
    assert mem["argument"] >= plan["bytes"]["params"] + plan["bytes"]["optimizer"] + plan["bytes"]["batch"]
    assert 0 < plan["render_memory"]["temp"] and 0 < mem["temp"]


def test_projected_step_time_follows_the_flops(tiny_plan):
    r, plan = tiny_plan
    per_example = plan["model_flops_per_example"] + sum(plan["render_pairs"]) * 256 * 100
    assert plan["model_flops_per_example"] > 1e8
    seconds = plan["B"] * per_example / (2 * 989e12 * 0.4)
    assert f"| H100 SXM (989 TFLOP/s dense bf16) | 2 | {seconds:.3g} |" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--devices", "4", "--mesh", "1x3x1"], "--mesh 1x3x1: data x fsdp x tensor = 3 devices, not --devices 4"),
    (["--devices", "4", "--mesh", "2by2"], "--mesh '2by2': expected DATAxFSDPxTENSOR of positive integers"),
    (["--devices", "2", "--mesh", "1x2x1", "--batch", "3"], "--batch 3: the global batch must be a positive multiple"),
    (["--devices", "2", "--set", "model.no_such_key=1"], "--set 'model.no_such_key=1'"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    r = plan_memory_cli("--config", TINY, *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"headsup: error: {message}") and len(r.stderr.splitlines()) == 1, r.stderr
