"""The fidelity protocol (issue 10): head-region metrics against float64 NumPy, per-subject fitting
(it reduces its loss and beats the mean-colour template on its own input views), the protocol's fixed
novel views across N, and `headsup eval --data` on data the run was not trained on."""
from __future__ import annotations

import json
import types

import jax
import numpy as np
import pytest
from scipy import ndimage

from data_helpers import make_capture
from headsup_jax.eval.fit import FitSettings, SubjectFitter
from headsup_jax.eval.metrics import HEAD_DILATION, fidelity_metrics, head_region
from headsup_jax.eval.references import fit_reference, mean_head_colour, template_baseline
from headsup_jax.train import metrics as train_metrics
from headsup_jax.train.metrics import gaussian_window
from headsup_jax.train.data import eval_batches, eval_source


def _numpy_ssim_map(x, y):
    """The 3DGS SSIM (11 x 11 Gaussian window, sigma 1.5, zero padding) in float64 with scipy. [H, W, 3] -> [H, W]"""
    g = gaussian_window().astype(np.float64)
    w = np.outer(g, g)
    blur = lambda a: ndimage.correlate(a, w, mode="constant", cval=0.0)  # noqa: E731
    out = []
    for c in range(3):
        a, b = x[..., c], y[..., c]
        mx, my = blur(a), blur(b)
        vx, vy, cov = blur(a * a) - mx ** 2, blur(b * b) - my ** 2, blur(a * b) - mx * my
        c1, c2 = train_metrics.SSIM_C1, train_metrics.SSIM_C2
        out.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return np.mean(out, 0)


def test_head_region_metrics_equal_numpy():
    rng = np.random.default_rng(3)
    H, W = 40, 30
    target = rng.random((H, W, 3))
    pred = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1)
    mask = np.zeros((H, W))
    mask[10:25, 8:20] = 1.0
    mask[12, 8] = 0.4  # below 0.5: not head
    region = ndimage.binary_dilation(mask > 0.5, structure=np.ones((2 * HEAD_DILATION + 1,) * 2))
    np.testing.assert_array_equal(np.asarray(head_region(mask)), region.astype(np.float32))

    got = {k: float(v) for k, v in fidelity_metrics(pred.astype(np.float32), target.astype(np.float32),
                                                      mask.astype(np.float32)).items()}
    err = (pred - target) ** 2
    np.testing.assert_allclose(got["psnr"], 10 * np.log10(1 / err.mean()), rtol=1e-5)
    np.testing.assert_allclose(got["psnr_head"], 10 * np.log10(1 / err[region].mean()), rtol=1e-5)
    ssim = _numpy_ssim_map(pred, target)
    np.testing.assert_allclose(got["ssim"], ssim.mean(), rtol=1e-4)
    np.testing.assert_allclose(got["ssim_head"], ssim[region].mean(), rtol=1e-4)
    assert abs(got["psnr_head"] - got["psnr"]) > 0.01  # the region changes the number


def test_head_region_lpips_weights_the_distance_maps():
    from headsup_jax.model.lpips import LPIPS, weight_shapes

    rng = np.random.default_rng(0)
    net = LPIPS({k: np.abs(rng.normal(0, 0.1, s)).astype(np.float32) for k, s in weight_shapes().items()})
    target = rng.random((2, 32, 32, 3)).astype(np.float32)
    pred = target.copy()
    pred[:, :, 16:] = rng.random((2, 32, 16, 3))  # differs on the right half only
    left = np.zeros((2, 32, 32), np.float32)
    left[:, :, :16] = 1.0
    whole, ones = net(pred, target), net(pred, target, mask=np.ones((2, 32, 32), np.float32))
    np.testing.assert_allclose(np.asarray(ones), np.asarray(whole), rtol=1e-5)
    assert np.all(np.asarray(net(pred, target, mask=left)) < 0.5 * np.asarray(whole))
    assert np.all(np.asarray(net(pred, target, mask=1 - left)) > 1.5 * np.asarray(whole))


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """One synthetic subject (procedural head, frontal16 at 64 px) as a protocol batch."""
    from headsup_jax.data.synth import SynthConfig, generate
    from headsup_jax.train.config import size_config
    from headsup_jax.train.experiment import template_and_atlas

    root = tmp_path_factory.mktemp("fit")
    generate(root / "captures", 1, SynthConfig(rig="frontal16", resolution=64, seed=5, template="procedural"),
             progress=False)
    config = size_config("tiny")
    config.template = "procedural"
    config.atlas_resolution = 32
    template, atlas = template_and_atlas(config)
    source, _ = eval_source(config, None, "test", root / "captures")
    batches = {}
    for n in (2, 4, 12):
        config.data.num_inputs = n
        batches[n] = next(eval_batches(config, source, 1, 4))
    experiment = types.SimpleNamespace(config=config, template_vertices=template.vertices, atlas=atlas)
    return experiment, batches


def test_novel_views_are_fixed_across_input_counts(subject):
    _, batches = subject
    for n in (4, 12):
        np.testing.assert_array_equal(batches[n]["targets"], batches[2]["targets"])
        np.testing.assert_array_equal(batches[n]["inputs"][:, :2], batches[2]["inputs"])  # nested inputs
    cams = lambda b, k: {tuple(np.round(w[:3, 3], 5)) for w in b[k]["world_to_cam"][0]}  # noqa: E731
    assert not cams(batches[12], "input_cameras") & cams(batches[12], "target_cameras")  # disjoint


def test_fitting_reduces_its_loss_and_beats_the_template_on_its_inputs(subject):
    experiment, batches = subject
    batch = batches[4]
    own = dict(batch, targets=batch["inputs"], target_masks=batch["input_masks"], target_cameras=batch["input_cameras"])
    fitter = SubjectFitter(experiment.template_vertices, experiment.atlas, experiment.config, FitSettings(steps=150))
    # one fit on the 4 input views, scored on them (own) and on the novel views (four) at once
    joined = lambda a, b: np.concatenate([a, b], 1)  # noqa: E731 [B, M, ...] along the views
    both = dict(batch, targets=joined(batch["inputs"], batch["targets"]),
                target_masks=joined(batch["input_masks"], batch["target_masks"]),
                target_cameras=jax.tree.map(joined, batch["input_cameras"], batch["target_cameras"]))
    fitted = fit_reference(experiment, both, fitter=fitter)
    N = batch["inputs"].shape[1]
    history = fitted["losses"][0]
    assert history[-1] < 0.6 * history[0], history[[0, -1]]
    baseline = template_baseline(experiment, own, mean_head_colour(own))
    on_inputs = fitted["metrics"]["psnr_head"][:, :N]
    gain = float(on_inputs.mean() - baseline["psnr_head"].mean())
    print(f"fit on its 4 input views: {on_inputs.mean():.2f} dB head PSNR, "
          f"template {baseline['psnr_head'].mean():.2f} dB, {fitted['seconds'][0]:.1f} s")
    assert gain > 2.0
    # the ceiling fit sees the scored views too: it beats the 4-view fit on the novel views
    four = fitted["metrics"]["psnr_head"][:, N:].mean()
    everything = fit_reference(experiment, batch, on="all", fitter=fitter)["metrics"]["psnr_head"].mean()  # 4 + 4
    print(f"novel views: fitted to the 4 inputs {four:.2f} dB, to inputs and novel views {everything:.2f} dB")
    assert everything > four


def test_eval_on_data_the_run_was_not_trained_on(tmp_path_factory, tmp_path):
    from infer_helpers import shared_workdir

    from headsup_jax.data.tfds_builder import build_dataset
    from headsup_jax.eval.evaluate import evaluate
    from headsup_jax.train.workdir import workdir_path

    workdir = shared_workdir(tmp_path_factory)
    config = json.loads((workdir / "config.json").read_text())
    from ml_collections import ConfigDict

    config = ConfigDict(config)
    H, W = config.data.image_size
    for s in range(3):
        make_capture(tmp_path / "other" / f"new{s}", n=6, width=W, height=H, seed=100 + s)
    dataset = build_dataset(tmp_path / "other", tmp_path / "other_tfds", validation=0.0, test=1 / 3)
    on_dataset = evaluate(config, workdir, "train", num_subjects=8, num_targets=2, data=dataset, views=3)
    assert on_dataset["subjects"] == 2 and on_dataset["views"] == 3
    assert {"psnr", "ssim", "psnr_head", "ssim_head"} <= set(on_dataset)
    on_captures = evaluate(config, workdir, num_subjects=8, num_targets=2, data=tmp_path / "other")
    assert on_captures["subjects"] == 3 and len(on_captures["per_subject"]["psnr"]) == 3
    assert (workdir_path(workdir) / "eval_other.json").exists()
    # the mean-colour template is scored beside the model on the same views (colour of the run's training data)
    from headsup_jax.train.experiment import build_experiment

    experiment = build_experiment(config, workdir)
    colour = mean_head_colour(next(eval_batches(config, eval_source(config, workdir, "train")[0], 64, 2, batch_size=64)))
    source, _ = eval_source(config, workdir, "test", tmp_path / "other")
    want = template_baseline(experiment, next(eval_batches(config, source, 3, 2, batch_size=3)), colour)
    got = on_captures["reference"]["template_mean_colour"]
    for k in ("psnr", "ssim", "psnr_head", "ssim_head"):
        assert abs(got[k] - float(np.mean(want[k]))) < 1e-4, k
