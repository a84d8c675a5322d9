"""Degenerate inputs: finite outputs and gradients, and the right images."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from headsup_jax.render import Gaussians, rasterize
from headsup_jax.render.cameras import look_at
from headsup_jax.render.scenes import random_scene
from reference import assert_images_match, reference_image

CAM = look_at((0.0, 0.0, 1.0), 40, 30, 40.0)  # camera at z=1 looking at the origin: depth = 1 - z
BG = np.array([0.2, 0.4, 0.6], np.float32)


def scene_with(**overrides):
    g = random_scene(0, 64, extent=0.1)
    return Gaussians(**{f: np.asarray(overrides.get(f, getattr(g, f)), np.float32)
                        for f in ("means", "quats", "scales", "opacities", "sh")})


def render_and_grads(g):
    def loss(g, bg):
        out = rasterize(g, CAM, background=bg)
        return jnp.sum(out.rgb) + jnp.sum(out.alpha) + jnp.sum(out.depth), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(g, BG)
    for leaf in jax.tree.leaves((out.rgb, out.alpha, out.depth, grads)):
        assert np.all(np.isfinite(np.asarray(leaf)))
    return out, grads


def assert_background_only(out):
    np.testing.assert_allclose(np.asarray(out.rgb), np.broadcast_to(BG, (30, 40, 3)), atol=1e-7)
    assert np.all(np.asarray(out.alpha) == 0) and np.all(np.asarray(out.depth) == 0)


def assert_matches_reference(out, g):
    """The image is the dense reference's, which culls by depth only (a culled Gaussian must not matter)."""
    assert int(out.stats["dropped_pairs"]) == 0
    assert_images_match(out, reference_image(g, CAM, BG))


def test_behind_camera_and_on_near_plane_are_culled():
    means = np.zeros((64, 3), np.float32)
    means[:32, 2] = 1.5  # behind the camera
    means[32:, 2] = 1.0 - 0.01  # exactly on the near plane
    g = scene_with(means=means)
    out, grads = render_and_grads(g)
    assert int(out.stats["visible"]) == 0
    assert_background_only(out)
    assert_matches_reference(out, g)
    assert np.all(np.asarray(grads[0].means) == 0)


def test_off_screen_gaussians_do_not_contribute():
    g = scene_with(means=np.tile([[5.0, 0.0, 0.0]], (64, 1)))
    out, _ = render_and_grads(g)
    assert int(out.stats["visible"]) == 0
    assert_background_only(out)
    assert_matches_reference(out, g)  # the reference composites them: below 1/255 everywhere


def test_zero_opacity_and_empty_scene():
    g = scene_with(opacities=np.zeros(64))
    out, _ = render_and_grads(g)
    assert_background_only(out)
    assert_matches_reference(out, g)
    empty = Gaussians(means=np.zeros((0, 3), np.float32), quats=np.zeros((0, 4), np.float32),
                      scales=np.zeros((0, 3), np.float32), opacities=np.zeros((0,), np.float32),
                      sh=np.zeros((0, 4, 3), np.float32))
    out, grads = render_and_grads(empty)
    assert_background_only(out)
    assert_matches_reference(out, empty)
    np.testing.assert_allclose(np.asarray(grads[1]), [30 * 40] * 3)  # d sum(rgb) / d background


@pytest.mark.parametrize("scale", [1e3, 1e-9])
def test_extreme_scales(scale):
    g = scene_with(scales=np.full((64, 3), scale))
    out, _ = render_and_grads(g)
    if scale > 1:  # an enormous Gaussian at the origin covers every tile
        assert int(out.stats["total_pairs"]) >= 6 * int(out.stats["visible"]) > 0
    else:  # sub-pixel Gaussians still render as the 0.3 px dilation, tiny but finite
        assert 0.0 < float(np.asarray(out.alpha).max()) < 1.0
    assert_matches_reference(out, g)


def test_singular_covariance():
    g = scene_with(scales=np.tile([[0.05, 0.0, 0.0]], (64, 1)))  # a line: rank-1 3D covariance
    out, _ = render_and_grads(g)
    assert float(np.asarray(out.alpha).max()) > 0.0
    assert_matches_reference(out, g)
    g = scene_with(scales=np.zeros((64, 3)))  # a point: only the 2D dilation keeps it visible
    out, _ = render_and_grads(g)
    assert int(out.stats["visible"]) > 0
    assert_matches_reference(out, g)
    # without the dilation a point has a singular 2D covariance: culled, not NaN
    out = jax.jit(lambda g: rasterize(g, CAM, background=BG, eps2d=0.0))(g)
    assert int(out.stats["visible"]) == 0
    assert_background_only(out)
