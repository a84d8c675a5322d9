"""Capture format: loading, every documented bad input, the `headsup data validate` report, atomic writes."""
import json

import numpy as np
import pytest

from data_helpers import make_capture
from headsup_jax.cli import main
from headsup_jax.data.capture import CaptureError, load_capture, validate_tree
from headsup_jax.data.io import encode_png, write_bytes_atomic


def test_load_round_trip(tmp_path):
    cams = make_capture(tmp_path / "alice", blendshapes={"jawOpen": 0.5})
    cap = load_capture(tmp_path / "alice")
    assert cap.subject == "alice" and [c.id for c in cap.cameras] == [c.id for c in cams]
    for a, b in zip(cap.cameras, cams):
        np.testing.assert_allclose(a.K, b.K, rtol=1e-6)
        np.testing.assert_allclose(a.world_to_cam, b.world_to_cam, atol=1e-6)
        assert (a.width, a.height) == (32, 24)
    assert set(cap.image_files) == set(cap.mask_files) == {c.id for c in cams}
    assert cap.blendshapes == {"jawOpen": 0.5}
    cam = cap.cameras[0].to_camera()
    assert (cam.width, cam.height) == (32, 24) and cam.K.shape == (3, 3)


def _edit_camera(path, index, key, value):
    obj = json.loads((path / "cameras.json").read_text())
    obj["cameras"][index][key] = value
    (path / "cameras.json").write_text(json.dumps(obj))


def _truncate(p):
    f = p / "images" / "cam01.png"
    f.write_bytes(f.read_bytes()[:60])


def _nan_K(p):
    obj = json.loads((p / "cameras.json").read_text())
    obj["cameras"][1]["K"][0][2] = float("nan")  # json writes NaN, Python reads it back
    (p / "cameras.json").write_text(json.dumps(obj))


def _shear(p):
    obj = json.loads((p / "cameras.json").read_text())
    obj["cameras"][1]["world_to_cam"][0][1] += 0.2
    (p / "cameras.json").write_text(json.dumps(obj))


BAD_INPUTS = {
    "truncated png": (_truncate, "images/cam01.png", "data", "unreadable"),
    "missing image": (lambda p: (p / "images" / "cam02.png").unlink(), "images/cam02.*", "file", "missing"),
    "extra image": (lambda p: (p / "images" / "cam99.png").write_bytes(encode_png(np.zeros((24, 32, 3), np.uint8))),
                    "images/cam99.png", "file", "extra"),
    "nan in K": (_nan_K, "cameras.json", "cameras[cam01].K", "non-finite"),
    "singular K": (lambda p: _edit_camera(p, 1, "K", [[0, 0, 16], [0, 0, 12], [0, 0, 1]]), "cameras.json",
                   "cameras[cam01].K", "singular"),
    "not rigid": (_shear, "cameras.json", "cameras[cam01].world_to_cam", "not rigid"),
    "size mismatch": (lambda p: (p / "images" / "cam03.png").write_bytes(encode_png(np.zeros((20, 32, 3), np.uint8))),
                      "images/cam03.png", "size", "32x20"),
    "mask size mismatch": (lambda p: (p / "masks" / "cam00.png").write_bytes(encode_png(np.zeros((24, 30), np.uint8))),
                           "masks/cam00.png", "size", "30x24"),
    "skew in K": (lambda p: _edit_camera(p, 1, "K", [[20, 0.5, 16], [0, 20, 12], [0, 0, 1]]), "cameras.json",
                  "cameras[cam01].K", "skew K[0][1] = 0.5"),
    "distortion": (lambda p: _edit_camera(p, 2, "distortion", [0.0, -0.1, 0.0, 0.0, 0.0]), "cameras.json",
                   "cameras[cam02].distortion", "non-zero coefficients"),
    "distortion not numbers": (lambda p: _edit_camera(p, 0, "distortion", ["k1"]), "cameras.json",
                               "cameras[cam00].distortion", "finite numbers"),
    "duplicate id": (lambda p: _edit_camera(p, 2, "id", "cam01"), "cameras.json", "cameras[2].id", "duplicate"),
    "unknown blendshape": (lambda p: (p / "blendshapes.json").write_text('{"jawOpen": 1.0, "smirkLeft": 0.2}'),
                           "blendshapes.json", "smirkLeft", "unknown blendshape"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_names_subject_file_field(tmp_path, name):
    corrupt, file, field, words = BAD_INPUTS[name]
    make_capture(tmp_path / "bob")
    corrupt(tmp_path / "bob")
    with pytest.raises(CaptureError) as err:
        load_capture(tmp_path / "bob")
    p = err.value.problem
    assert (p.subject, p.file, p.field) == ("bob", file, field), str(err.value)
    assert words in p.message and "'bob'" in str(err.value) and file in str(err.value)


def test_zero_distortion_is_accepted(tmp_path):
    make_capture(tmp_path / "zed")
    _edit_camera(tmp_path / "zed", 0, "distortion", [0.0, 0.0, 0.0, 0.0, 0.0])
    assert load_capture(tmp_path / "zed").cameras[0].distortion == (0.0,) * 5


def test_validate_cli_reports_per_subject(tmp_path, capsys):
    for i, s in enumerate(["a", "b", "c"]):
        make_capture(tmp_path / s, seed=i)
    (tmp_path / "b" / "images" / "cam00.png").unlink()
    _nan_K(tmp_path / "c")
    (tmp_path / "d").mkdir()  # a subject folder without cameras.json
    assert main(["data", "validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "OK   a" in out and "FAIL b (1 problems)" in out and "FAIL c" in out and "FAIL d" in out
    assert "images/cam00.* [file]: missing" in out and "cameras[cam01].K" in out
    report = {s: probs for s, _, probs in validate_tree(tmp_path)}
    assert report["a"] == [] and len(report["b"]) == 1


def test_validate_cli_ok_and_frames(tmp_path, capsys):
    make_capture(tmp_path / "a" / "neutral")
    make_capture(tmp_path / "a" / "smile", blendshapes={"mouthSmileLeft": 1.0})
    assert main(["data", "validate", str(tmp_path)]) == 0
    assert "OK   a/neutral" in capsys.readouterr().out
    assert main(["data", "validate", str(tmp_path / "empty_missing")]) == 1


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(TypeError):
        write_bytes_atomic(target, "not bytes")  # fails while writing the temporary file
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_jpeg_images_are_accepted(tmp_path):
    import io

    from PIL import Image

    make_capture(tmp_path / "j", masks=False)
    png = tmp_path / "j" / "images" / "cam02.png"
    buf = io.BytesIO()
    Image.open(png).save(buf, format="JPEG")
    png.unlink()
    (tmp_path / "j" / "images" / "cam02.jpg").write_bytes(buf.getvalue())
    cap = load_capture(tmp_path / "j")
    assert cap.image_files["cam02"].name == "cam02.jpg" and cap.mask_files is None
    (tmp_path / "j" / "images" / "cam02.png").write_bytes(encode_png(np.zeros((24, 32, 3), np.uint8)))
    with pytest.raises(CaptureError, match=r"images/cam02\.\*, field file: several files"):
        load_capture(tmp_path / "j")
