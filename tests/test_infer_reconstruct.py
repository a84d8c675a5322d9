"""`headsup reconstruct`: a capture -> the trained model's head Gaussians in a file, from exactly the views
asked for (resized with K following), any N, and the validator's one-line errors."""
import json

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from data_helpers import make_capture
from infer_helpers import H, W, shared_workdir

from headsup_jax.cli import main
from headsup_jax.data.capture import check_capture
from headsup_jax.export.ply import load_ply
from headsup_jax.infer.trained import load_trained


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return load_trained(shared_workdir(tmp_path_factory))


def model_head(trained, capture_dir, indices, scale=1.0):
    """The model's head Gaussians [G] on cameras `indices` of a capture, inputs built here from the files:
    images / 255 (resized by PIL when the capture is `scale` x the model's size), K[:2] / scale."""
    cams = json.loads((capture_dir / "cameras.json").read_text())["cameras"]
    images, Ks, w2cs = [], [], []
    for i in indices:
        im = Image.open(capture_dir / "images" / f"{cams[i]['id']}.png").convert("RGB")
        if scale != 1.0:
            im = im.resize((W, H), Image.Resampling.BILINEAR, box=(0, 0, *im.size))
        images.append(np.asarray(im, np.float32) / 255)
        K = np.asarray(cams[i]["K"], np.float64)
        K[:2] /= scale
        Ks.append(K.astype(np.float32))
        w2cs.append(np.asarray(cams[i]["world_to_cam"], np.float32))
    run = nnx.jit(lambda model, *inputs: model(*inputs)[0])
    gaussians = run(trained.model, np.stack(images)[None], np.stack(Ks)[None], np.stack(w2cs)[None])
    G = trained.model.num_gaussians
    return jax.tree.map(lambda x: np.asarray(x[0, :G], np.float32), gaussians)


def assert_gaussians_close(a, b, rtol=1e-5, atol=1e-6):
    for f in ("means", "quats", "scales", "opacities", "sh"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=rtol, atol=atol, err_msg=f)


def reconstruct_cli(capsys, trained, capture, out, *options):
    code = main(["reconstruct", "--workdir", str(trained.workdir), "--capture", str(capture), "--out", str(out),
                 *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_views_written_ply_equals_the_models_gaussians_of_those_cameras(tmp_path, capsys, trained):
    make_capture(tmp_path / "alice", n=6, width=W, height=H, seed=11)
    code, out, _ = reconstruct_cli(capsys, trained, tmp_path / "alice", tmp_path / "head.ply", "--views", "0,3,5")
    assert code == 0
    G = trained.model.num_gaussians
    assert f"{G} Gaussians from 3 views (cam00,cam03,cam05)" in out and " ms " in out
    head = load_ply(tmp_path / "head.ply")
    assert head.count == G  # the head only, no background Gaussians
    assert_gaussians_close(head, model_head(trained, tmp_path / "alice", [0, 3, 5]))
    other = model_head(trained, tmp_path / "alice", [1, 2, 4])
    assert np.abs(other.sh - head.sh).max() > 1e-3  # other cameras give other Gaussians: the views matter


def test_resized_capture_and_any_n(tmp_path, trained):
    """A capture at twice the model's size is resized with K halved; N from 1 to all 6 cameras."""
    from headsup_jax.infer.reconstruct import reconstruct

    make_capture(tmp_path / "big", n=6, width=2 * W, height=2 * H, seed=12)
    two = reconstruct(trained, tmp_path / "big", views=[4, 1])
    assert two.input_ids == ["cam04", "cam01"] and two.latency_s > 0
    assert_gaussians_close(two.head, model_head(trained, tmp_path / "big", [4, 1], 2.0), rtol=1e-4, atol=1e-5)
    one = reconstruct(trained, tmp_path / "big", num_views=1)
    assert one.input_ids == ["cam02"]  # the most frontal camera
    six = reconstruct(trained, tmp_path / "big", num_views=6)
    assert six.input_ids == ["cam02", "cam05", "cam00", "cam04", "cam01", "cam03"]
    for r in (one, six):
        assert r.head.count == trained.model.num_gaussians and np.all(np.isfinite(r.head.means))
    assert_gaussians_close(six.head, model_head(trained, tmp_path / "big", [2, 5, 0, 4, 1, 3], 2.0),
                           rtol=1e-4, atol=1e-5)


def test_num_views_spreads_over_the_rig(tmp_path):
    """Farthest-point order of the directions: most frontal (cam02 at -12 degrees azimuth), then the far
    end (cam05, +60), then the other end (cam00, -60), then the middles."""
    from headsup_jax.data.capture import load_capture
    from headsup_jax.infer.reconstruct import pick_views

    make_capture(tmp_path / "c", n=6, width=W, height=H)
    capture = load_capture(tmp_path / "c")
    assert pick_views(capture, num_views=6) == [2, 5, 0, 4, 1, 3]
    assert pick_views(capture, num_views=3) == [2, 5, 0]
    assert pick_views(capture, views=[3, 1]) == [3, 1]


def test_bad_capture_and_views_are_one_line_errors(tmp_path, capsys, trained):
    make_capture(tmp_path / "bob", n=4, width=W, height=H, seed=13)
    (tmp_path / "bob" / "images" / "cam01.png").unlink()
    problem = check_capture(tmp_path / "bob")[1][0]
    code, _, err = reconstruct_cli(capsys, trained, tmp_path / "bob", tmp_path / "x.ply")
    assert code == 2 and err == f"headsup: error: {problem}\n"
    assert "images/cam01.*" in err and not (tmp_path / "x.ply").exists()
    make_capture(tmp_path / "eve", n=4, width=W, height=H, seed=14)
    code, _, err = reconstruct_cli(capsys, trained, tmp_path / "eve", tmp_path / "x.ply", "--views", "0,4")
    assert code == 2 and err == "headsup: error: --views 4: capture 'eve' has 4 cameras (indices 0..3)\n"
    code, _, err = reconstruct_cli(capsys, trained, tmp_path / "eve", tmp_path / "x.ply", "--num-views", "5")
    assert code == 2 and err == "headsup: error: --num-views 5: capture 'eve' has 4 cameras\n"


def test_repeated_reconstructions_trace_the_model_once(tmp_path, trained, monkeypatch):
    """`headsup view`, `animate` and user loops reconstruct many captures with one TrainedModel: the jitted
    forward pass is kept on it, so the same shapes are traced (and compiled) once, not once per call."""
    from headsup_jax.infer.reconstruct import reconstruct

    traces = []
    merge = nnx.merge
    monkeypatch.setattr(nnx, "merge", lambda *a, **k: traces.append(1) or merge(*a, **k))  # runs when traced
    for seed in (21, 22):
        make_capture(tmp_path / f"c{seed}", n=3, width=W, height=H, seed=seed)
    first = reconstruct(trained, tmp_path / "c21", num_views=3)
    second = reconstruct(trained, tmp_path / "c22", num_views=3)
    assert len(traces) <= 1, traces  # 0 when an earlier test of this module traced these shapes already
    assert np.abs(first.head.sh - second.head.sh).max() > 1e-3  # each call saw its own images
