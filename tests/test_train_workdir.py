"""The run's folder and bookkeeping (issue 9): bucket workdirs kept whole (through epath on an in-memory
gs:// filesystem), atomic writes that leave nothing behind, the config and template a checkpoint belongs
to, the learning rate under gradient accumulation, non-finite losses found at read steps, held-out
splits checked at start, and evaluation in batches."""
from __future__ import annotations

import json
import logging
import math
import pathlib

import fsspec
import numpy as np
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem

from data_helpers import make_capture
from headsup_jax.errors import ConfigError
from headsup_jax.fileio import write_bytes_atomic
from headsup_jax.geometry import load_template
from headsup_jax.geometry.procedural import procedural_template
from headsup_jax.train import loop, workdir
from headsup_jax.data.tfds_builder import load_source
from headsup_jax.train.checkpoint import Checkpointer
from headsup_jax.train.config import size_config
from headsup_jax.train.data import dataset_dir, eval_batches, held_out_split, resume_position
from headsup_jax.train.optim import make_optimizer, step_learning_rate


class FakeGCS(MemoryFileSystem):
    """gs:// in memory: what epath's fsspec backend reaches for a bucket path."""

    protocol = ("gs", "gcs")
    store, pseudo_dirs, root_marker = {}, [""], ""

    def __init__(self, *args, finalize_on_close=None, **kwargs):
        super().__init__(*args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        for prefix in ("gs://", "gcs://"):
            path = path[len(prefix):] if path.startswith(prefix) else path
        return path.rstrip("/")


@pytest.fixture
def bucket(monkeypatch, tmp_path):
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs[:] = [""]
    for name in ("gs", "gcs"):
        fsspec.register_implementation(name, FakeGCS, clobber=True)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    monkeypatch.chdir(tmp_path)  # a mangled "gs:/bucket/..." would land here
    yield "gs://bucket/runs/r1"
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    assert not (tmp_path / "gs:").exists(), "a bucket path was written as a local folder"


def _tiny():
    config = size_config("tiny")
    config.template = "procedural"
    return config


def test_bucket_workdir_is_written_whole(bucket):
    assert str(pathlib.Path(bucket)) == "gs:/bucket/runs/r1"  # the defect: pathlib drops a slash
    config = _tiny()
    workdir.save_config(config, bucket)
    workdir.check_template(config, load_template("procedural"), bucket)
    assert {"bucket/runs/r1/config.json", "bucket/runs/r1/template.json"} <= set(FakeGCS.store)
    workdir.check_config(config, bucket)  # reads it back: the same config passes
    config.model.dim = 32
    with pytest.raises(ConfigError, match="model.dim: 64 -> 32"):
        workdir.check_config(config, bucket)

    # the synthetic dataset a bucket workdir points at, and the data states beside its checkpoints
    write_bytes_atomic(f"{bucket}/data/BUILT", b"gs://bucket/runs/r1/data/tfds/head_captures/1.0.0")
    assert str(dataset_dir(_tiny(), bucket)) == "gs://bucket/runs/r1/data/tfds/head_captures/1.0.0"
    ckpt = Checkpointer.__new__(Checkpointer)  # the Orbax manager writes through tensorstore: not faked here
    ckpt.root = epath.Path(bucket) / "checkpoints"
    write_bytes_atomic(ckpt._data_folder(3) / "process_0.json",
                       json.dumps({"process_count": 1, "process_index": 0, "data": {"start": 0, "read": 24}}).encode())
    assert "bucket/runs/r1/data_state/3/process_0.json" in FakeGCS.store
    assert ckpt.data_states(3)[0]["data"]["read"] == 24
    assert not [k for k in FakeGCS.store if k.endswith(".tmp")]


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_failed_atomic_write_keeps_the_old_file_and_no_temporary(where, tmp_path, monkeypatch, request):
    root = request.getfixturevalue("bucket") if where == "bucket" else str(tmp_path)
    path = epath.Path(root) / "config.json"
    write_bytes_atomic(path, b"old")

    def fail(self, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(path), "replace", fail)
    with pytest.raises(OSError, match="No space"):
        write_bytes_atomic(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]


def test_resuming_with_another_model_is_refused_and_other_changes_warn(tmp_path, caplog):
    config = _tiny()
    workdir.save_config(config, tmp_path)
    config.log.every = 5
    with caplog.at_level(logging.WARNING):
        workdir.check_config(config, tmp_path)
    assert "log.every (10 -> 5)" in caplog.text
    for key, value, shown in [("atlas_resolution", 32, "atlas_resolution: 64 -> 32"),
                              ("optim.grad_accum", 2, "optim.grad_accum: 1 -> 2"),
                              ("model.decoder_widths", (8, 8), "model.decoder_widths")]:
        changed = _tiny()
        changed.update_from_flattened_dict({key: value})
        with pytest.raises(ConfigError, match=shown):
            workdir.check_config(changed, tmp_path)


def test_auto_template_is_resolved_and_a_different_template_refused(tmp_path, monkeypatch):
    config = size_config("tiny")
    assert config.template == "auto"
    monkeypatch.setenv("HEADSUP_ICT_PATH", str(tmp_path / "absent.npz"))
    assert workdir.resolve_template(config).template == "procedural"
    (tmp_path / "present.npz").write_bytes(b"")
    monkeypatch.setenv("HEADSUP_ICT_PATH", str(tmp_path / "present.npz"))
    assert workdir.resolve_template(config).template == "ict"
    assert config.template == "auto"  # a copy is resolved, not the caller's config

    run = tmp_path / "run"
    procedural = workdir.resolve_template(_tiny())
    workdir.check_template(procedural, load_template("procedural"), run)
    workdir.check_template(procedural, load_template("procedural"), run)  # the same surface: fine
    other = procedural_template(num_rings=10, segments=12, num_identity=4)  # same name, other geometry
    with pytest.raises(ConfigError, match=r"template 'procedural' \(sha256 \w{12}\), this config loads 'procedural' \(sha256"):
        workdir.check_template(procedural, other, run)


def test_learning_rate_schedule_counts_updates_under_gradient_accumulation():
    """grad_accum=4 over 40 steps: 10 Adam updates whose learning rates follow warm-up + cosine over the
    10 updates. With a constant gradient of 1, each Adam update moves the parameter by its lr (eps aside)."""
    import jax.numpy as jnp

    optim = size_config("tiny").optim
    optim.update(total_steps=40, warmup_steps=8, grad_accum=4, lr=1e-2, clip_norm=0.0)
    tx = make_optimizer(optim)
    params, state, moves = jnp.zeros(()), None, []
    state = tx.init(params)
    for _ in range(optim.total_steps):
        updates, state = tx.update(jnp.ones(()), state, params)
        moves.append(-float(updates))
        params = params + updates
    updates_at = [s for s in range(1, 41) if s % 4 == 0]
    assert [s for s, m in enumerate(moves, 1) if m != 0] == updates_at[1:]  # update 0 has lr 0 (warm-up)
    for s in updates_at:
        np.testing.assert_allclose(moves[s - 1], step_learning_rate(optim, s), rtol=1e-5, atol=1e-9)
    # the cosine ends with the run: the last update's lr is the schedule's last, near 0 (was ~0.97 x peak)
    expected_last = 0.5 * optim.lr * (1 + math.cos(math.pi * (9 - 2) / (10 - 2)))
    np.testing.assert_allclose(step_learning_rate(optim, 40), expected_last, rtol=1e-5)
    assert step_learning_rate(optim, 40) < 0.05 * optim.lr


def test_non_finite_loss_is_found_at_the_read_step_and_named():
    config = _tiny()
    pending = [(1, {"loss": np.float32(1.0)}), (2, {"loss": np.float32(np.nan)}), (3, {"loss": np.float32(np.inf)})]
    with pytest.raises(loop.NonFiniteLoss, match="step 2: loss is nan"):
        loop._check_finite(pending, config, type("C", (), {"latest_step": None})())
    config.on_nonfinite = "skip"
    assert loop._check_finite(pending, config, None) == 2


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Built datasets of 5 tiny subjects: with validation and test splits, with test only, train only."""
    from headsup_jax.data.tfds_builder import build_dataset

    root = tmp_path_factory.mktemp("held_out")
    for k in range(5):
        make_capture(root / "captures" / f"s{k}", n=4, seed=k)
    return {name: build_dataset(root / "captures", root / name, validation=v, test=t)
            for name, v, t in [("both", 0.2, 0.2), ("test_only", 0.0, 0.2), ("train_only", 0.0, 0.0)]}


def test_held_out_split_is_checked_at_start(datasets, caplog):
    assert held_out_split(datasets["both"]) == "validation"
    assert held_out_split(datasets["test_only"]) == "test"
    assert held_out_split(datasets["train_only"]) is None
    config = _tiny()
    config.data.image_size, config.data.num_inputs = (24, 18), 2
    with caplog.at_level(logging.WARNING):
        assert loop._held_out_batches(config, datasets["train_only"]) == []
    assert "no validation or test split" in caplog.text
    batches = loop._held_out_batches(config, datasets["test_only"])
    assert [len(b["subject"]) for b in batches] == [1]


def test_data_source_must_be_a_built_dataset(datasets, tmp_path):
    config = _tiny()
    config.data.source = str(datasets["both"])
    assert dataset_dir(config, tmp_path) == epath.Path(datasets["both"])
    captures = pathlib.Path(datasets["both"]).parents[2] / "captures"  # the folders it was built from
    config.data.source = str(captures)
    with pytest.raises(ConfigError, match=rf"data.source={captures}: not a built TFDS dataset .*headsup data build"):
        dataset_dir(config, tmp_path)
    config.data.source = str(tmp_path / "nothing")
    with pytest.raises(ConfigError, match=r"no dataset_info.json\); give a built dataset.s version folder"):
        dataset_dir(config, tmp_path)


def test_evaluation_batches_cover_the_subjects_in_batches_of_the_batch_size(datasets):
    config = _tiny()
    config.data.image_size, config.data.num_inputs, config.data.batch_size = (24, 18), 2, 2
    source = load_source(datasets["both"], "train")
    batches = list(eval_batches(config, source, 16, num_targets=2))
    assert [len(b["subject"]) for b in batches] == [2, 1]
    whole = next(eval_batches(config, source, 16, num_targets=2, batch_size=16))
    for key in ("subject", "inputs", "targets"):
        np.testing.assert_array_equal(np.concatenate([b[key] for b in batches]), whole[key])


def test_data_position_is_resharded_onto_another_process_count(caplog):
    one = [{"process_count": 1, "process_index": 0, "data": {"start": 0, "read": 24, "grain": {}, "counts": {}}}]
    assert resume_position(one, "checkpoint 3") == (0, one[0]["data"])  # same count: its own exact state
    two = [{"process_count": 2, "process_index": i, "data": {"start": 5, "read": 7}} for i in range(2)]
    with caplog.at_level(logging.WARNING):
        assert resume_position(two, "checkpoint 3") == (24, None)  # 2 x (5 + 7) read, onto 1 process
    assert "saved by 2 process(es), this run has 1" in caplog.text
    with pytest.raises(FileNotFoundError, match="only the data states of processes \\[1\\]"):
        resume_position(two[1:], "checkpoint 3")
    with pytest.raises(FileNotFoundError, match="no data state"):
        resume_position([], "checkpoint 3")


def test_relative_workdir_checkpoints_under_the_current_folder(tmp_path, monkeypatch):
    """`headsup train --workdir outputs/demo` (as `make demo` runs it): a relative workdir is taken from the
    current folder; a checkpoint saved there restores."""
    from flax import nnx

    from headsup_jax.train.checkpoint import Checkpointer

    monkeypatch.chdir(tmp_path)
    state = nnx.State({"w": nnx.Param(np.arange(3.0, dtype=np.float32))})
    ckpt = Checkpointer("outputs/demo", every=1, keep=1)
    ckpt.save(1, state, {"read": 4})
    ckpt.wait()
    ckpt.close()
    assert (tmp_path / "outputs" / "demo" / "checkpoints" / "1").is_dir()
    ckpt = Checkpointer("outputs/demo", every=1, keep=1)
    step, restored = ckpt.restore(state)
    ckpt.close()
    assert step == 1 and np.array_equal(np.asarray(restored["w"][...]), [0.0, 1.0, 2.0])
