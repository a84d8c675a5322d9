"""Tile compositing against the float64 dense reference (every pixel, every Gaussian)."""
import jax
import numpy as np
import pytest

from headsup_jax.render import rasterize
from headsup_jax.render.cameras import look_at
from headsup_jax.render.scenes import head_scene, random_scene
from reference import TOL, assert_images_match, reference_image


def assert_matches_reference(out, ref):
    assert int(out.stats["dropped_pairs"]) == 0
    assert_images_match(out, ref)


@pytest.mark.parametrize(
    "n, width, height, eye",
    [
        (1, 16, 16, (0.0, 0.0, 1.0)),
        (30, 97, 61, (0.3, 0.2, 1.0)),
        (500, 64, 48, (-0.8, 0.3, 0.7)),
        (2000, 97, 61, (0.1, -0.6, 0.9)),
        (5000, 128, 96, (0.3, 0.2, 1.0)),
    ],
)
def test_matches_dense_reference(n, width, height, eye):
    g = random_scene(n, n)
    cam = look_at(eye, width, height, 40.0)
    out = jax.jit(rasterize)(g, cam)
    assert int(out.stats["visible"]) > 0
    assert_matches_reference(out, reference_image(g, cam))


def test_head_scene_with_background_matches_reference():
    g = head_scene(3, 3000)
    cam = look_at((0.25, 0.1, 0.45), 80, 72, 35.0)
    bg = np.array([0.2, 0.5, 0.9], np.float32)
    out = jax.jit(rasterize)(g, cam, background=bg)
    ref = reference_image(g, cam, background=bg)
    assert ref[1].max() > 0.99  # an opaque head: early termination is exercised
    assert_matches_reference(out, ref)


def test_batched_cameras_by_vmap():
    g = random_scene(5, 400)
    cams = [look_at(eye, 48, 40, 40.0) for eye in [(0.0, 0.0, 1.0), (1.0, 0.2, 0.1), (-0.5, 0.7, 0.6)]]
    stacked = jax.tree.map(lambda *a: np.stack(a), *cams)
    batched = jax.jit(jax.vmap(lambda c: rasterize(g, c)))(stacked)
    for i, cam in enumerate(cams):
        single = jax.jit(rasterize)(g, cam)
        np.testing.assert_allclose(np.asarray(batched.rgb[i]), np.asarray(single.rgb), atol=TOL)
        np.testing.assert_allclose(np.asarray(batched.alpha[i]), np.asarray(single.alpha), atol=TOL)


def test_batched_scenes_by_vmap():
    scenes = [random_scene(s, 300) for s in (11, 12)]
    stacked = jax.tree.map(lambda *a: np.stack(a), *scenes)
    cam = look_at((0.2, 0.3, 1.0), 48, 40, 40.0)
    batched = jax.jit(jax.vmap(lambda g: rasterize(g, cam)))(stacked)
    for i, g in enumerate(scenes):
        rgb, alpha, _ = reference_image(g, cam)
        np.testing.assert_allclose(np.asarray(batched.rgb[i]), rgb, atol=TOL)
        np.testing.assert_allclose(np.asarray(batched.alpha[i]), alpha, atol=TOL)

