"""`headsup render views|compare|demo`: PNGs per rig/capture camera, a turntable mp4, and a capture's
held-out views beside ground truth with per-view PSNR equal to a NumPy PSNR of the grid's pixels."""
import json

import jax
import numpy as np
import pytest
from PIL import Image

from data_helpers import make_capture
from infer_helpers import H, W, shared_workdir

from headsup_jax.cli import main
from headsup_jax.export.ply import save_ply
from headsup_jax.geometry.rigs import make_rig
from headsup_jax.infer.render import LABEL_HEIGHT, rig_cameras
from headsup_jax.render import rasterize
from headsup_jax.render.scenes import head_scene


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("head") / "head.ply"
    save_ply(head_scene(0, 3000), path)
    return path


def render_reference(cam):
    g = head_scene(0, 3000)
    rgb = jax.jit(lambda c: rasterize(g, c, background=np.ones(3, np.float32), backend="xla").rgb)(cam)
    return np.round(np.clip(np.asarray(rgb), 0, 1) * 255).astype(np.uint8)


def png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_rig_pngs_count_size_and_pixels(tmp_path, head_file):
    assert main(["render", "views", str(head_file), "--cameras", "frontal16", "--resolution", "40",
                 "--out", str(tmp_path / "rig"), "--backend", "xla"]) == 0
    files = sorted((tmp_path / "rig").iterdir())
    assert [f.name for f in files] == [f"frontal16_{i:03d}.png" for i in range(16)]
    images = [png(f) for f in files]
    assert all(im.shape == (40, 30, 3) for im in images)
    ref = render_reference(make_rig("frontal16", 40)[7])
    assert (ref < 250).any(axis=-1).mean() > 0.1  # the head covers the middle of the frame
    np.testing.assert_array_equal(images[7], ref)


def test_capture_cameras(tmp_path, head_file):
    make_capture(tmp_path / "cap", n=3, width=W, height=H)
    assert main(["render", "views", str(head_file), "--cameras", str(tmp_path / "cap"), "--out",
                 str(tmp_path / "out"), "--backend", "xla"]) == 0
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["cam00.png", "cam01.png", "cam02.png"]
    assert png(tmp_path / "out" / "cam01.png").shape == (H, W, 3)


def test_turntable_mp4_frames(tmp_path, head_file):
    import imageio.v3 as iio

    out = tmp_path / "turn.mp4"
    assert main(["render", "views", str(head_file), "--cameras", "turntable", "--frames", "8", "--resolution",
                 "64", "--out", str(out), "--backend", "xla"]) == 0
    frames = np.stack(list(iio.imiter(out)))
    assert frames.shape == (8, 64, 48, 3)
    cams = rig_cameras("turntable", 64, 8)
    err = lambda a, b: np.abs(a.astype(float) - b.astype(float)).mean()
    refs = [render_reference(c) for c in cams]
    for k in range(8):  # each frame is its camera's render (up to H.264 loss), in order
        assert err(frames[k], refs[k]) < 3.0, k
        assert err(frames[k], refs[(k + 4) % 8]) > err(frames[k], refs[k]) + 1.0, k


def test_demo_still_renders(tmp_path):
    assert main(["render", "demo", "--out", str(tmp_path / "demo.png"), "--gaussians", "300",
                 "--resolution", "32", "--backend", "xla"]) == 0
    assert png(tmp_path / "demo.png").shape == (64, 128, 3)


def test_compare_grid_psnr_is_numpy_psnr_of_its_pixels(tmp_path, tmp_path_factory, capsys):
    workdir = shared_workdir(tmp_path_factory)
    make_capture(tmp_path / "alice", n=5, width=W, height=H, seed=21)
    out = tmp_path / "grid.png"
    assert main(["render", "compare", "--workdir", str(workdir), "--capture", str(tmp_path / "alice"),
                 "--views", "0,3", "--out", str(out)]) == 0
    report = json.loads((tmp_path / "grid.json").read_text())
    assert report["inputs"] == ["cam00", "cam03"] and list(report["psnr"]) == ["cam01", "cam02", "cam04"]
    grid = png(out)
    assert grid.shape == (2 * H + LABEL_HEIGHT, 3 * W, 3)
    stdout = capsys.readouterr().out
    for k, (cid, value) in enumerate(report["psnr"].items()):
        gt, render = grid[:H, k * W:(k + 1) * W], grid[H:2 * H, k * W:(k + 1) * W]
        # the ground truth: the capture's image composited with its mask on the loss background (white)
        image = png(tmp_path / "alice" / "images" / f"{cid}.png").astype(np.float64) / 255
        mask = np.asarray(Image.open(tmp_path / "alice" / "masks" / f"{cid}.png"), np.float64)[..., None] / 255
        np.testing.assert_array_equal(gt, np.round((image * mask + (1 - mask)) * 255).astype(np.uint8))
        mse = np.mean((render.astype(np.float64) / 255 - gt.astype(np.float64) / 255) ** 2)
        assert value == pytest.approx(10 * np.log10(1 / mse), abs=1e-4), cid
        assert f"{cid}: {value:.2f} dB" in stdout
