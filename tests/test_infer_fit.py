"""`headsup fit`: per-subject fitting of a capture from the template, or refined from a trained model's
prediction (`--init`), written as a head file."""
import jax.numpy as jnp
import numpy as np
import pytest

from data_helpers import make_capture
from infer_helpers import H, W, shared_workdir

from headsup_jax.cli import main
from headsup_jax.data.capture import load_capture
from headsup_jax.eval.fit import FitSettings, SubjectFitter
from headsup_jax.export.checks import load_gaussians
from headsup_jax.infer.fit import fit_capture
from headsup_jax.infer.reconstruct import forward, load_views
from headsup_jax.infer.trained import load_trained
from headsup_jax.train.config import size_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return load_trained(shared_workdir(tmp_path_factory))


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("fit") / "subject"
    make_capture(path, n=6, width=W, height=H, seed=11)
    return path


def test_refinement_starts_from_the_models_prediction_and_lowers_the_loss(trained, capture):
    """The first recorded loss is the objective at the model's own UV map for those views (not at the
    template's zeros), and 30 Adam steps lower it."""
    result = fit_capture(capture, trained=trained, views=[0, 2, 4], steps=30)
    assert result.start == "model" and result.input_ids == ["cam00", "cam02", "cam04"]
    views = load_views(load_capture(capture), [0, 2, 4], *trained.image_size)
    images = np.stack([v.image for v in views])
    masks = np.stack([v.mask for v in views])
    K = np.stack([v.camera.K for v in views])
    w2c = np.stack([v.camera.world_to_cam for v in views])
    _, aux = forward(trained.model, with_aux=True)(images[None], K[None], w2c[None])
    fitter = SubjectFitter(trained.template.vertices, trained.atlas, trained.config, FitSettings())
    args = [jnp.asarray(a, jnp.float32) for a in (images, masks, K, w2c)]
    at_model = float(fitter._objective(aux["uv_map"][0], *args))
    at_template = float(fitter._objective(jnp.zeros_like(aux["uv_map"][0]), *args))
    assert abs(result.losses[0] - at_model) <= 1e-4 * at_model
    assert abs(at_model - at_template) > 1e-4 * at_template  # the two starts are distinguishable
    assert result.losses[-1] < result.losses[0]
    assert result.head.count == trained.model.num_gaussians


def test_fit_from_the_template_without_masks(tmp_path, capture):
    """A capture without masks is fitted on whole frames from the config's template: the loss falls."""
    bare = tmp_path / "bare"
    make_capture(bare, n=4, width=W, height=H, seed=3, masks=False)
    config = size_config("tiny")
    config.template, config.atlas_resolution = "procedural", 32
    result = fit_capture(bare, config=config, steps=40, height=H)
    assert result.start == "template" and len(result.input_ids) == 4
    assert result.losses[-1] < 0.8 * result.losses[0]


def test_fit_command_writes_the_refined_head(tmp_path, capsys, trained, capture):
    out = tmp_path / "head.ply"
    code = main(["fit", "--capture", str(capture), "--init", str(trained.workdir), "--steps", "5",
                 "--num-views", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert load_gaussians(str(out)).count == trained.model.num_gaussians
    assert "fitted to 3 views" in printed and "from the model" in printed and "in 5 steps" in printed


def test_fit_command_rejects_bad_views_before_loading_anything(tmp_path, capsys, capture):
    code = main(["fit", "--capture", str(capture), "--views", "0,99", "--out", str(tmp_path / "x.ply")])
    assert code == 2 and "--views 99" in capsys.readouterr().err
    assert not (tmp_path / "x.ply").exists()
