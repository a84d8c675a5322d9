"""Corrupt records mixed into a shard, read through the train loop's iterator (`train.data.train_iterator`):
truncated image bytes, NaN cameras, a wrongly shaped K, per-camera fields of mismatched lengths. With
data.skip_bad_records each is skipped, logged by subject, file and field and counted (the loop logs the
count as `bad_records`), and the good records keep flowing; without it the first one stops the run,
named."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from data_helpers import make_capture
from train_worker import resume_config
from headsup_jax.data.capture import CaptureError
from headsup_jax.data.tfds_builder import build_dataset, load_source
from headsup_jax.train import data


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    for i in range(8):
        make_capture(root / "captures" / f"s{i}", n=4, seed=i)
    src = load_source(build_dataset(root / "captures", root / "tfds", validation=0.0, test=0.0), "train")
    return [src[i] for i in range(len(src))]


def corrupt(records) -> tuple[list[dict], dict[str, str]]:
    """4 of the 8 records damaged -> (records, {subject: the field its problem names})."""
    bad = [dict(r) for r in records]
    bad[1]["images"] = np.array([im[: len(im) // 3] for im in bad[1]["images"]], dtype=object)  # truncated PNGs
    bad[2]["world_to_cam"] = np.full_like(bad[2]["world_to_cam"], np.nan)
    bad[4]["K"] = bad[4]["K"][:, :2]  # [V, 2, 3]
    bad[6]["images"] = bad[6]["images"][:-1]  # one image fewer than cameras
    fields = {1: "data", 2: "world_to_cam", 4: "K", 6: "images"}
    return bad, {bad[i]["subject"].decode(): field for i, field in fields.items()}


def config(skip: bool):
    c = resume_config()
    c.data.batch_size, c.data.image_size, c.data.skip_bad_records = 2, (16, 12), skip
    return c


def test_corrupt_records_are_skipped_logged_and_counted(records, monkeypatch, caplog):
    bad, expected = corrupt(records)
    monkeypatch.setattr("headsup_jax.data.tfds_builder.load_source", lambda *_: bad)
    it = data.train_iterator(config(skip=True), "unused")
    with caplog.at_level(logging.WARNING, "headsup_jax"):
        batches = [next(it) for _ in range(8)]  # 16 good records: two epochs and more of the shard
    subjects = {s.decode() for b in batches for s in b["subject"]}
    assert subjects == {r["subject"].decode() for r in bad} - expected.keys()
    assert all(np.isfinite(b["input_cameras"]["world_to_cam"]).all() for b in batches)
    assert it.metrics["examples"] == 16 and it.metrics["skipped"] >= 8  # each bad record, once an epoch
    logged = {p.subject: p.field.split(".")[-1] for p in it.recent_problems}
    assert logged == expected
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping bad record: ")]
    assert len(lines) == it.metrics["skipped"]
    assert all(any(f"subject '{s}'" in line for line in lines) for s in expected)


def test_without_skip_bad_records_the_first_corrupt_record_stops_the_run_named(records, monkeypatch):
    bad, expected = corrupt(records)
    monkeypatch.setattr("headsup_jax.data.tfds_builder.load_source", lambda *_: bad)
    it = data.train_iterator(config(skip=False), "unused")
    with pytest.raises(CaptureError) as error:
        for _ in range(8):
            next(it)
    problem = error.value.problem
    assert problem.subject in expected and problem.field.split(".")[-1] == expected[problem.subject]
    assert str(error.value).startswith(f"subject '{problem.subject}', file ")
