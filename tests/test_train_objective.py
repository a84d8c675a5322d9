"""The objective's eye/mouth region weighting and LPIPS term, on the tiny model.

Region weighting: the feature maps (the atlas's eye and mouth texels rendered into a view) must land where
the template's eyes and mouth project, and the weighted L1 must equal a NumPy weighted mean with those
maps. LPIPS: with a (random-weight) network file the term and the eval metric equal the network applied
to the renders, and its gradient reaches the model.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from headsup_jax.geometry import anchor, build_atlas, load_template
from headsup_jax.geometry.features import FEATURES, anchor_points, feature_anchors, feature_texels
from headsup_jax.model.lpips import load_lpips, save_lpips, weight_shapes
from headsup_jax.render.cameras import look_at_matrix
from headsup_jax.train.config import size_config
from headsup_jax.eval.evaluate import evaluate_batch
from headsup_jax.train.experiment import build_experiment
from headsup_jax.train.objective import feature_maps, objective, render_views

H, W = 96, 72


def front_camera(distance=0.45):
    """A frontal camera on the head (the template looks along +z), K for H x W."""
    f = 1.6 * W
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], np.float32)
    return K, look_at_matrix(np.array([0.0, 0.03, distance]), np.array([0.0, 0.03, 0.0])).astype(np.float32)


def project(K, w2c, point):
    p = w2c[:3, :3] @ point + w2c[:3, 3]
    uv = K @ (p / p[2])
    return uv[:2]  # (x, y) pixels


@pytest.mark.parametrize("spec", ["procedural", "ict"])
def test_feature_maps_land_on_eyes_and_mouth(spec):
    from headsup_jax.geometry.loaders import ict_path

    if spec == "ict" and not ict_path().exists():
        pytest.skip(f"ICT-FaceKit archive not found at {ict_path()}")
    template = load_template(spec)
    atlas = build_atlas(template, 128)
    texels = feature_texels(template, atlas)  # [G, 2]
    assert texels.shape == (atlas.count, len(FEATURES)) and texels.sum(0).min() > 0
    g = jax.tree.map(lambda x: x[None], anchor(template.vertices, atlas))
    K, w2c = front_camera()
    config = size_config("tiny")
    maps = np.asarray(feature_maps(g, jnp.asarray(texels), K[None, None], w2c[None, None], H, W, config.render))[0, 0]
    assert maps.shape == (H, W, 2) and maps.min() >= 0 and maps.max() <= 1 + 1e-5
    points = anchor_points(feature_anchors(template), template.vertices)
    ys, xs = np.mgrid[:H, :W] + 0.5
    for k, name in enumerate(FEATURES):
        m = maps[..., k]
        assert m.sum() > 3, name  # a few pixels at least
        if name == "eyes":  # one blob per eye: each half of the image holds one, centred on its eye
            for point in (points["eye_left"], points["eye_right"]):
                x, y = project(K, w2c, point)
                side = (xs < W / 2) == (x < W / 2)
                w = m * side
                centroid = np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()
                assert np.linalg.norm(centroid - [x, y]) < 2.5, (name, centroid, (x, y))
        else:
            x, y = project(K, w2c, points["mouth"])
            centroid = np.array([(m * xs).sum(), (m * ys).sum()]) / m.sum()
            assert np.linalg.norm(centroid - [x, y]) < 2.5, (name, centroid, (x, y))
        # nothing far from the feature: the map is 0 more than 25 px away from every projected centre
        centres = [project(K, w2c, points[p]) for p in (("eye_left", "eye_right") if name == "eyes" else ("mouth",))]
        far = np.min([np.hypot(xs - cx, ys - cy) for cx, cy in centres], axis=0) > 25
        assert m[far].max() < 1e-3, name


def tiny_experiment(**loss):
    config = size_config("tiny")
    config.template = "procedural"
    config.loss.update(loss)
    return build_experiment(config)


def random_batch(seed=0, B=1, N=2, M=2, h=64, w=48):
    rng = np.random.default_rng(seed)
    K = np.array([[1.6 * w, 0, w / 2], [0, 1.6 * w, h / 2], [0, 0, 1]], np.float32)
    angles = np.linspace(-0.5, 0.5, N + M)
    w2c = np.stack([look_at_matrix(np.array([0.45 * np.sin(a), 0.03, 0.45 * np.cos(a)]), np.array([0.0, 0.03, 0.0]))
                    for a in angles]).astype(np.float32)
    cams = lambda sl: {"K": np.broadcast_to(K, (B, len(w2c[sl]), 3, 3)).copy(), "world_to_cam": np.broadcast_to(
        w2c[sl], (B, len(w2c[sl]), 4, 4)).copy()}
    return {"inputs": rng.random((B, N, h, w, 3), np.float32), "input_cameras": cams(slice(0, N)),
            "targets": rng.random((B, M, h, w, 3), np.float32), "target_cameras": cams(slice(N, None)),
            "target_masks": rng.random((B, M, h, w)) < 0.5}


def jitted_objective(experiment, extra=None, state=None):
    """jit of (batch) -> (loss, (terms, renders, target), extra(model, supervision, batch)) at `state`
    (default: the experiment's initial state)."""
    supervision_def, supervision_state = nnx.split(experiment.supervision)

    @jax.jit
    def run(state, supervision_state, batch):
        model = nnx.merge(experiment.graphdef, state)[0]
        supervision = nnx.merge(supervision_def, supervision_state)
        out = objective(model, supervision, batch, experiment.config)
        return out, (extra(model, supervision, batch) if extra else None)

    state = experiment.state if state is None else state
    return lambda batch: run(state, supervision_state, jax.tree.map(jnp.asarray, batch))


def test_region_weights_scale_the_image_losses_where_eyes_and_mouth_land():
    experiment = tiny_experiment(regions=dict(eyes=3.0, mouth=2.0))

    def maps(model, supervision, batch):
        ic, tc = batch["input_cameras"], batch["target_cameras"]
        gaussians, _ = model(batch["inputs"], ic["K"], ic["world_to_cam"])
        return feature_maps(gaussians, supervision.feature_texels[...], tc["K"], tc["world_to_cam"], 64, 48,
                            experiment.config.render)

    (_, (terms, renders, target)), maps = jitted_objective(experiment, maps)(random_batch())
    maps = np.asarray(maps, np.float64)  # [B, M, H, W, 2]
    assert maps[..., 0].max() > 0.5 and maps[..., 1].max() > 0.5  # both features are in view
    weights = 1.0 + 3.0 * maps[..., 0] + 2.0 * maps[..., 1]  # [B, M, H, W]
    err = np.abs(np.asarray(renders.rgb, np.float64) - np.asarray(target, np.float64)).mean(-1)
    np.testing.assert_allclose(float(terms["l1"]), (weights * err).sum() / weights.sum(), rtol=1e-5)
    assert abs((weights * err).sum() / weights.sum() - err.mean()) > 1e-4  # the weighting matters here


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    """A random LPIPS network file in the converter's format (He-normal convs, non-negative linear layers)."""
    rng = np.random.default_rng(0)
    weights = {}
    for name, shape in weight_shapes().items():
        if name.endswith(".kernel"):
            weights[name] = rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        elif name.endswith(".bias"):
            weights[name] = rng.normal(0, 0.1, shape)
        else:
            weights[name] = rng.random(shape)
    return save_lpips(weights, tmp_path_factory.mktemp("lpips") / "lpips_vgg.safetensors")


def test_lpips_term_and_metric(lpips_file):
    batch = random_batch(1)
    experiment = tiny_experiment(lpips=0.5, lpips_weights=str(lpips_file), regions=dict(eyes=0.0, mouth=0.0))

    def lpips_grads(model, supervision, batch):  # the LPIPS term's gradient w.r.t. the model's parameters
        term = lambda m: objective(m, supervision, batch, experiment.config)[1][0]["lpips"]  # noqa: E731
        return jax.tree.leaves(nnx.grad(term)(model))

    (loss, (terms, renders, target)), grads = jitted_objective(experiment, lpips_grads)(batch)
    network = load_lpips(lpips_file)
    distances = np.asarray(nnx.jit(lambda n, a, b: n(a, b))(network, renders.rgb, target))  # [B, M]
    np.testing.assert_allclose(float(terms["lpips"]), distances.mean(), rtol=1e-5)
    assert float(terms["lpips"]) > 0
    w = experiment.config.loss
    others = sum(getattr(w, k) * float(v) for k, v in terms.items() if k != "lpips")
    np.testing.assert_allclose(float(loss) - others, 0.5 * distances.mean(), rtol=1e-4)  # in the total
    assert max(float(jnp.max(jnp.abs(g))) for g in grads) > 1e-6  # and its gradient reaches the model

    metrics = evaluate_batch(experiment, experiment.state, batch)["metrics"]
    assert set(metrics) == {"psnr", "ssim", "lpips", "psnr_head", "ssim_head", "lpips_head"}
    np.testing.assert_allclose(metrics["lpips"], distances, rtol=1e-5)  # the whole frame


def test_lpips_weight_without_network_is_a_clear_error():
    experiment = tiny_experiment(lpips=0.1)
    with pytest.raises(ValueError, match="lpips_weights"):
        jitted_objective(experiment)(random_batch())



@pytest.mark.parametrize("background", [False, True])
def test_mask_loss_counts_only_records_with_masks(background):
    """Record 0 has masks, record 1 none (all-ones masks, as the pipeline gives): the mask term is the
    NumPy mean |head alpha - mask| over record 0 alone, and no gradient of it reaches record 1's inputs."""
    config = size_config("tiny")
    config.template = "procedural"
    config.background.update(enabled=background, num_gaussians=256)
    config.loss.update(regions=dict(eyes=0.0, mouth=0.0))
    experiment = build_experiment(config)
    batch = random_batch(2, B=2)
    batch["target_masks"][1] = True
    batch["has_masks"] = np.array([True, False])

    def head_alpha_and_grad(model, supervision, batch):
        ic, tc = batch["input_cameras"], batch["target_cameras"]
        gaussians, _ = model(batch["inputs"], ic["K"], ic["world_to_cam"])
        head = jax.tree.map(lambda x: x[:, :model.num_gaussians], gaussians)
        alpha = render_views(head, tc["K"], tc["world_to_cam"], 64, 48, jnp.zeros(3), config.render).alpha
        term = lambda inputs: objective(model, supervision, {**batch, "inputs": inputs}, config)[1][0]["mask"]  # noqa: E731
        return alpha, jax.grad(term)(batch["inputs"])

    # the zero-initialised decoder head ignores the inputs: give every all-zero parameter small values
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda x: x + 1e-2 * rng.standard_normal(x.shape).astype(x.dtype)
                         if jnp.issubdtype(x.dtype, jnp.floating) and not jnp.any(x) else x, experiment.state)
    (_, (terms, renders, _)), (alpha, grad) = jitted_objective(experiment, head_alpha_and_grad, state)(batch)
    alpha, grad = np.asarray(alpha, np.float64), np.asarray(grad)  # [B, M, H, W], [B, N, H, W, 3]
    want = np.abs(alpha[0] - batch["target_masks"][0]).mean()
    np.testing.assert_allclose(float(terms["mask"]), want, rtol=1e-5)
    assert abs(np.abs(alpha - batch["target_masks"]).mean() - want) > 1e-2  # record 1 would change it
    if background:  # the sphere covers the frame, so the silhouette must come from the head alone
        assert np.asarray(renders.alpha).min() > 0.9 and alpha.mean() < 0.8
    assert np.abs(grad[0]).max() > 0 and np.abs(grad[1]).max() == 0
