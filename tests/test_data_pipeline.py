"""Grain pipeline: batch layout, K follows crop/resize, determinism, exact resume (also with worker
processes), bad records skipped/counted or fail-fast, disjoint shards over two JAX processes."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import grain
import numpy as np
import pytest
from PIL import Image

from data_helpers import make_capture
from headsup_jax.data.capture import CaptureError
from headsup_jax.data.pipeline import PipelineConfig, batch_cameras, make_pipeline
from headsup_jax.data.tfds_builder import build_dataset, dataset_metadata, load_source
from headsup_jax.data.views import ViewSpec, crop_resize

ONE_SHARD = grain.sharding.ShardOptions(0, 1)
CFG = PipelineConfig(batch_size=2, views=ViewSpec(num_inputs=3, num_targets=2, width=16, height=16))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("captures")
    for i in range(8):
        make_capture(root / f"s{i:02d}", n=6, seed=i, masks=i != 3)
    return build_dataset(root, tmp_path_factory.mktemp("tfds"), split_seed=0, validation=0.0, test=0.25)


def _records(dataset):
    src = load_source(dataset, "train")
    return [src[i] for i in range(len(src))]


def test_batch_layout_and_ranges(dataset):
    batch = next(make_pipeline(load_source(dataset, "train"), CFG, seed=0, shard_options=ONE_SHARD))
    assert batch["inputs"].shape == (2, 3, 16, 16, 3) and batch["inputs"].dtype == np.float32
    assert batch["targets"].shape == (2, 2, 16, 16, 3) and batch["target_masks"].shape == (2, 2, 16, 16)
    assert batch["input_cameras"]["K"].shape == (2, 3, 3, 3) and batch["input_cameras"]["world_to_cam"].shape == (2, 3, 4, 4)
    assert batch["target_cameras"]["K"].shape == (2, 2, 3, 3)
    for key in ("inputs", "targets", "target_masks"):
        assert 0.0 <= batch[key].min() and batch[key].max() <= 1.0 and batch[key].max() > 0.5
    for b in range(2):  # disjoint by default: no supervision camera is an input camera
        ins, outs = batch["input_cameras"]["world_to_cam"][b], batch["target_cameras"]["world_to_cam"][b]
        assert not any(np.array_equal(i, o) for i in ins for o in outs)
    cams = batch_cameras(batch, "target")
    assert (cams.width, cams.height) == (16, 16) and cams.K.shape == (2, 2, 3, 3)


def test_crop_resize_moves_K_with_the_pixels():
    K = np.array([[40.0, 0, 31.0], [0, 40.0, 20.0], [0, 0, 1]], np.float32)
    img = np.zeros((48, 64), np.uint8)  # a 4x4 bright block whose centre is at continuous (41, 13)
    img[11:15, 39:43] = 255
    X = np.array([(41 - 31) / 40, (13 - 20) / 40, 1.0])  # the 3D point seen at that pixel
    out, K2 = crop_resize(Image.fromarray(img), K, 20, 20)  # crops 48x48 at x0 = 8, then scales by 20/48
    u, v = (K2 @ X)[:2]
    ys, xs = np.nonzero(out > 0.5 * out.max())
    w = out[ys, xs].astype(float)
    assert abs(np.average(xs + 0.5, weights=w) - u) < 0.3 and abs(np.average(ys + 0.5, weights=w) - v) < 0.3
    np.testing.assert_allclose(K2[0, 0], 40 * 20 / 48, rtol=1e-6)


def test_deterministic_for_a_seed(dataset):
    src = load_source(dataset, "train")
    run = lambda seed: [next(it) for it in [make_pipeline(src, CFG, seed, ONE_SHARD)] for _ in range(4)]
    a, b, c = run(3), run(3), run(4)
    for x, y in zip(a, b):
        assert all(np.array_equal(x[k], y[k]) for k in ("inputs", "targets", "target_masks", "subject"))
    assert not all(np.array_equal(x["inputs"], z["inputs"]) for x, z in zip(a, c))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_gives_the_exact_next_batches(dataset, workers):
    cfg = PipelineConfig(batch_size=2, views=CFG.views, worker_count=workers)
    src = load_source(dataset, "train")
    it = make_pipeline(src, cfg, seed=1, shard_options=ONE_SHARD)
    for _ in range(3):  # past the end of the first epoch (6 records)
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # JSON-able, as a checkpoint stores it
    expected = [next(it) for _ in range(3)]
    resumed = make_pipeline(src, cfg, seed=1, shard_options=ONE_SHARD)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert got["subject"].tolist() == want["subject"].tolist()
        assert np.array_equal(got["inputs"], want["inputs"]) and np.array_equal(got["target_cameras"]["K"], want["target_cameras"]["K"])
    assert resumed.metrics == it.metrics == {"batches": 6, "examples": 12, "skipped": 0}


def _corrupt(records):
    bad = [dict(r) for r in records]
    bad[1]["images"] = bad[1]["images"].copy()
    bad[1]["images"][:] = [im[: len(im) // 2] for im in bad[1]["images"]]  # truncated PNGs
    bad[2]["K"] = bad[2]["K"].copy()
    bad[2]["K"][:, 0, 2] = np.nan
    bad[4]["world_to_cam"] = bad[4]["world_to_cam"] * np.array([1, 1, 2, 1], np.float32)  # not rigid
    return bad, {bad[i]["subject"].decode() for i in (1, 2, 4)}


def test_bad_records_are_skipped_and_counted(dataset):
    bad, bad_subjects = _corrupt(_records(dataset))
    cfg = PipelineConfig(batch_size=1, views=CFG.views, num_epochs=1, shuffle=False)
    it = make_pipeline(bad, cfg, seed=0, shard_options=ONE_SHARD)
    subjects = [b["subject"][0].decode() for b in it]
    assert len(subjects) == 3 and not set(subjects) & bad_subjects
    assert it.metrics == {"batches": 3, "examples": 3, "skipped": 3}
    assert {p.subject for p in it.recent_problems} == bad_subjects
    assert {p.field.split(".")[-1] for p in it.recent_problems} == {"data", "K", "world_to_cam"}


def test_skewed_K_is_skipped_and_counted(dataset):
    bad = [dict(r) for r in _records(dataset)]
    bad[0]["K"] = bad[0]["K"].copy()
    bad[0]["K"][:, 0, 1] = 0.5  # skew: the projection would ignore it
    cfg = PipelineConfig(batch_size=1, views=CFG.views, num_epochs=1, shuffle=False)
    it = make_pipeline(bad, cfg, seed=0, shard_options=ONE_SHARD)
    subjects = [b["subject"][0].decode() for b in it]
    assert len(subjects) == len(bad) - 1 and bad[0]["subject"].decode() not in subjects
    assert it.metrics["skipped"] == 1
    (problem,) = it.recent_problems
    assert problem.subject == bad[0]["subject"].decode() and problem.field.endswith(".K") and "skew" in problem.message


def test_fail_fast_names_subject_and_file(dataset):
    bad, _ = _corrupt(_records(dataset))
    cfg = PipelineConfig(batch_size=1, views=CFG.views, shuffle=False, fail_fast=True)
    it = make_pipeline(bad, cfg, seed=0, shard_options=ONE_SHARD)
    next(it)
    with pytest.raises(CaptureError, match=rf"subject '{bad[1]['subject'].decode()}', file images/cam0\d, field data"):
        next(it)
    too_few = PipelineConfig(batch_size=1, views=ViewSpec(num_inputs=4, num_targets=3), fail_fast=True)
    with pytest.raises(CaptureError, match="6 cameras cannot give 4 input"):
        next(make_pipeline(bad, too_few, seed=0, shard_options=ONE_SHARD))
    with pytest.raises(RuntimeError, match="every record of this shard is bad"):
        next(make_pipeline(bad[1:3], PipelineConfig(batch_size=1, views=CFG.views), 0, ONE_SHARD))


def test_input_bucket_varies_N_per_batch(dataset):
    cfg = PipelineConfig(batch_size=2, views=ViewSpec(4, 2, 8, 8), input_bucket=(1, 2, 4))
    it = make_pipeline(load_source(dataset, "train"), cfg, seed=0, shard_options=ONE_SHARD)
    sizes = set()
    for _ in range(12):
        b = next(it)
        assert b["inputs"].shape[1] == b["input_cameras"]["K"].shape[1] == b["input_cameras"]["world_to_cam"].shape[1]
        sizes.add(b["inputs"].shape[1])
    assert sizes == {1, 2, 4}


WORKER = textwrap.dedent("""
    import json, sys
    import jax
    jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", 2, int(sys.argv[2]))
    from headsup_jax.data.pipeline import PipelineConfig, make_pipeline
    from headsup_jax.data.tfds_builder import load_source
    from headsup_jax.data.views import ViewSpec
    cfg = PipelineConfig(batch_size=1, views=ViewSpec(1, 1, 8, 8), num_epochs=1)
    it = make_pipeline(load_source(sys.argv[3], "train"), cfg, seed=0)  # default: ShardByJaxProcess
    print(json.dumps([b["subject"][0].decode() for b in it]))
""")


def test_two_jax_processes_get_disjoint_shards_covering_the_split(dataset):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(i), str(dataset)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    shards = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    train = dataset_metadata(dataset)["subjects"]["train"]
    assert len(shards[0]) == len(shards[1]) == 3 and not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(train)


def test_unmasked_subjects_are_refused_without_the_background_model(dataset):
    from headsup_jax.train.config import size_config
    from headsup_jax.train.data import model_inputs, require_masks

    config = size_config("tiny")
    cfg = PipelineConfig(batch_size=6, views=CFG.views, num_epochs=1, shuffle=False)
    batch = next(make_pipeline(load_source(dataset, "train"), cfg, seed=0, shard_options=ONE_SHARD))
    assert model_inputs(batch)["has_masks"].tolist() == [s != b"s03" for s in batch["subject"]]
    with pytest.raises(ValueError, match=r"subjects \['s03'\] have no masks.*config\.background\.enabled=True"):
        require_masks(batch, config)
    require_masks({k: v[batch["subject"] != b"s03"] for k, v in batch.items() if k in ("subject", "has_masks")},
                  config)  # the masked subjects alone pass
    config.background.enabled = True
    require_masks(batch, config)  # the background model explains the unmasked frames


def test_captures_without_masks_get_full_masks(dataset):
    cfg = PipelineConfig(batch_size=1, views=CFG.views, num_epochs=1, shuffle=False)
    seen = {}
    for b in make_pipeline(load_source(dataset, "train"), cfg, seed=0, shard_options=ONE_SHARD):
        seen[b["subject"][0].decode()] = (bool(b["has_masks"][0]), b["target_masks"][0])
    assert seen["s03"][0] is False and (seen["s03"][1] == 1).all()  # s03 (train) was written without masks/
    masked = [m for name, (has, m) in seen.items() if name != "s03"]
    assert all(seen[n][0] for n in seen if n != "s03") and all(0 < m.mean() < 1 for m in masked)
