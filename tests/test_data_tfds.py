"""TFDS builder: ArrayRecord round trip, subject-level splits recorded in the info, bad captures."""
import numpy as np
import pytest

from data_helpers import make_capture
from headsup_jax.data.capture import CaptureError, load_capture
from headsup_jax.data.io import decode_image
from headsup_jax.data.tfds_builder import build_dataset, dataset_metadata, load_source, split_subjects


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("captures")
    for i in range(10):
        make_capture(root / f"s{i:02d}", seed=i, masks=i % 2 == 0, blendshapes={"jawOpen": i / 10})
    return root, build_dataset(root, tmp_path_factory.mktemp("tfds"), split_seed=1, validation=0.2, test=0.2)


def test_round_trip_every_subject(built):
    root, ds = built
    seen = {}
    for split in ("train", "validation", "test"):
        source = load_source(ds, split)
        for i in range(len(source)):
            ex = source[i]
            seen[ex["subject"].decode()] = split
            cap = load_capture(root / ex["subject"].decode())
            assert [c.decode() for c in ex["camera_ids"]] == [c.id for c in cap.cameras]
            for k, cam in enumerate(cap.cameras):
                assert ex["images"][k] == cap.image_files[cam.id].read_bytes()
                np.testing.assert_array_equal(ex["K"][k], cam.K)
                np.testing.assert_array_equal(ex["world_to_cam"][k], cam.world_to_cam)
                assert (ex["width"][k], ex["height"][k]) == (32, 24)
                assert ex["masks"][k] == (cap.mask_files[cam.id].read_bytes() if cap.mask_files else b"")
            assert decode_image(ex["images"][0])[0, 0].tolist() == [int(ex["subject"][1:]), 0, 7]
            assert ex["blendshapes"].shape == (52,) and ex["blendshapes"].max() == pytest.approx(cap.blendshapes["jawOpen"])
    assert sorted(seen) == [f"s{i:02d}" for i in range(10)]


def test_splits_hold_out_identities_and_are_recorded(built):
    _, ds = built
    meta = dataset_metadata(ds)
    subjects = meta["subjects"]
    assert meta["split_seed"] == 1 and subjects == split_subjects([f"s{i:02d}" for i in range(10)], 1, 0.2, 0.2)
    assert len(subjects["test"]) == len(subjects["validation"]) == 2 and len(subjects["train"]) == 6
    train = {load_source(ds, "train")[i]["subject"].decode() for i in range(6)}
    assert train == set(subjects["train"])
    assert not train & (set(subjects["test"]) | set(subjects["validation"]))


def test_split_subjects_seeded():
    names = [f"p{i}" for i in range(100)]
    a, b, c = split_subjects(names, 0), split_subjects(names[::-1], 0), split_subjects(names, 1)
    assert a == b and a != c
    assert sorted(a["train"] + a["validation"] + a["test"]) == sorted(names) and len(a["test"]) == 10
    with pytest.raises(ValueError, match="none for training"):
        split_subjects(["x", "y"], 0, 0.5, 0.5)


def test_bad_capture_fails_build_or_is_skipped(tmp_path):
    for i in range(4):
        make_capture(tmp_path / "caps" / f"s{i}", seed=i)
    (tmp_path / "caps" / "s2" / "images" / "cam01.png").unlink()
    with pytest.raises(CaptureError, match=r"subject 's2', file images/cam01\.\*"):
        build_dataset(tmp_path / "caps", tmp_path / "out", validation=0, test=0.25)
    ds = build_dataset(tmp_path / "caps", tmp_path / "out2", validation=0, test=0.25, skip_invalid=True)
    meta = dataset_metadata(ds)
    assert [s["subject"] for s in meta["skipped"]] == ["s2"] and "missing image" in meta["skipped"][0]["problem"]
    assert "s2" not in meta["subjects"]["train"] + meta["subjects"]["test"]
