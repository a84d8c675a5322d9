"""Bad input to `headsup train`: wrongly typed or unknown config keys, a workdir that cannot be written, a workdir
holding another config's run, a checkpoint of another model: a one-line error, exit 2 (or, for the loop
itself, the InputError the command prints as that line) and nothing written. (A missing config file and a
misspelt key: tests/test_cli.py.)"""
from __future__ import annotations

import json
import types

import pytest
from flax import nnx

from faults.fault_worker import small_state
from test_cli import CONFIG, _headsup
from train_worker import resume_config
from headsup_jax.train import loop
from headsup_jax.train.checkpoint import Checkpointer, CheckpointError
from headsup_jax.train.config import size_config
from headsup_jax.train.workdir import _json, resolve_template


def files(folder) -> dict:
    """{relative path: bytes} of every file under `folder` (and its folders, as None)."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def one_line_error(rc, out, err) -> str:
    assert rc == 2 and out == "" and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("flag, message", [
    ("--config.optim.lr=fast", "flag --config.optim.lr=fast: could not convert string to float: 'fast'"),
    ("--config.data.batch_size=2.5", "flag --config.data.batch_size=2.5: invalid literal for int() with base 10: '2.5'"),
    ("--config.no_such_key=1", "--config: no field 'no_such_key'"),
])
def test_wrong_types_and_unknown_keys_are_one_line(tmp_path, flag, message):
    line = one_line_error(*_headsup("train", f"--config={CONFIG}:tiny", flag, "--workdir=run", cwd=tmp_path))
    assert line.startswith(f"headsup: error: {message}"), line
    assert list(tmp_path.iterdir()) == []


def test_a_workdir_under_a_file_is_one_line_and_nothing_written(tmp_path):
    (tmp_path / "notes").write_text("not a folder")
    before = files(tmp_path)
    line = one_line_error(*_headsup("train", f"--config={CONFIG}:tiny", "--workdir=notes/run", cwd=tmp_path,
                                    JAX_PLATFORMS="cpu"))
    assert line == f"headsup: error: --workdir notes/run: {tmp_path / 'notes'} is a file, not a folder"
    assert files(tmp_path) == before


def test_a_workdir_of_another_configs_run_is_one_line_and_nothing_written(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "3").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(_json(resolve_template(size_config("s")))))
    before = files(tmp_path)
    line = one_line_error(*_headsup("train", f"--config={CONFIG}:tiny", "--workdir=run", cwd=tmp_path,
                                    JAX_PLATFORMS="cpu"))
    assert line.startswith("headsup: error: run/config.json: this workdir holds a run of another model; "
                           "differing keys: ") and "model.dim: 256 -> 64" in line, line
    assert files(tmp_path) == before


def test_a_checkpoint_of_another_model_size_is_refused_before_the_run_writes(tmp_path, monkeypatch):
    """No config.json to compare (a workdir of copied checkpoints): the loop's restore refuses the checkpoint
    before the run writes its records (config.json, template.json, data). The experiment is a stand-in
    whose state has another layer size (a real experiment also writes its atlas cache, a cache)."""
    ckpt = Checkpointer(tmp_path, every=3, keep=3)
    ckpt.save(3, small_state(3), {"at": 3})
    ckpt.close()
    before = files(tmp_path)
    other = types.SimpleNamespace(state=nnx.state(nnx.Linear(64, 16, rngs=nnx.Rngs(0))))  # saved: 64 -> 32
    monkeypatch.setattr(loop, "build_experiment", lambda *_: other)
    with pytest.raises(CheckpointError, match=r"checkpoints/3: the checkpoint does not fit this model"):
        loop.train(resume_config(), tmp_path, progress=False)
    assert files(tmp_path) == before
