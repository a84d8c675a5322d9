"""Gradients of the custom VJP: central finite differences (float64) and autodiff of the dense reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from headsup_jax.render import rasterize
from headsup_jax.render.cameras import look_at
from headsup_jax.render.scenes import head_scene, random_scene
from reference import dense_render

FIELDS = ("means", "quats", "scales", "opacities", "sh")


def weighted_loss(render, cam, seed=0):
    """A loss touching every output: sum(rgb * w1) + sum(alpha * w2) + sum(depth * w3)."""
    rng = np.random.default_rng(seed)
    w = [rng.normal(size=(cam.height, cam.width) + s) for s in [(3,), (), ()]]

    def loss(g, bg):
        rgb, alpha, depth = render(g, bg)
        return jnp.sum(rgb * w[0]) + jnp.sum(alpha * w[1]) + jnp.sum(depth * w[2])

    return loss


def ours(cam, backend="xla"):
    def render(g, bg):
        out = rasterize(g, cam, background=bg, backend=backend)
        return out.rgb, out.alpha, out.depth

    return render


def test_gradients_match_finite_differences_float64():
    with jax.enable_x64(True):
        g = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), random_scene(11, 25, opacity_range=(0.2, 0.9)))
        cam = look_at((0.2, 0.1, 0.8), 40, 32, 40.0)
        cam = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), cam)
        bg = jnp.array([0.3, 0.6, 0.1])
        loss = jax.jit(weighted_loss(ours(cam), cam))
        grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(g, bg)
        rng = np.random.default_rng(0)
        h = 1e-6
        for field in FIELDS:
            for _ in range(4):
                d = rng.normal(size=getattr(g, field).shape)
                step = lambda s: jax.tree.map(lambda a: a, g).__class__(
                    **{f: getattr(g, f) + (s * h * d if f == field else 0.0) for f in FIELDS})
                fd = (loss(step(1.0), bg) - loss(step(-1.0), bg)) / (2 * h)
                analytic = jnp.sum(getattr(grads[0], field) * d)
                np.testing.assert_allclose(analytic, fd, rtol=1e-5, atol=1e-7, err_msg=field)
        d = rng.normal(size=3)
        fd = (loss(g, bg + h * d) - loss(g, bg - h * d)) / (2 * h)
        np.testing.assert_allclose(jnp.sum(grads[1] * d), fd, rtol=1e-5)


@pytest.mark.parametrize("scene", ["random", "head"])
def test_gradients_match_dense_reference_autodiff(scene):
    if scene == "random":
        g, cam = random_scene(4, 1500), look_at((0.3, 0.2, 1.0), 64, 56, 40.0)
    else:  # opaque: exercises early termination and the backward walk from the final transmittance
        g, cam = head_scene(2, 2500), look_at((0.1, 0.1, 0.45), 64, 64, 35.0)
    g = jax.tree.map(jnp.asarray, g)
    bg = jnp.array([0.1, 0.2, 0.3])
    ref_render = lambda g, bg: dense_render(g, cam, bg)
    got = jax.jit(jax.grad(weighted_loss(ours(cam), cam), argnums=(0, 1)))(g, bg)
    want = jax.jit(jax.grad(weighted_loss(ref_render, cam), argnums=(0, 1)))(g, bg)
    for field in FIELDS:
        a, b = np.asarray(getattr(got[0], field)), np.asarray(getattr(want[0], field))
        assert np.abs(b).max() > 0, field
        np.testing.assert_allclose(a, b, atol=2e-5 * np.abs(b).max(), rtol=0, err_msg=field)
    np.testing.assert_allclose(got[1], want[1], atol=2e-5 * np.abs(want[1]).max(), rtol=0)


def test_gradients_under_nested_vmap_match_the_dense_reference():
    """vmap over scenes and, inside, cameras (how training renders its [B, M] views) folds the batch into
    the tiles (`composite._batch_as_tiles`): each (scene, camera)'s gradients are the dense reference's."""
    scenes = [head_scene(21, 1000), random_scene(22, 1000)]
    cams = [look_at((0.1, 0.1, 0.45), 48, 40, 35.0), look_at((-0.4, 0.2, 0.5), 48, 40, 35.0)]
    rng = np.random.default_rng(3)
    w = [rng.normal(size=(2, 2, 40, 48) + s).astype(np.float32) for s in [(3,), (), ()]]  # [scene, camera, ...]
    bg = jnp.array([0.1, 0.2, 0.3])

    def loss(render, g, cam, w_rgb, w_alpha, w_depth):
        rgb, alpha, depth = render(g, cam)
        return jnp.sum(rgb * w_rgb) + jnp.sum(alpha * w_alpha) + jnp.sum(depth * w_depth)

    def ours_in(g, cam):
        out = rasterize(g, cam, background=bg, backend="xla")
        return out.rgb, out.alpha, out.depth

    per_camera = jax.vmap(jax.grad(lambda g, cam, *w: loss(ours_in, g, cam, *w)), (None, 0, 0, 0, 0))
    stack = lambda items: jax.tree.map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *items)
    got = jax.jit(jax.vmap(per_camera, (0, None, 0, 0, 0)))(stack(scenes), stack(cams), *w)
    for s, g in enumerate(scenes):
        for c, cam in enumerate(cams):
            ref = jax.jit(jax.grad(lambda g, *w: loss(lambda g, _: dense_render(g, cam, bg), g, cam, *w)))(
                jax.tree.map(jnp.asarray, g), *(x[s, c] for x in w))
            for field in FIELDS:
                a, b = np.asarray(getattr(got, field)[s, c]), np.asarray(getattr(ref, field))
                assert np.abs(b).max() > 0, field
                np.testing.assert_allclose(a, b, atol=2e-5 * np.abs(b).max(), rtol=0, err_msg=f"{field} {s} {c}")
