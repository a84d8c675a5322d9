"""`headsup data inspect`: contact sheets of capture trees and TFDS folders; frusta geometry."""

import numpy as np
from PIL import Image

from data_helpers import make_capture, tiny_cameras
from headsup_jax.cli import main
from headsup_jax.data.inspect import frustum_lines
from headsup_jax.data.tfds_builder import build_dataset


def test_frustum_corners_project_to_image_corners():
    cam = tiny_cameras(3, 32, 24)[2]
    seg = frustum_lines(cam.K, cam.world_to_cam, 32, 24, depth=0.3)
    centre = -cam.world_to_cam[:3, :3].T @ cam.world_to_cam[:3, 3]
    np.testing.assert_allclose(seg[:4, 0], np.broadcast_to(centre, (4, 3)), atol=1e-6)
    x = seg[:4, 1] @ cam.world_to_cam[:3, :3].T + cam.world_to_cam[:3, 3]
    np.testing.assert_allclose(x[:, 2], 0.3, atol=1e-6)
    uv = (x / x[:, 2:]) @ cam.K.T
    np.testing.assert_allclose(uv[:, :2], [[0, 0], [32, 0], [32, 24], [0, 24]], atol=1e-3)


def test_contact_sheet_from_captures_and_tfds(tmp_path, capsys):
    for i in range(3):
        make_capture(tmp_path / "caps" / f"s{i}", seed=i)
    assert main(["data", "inspect", str(tmp_path / "caps"), "--out", str(tmp_path / "a.png"), "--subjects", "2"]) == 0
    ds = build_dataset(tmp_path / "caps", tmp_path / "tfds", validation=0, test=0)
    assert main(["data", "inspect", str(ds), "--out", str(tmp_path / "b.png"), "--subjects", "3", "--views", "2"]) == 0
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert a.height < b.height and a.width > b.width  # 2 rows x 7 panels vs 3 rows x 3 panels
    assert np.asarray(a.convert("L")).std() > 10  # not blank
    assert "wrote" in capsys.readouterr().out
