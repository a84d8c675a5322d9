"""Projection and spherical harmonics against gsplat 1.5.3's pure-PyTorch reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from gsplat.cuda import _torch_impl as gs  # noqa: E402

from headsup_jax.render import project  # noqa: E402
from headsup_jax.render.cameras import look_at  # noqa: E402
from headsup_jax.render.scenes import random_scene  # noqa: E402
from headsup_jax.render.sh import eval_sh  # noqa: E402

CAMERAS = [
    ((0.3, 0.2, 1.0), 64, 48, 40.0),
    ((-1.2, 0.4, -0.3), 97, 61, 25.0),
    ((0.0, -0.9, 0.35), 128, 128, 60.0),
]


def gsplat_projection(g, cam):
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)
    covars, _ = gs._quat_scale_to_covar_preci(t(g.quats), t(g.scales), compute_preci=False)
    radii, means2d, depths, conics, _ = gs._fully_fused_projection(
        t(g.means), covars, t(cam.world_to_cam)[None], t(cam.K)[None], cam.width, cam.height, eps2d=0.3)
    return radii[0].numpy(), means2d[0].numpy(), depths[0].numpy(), conics[0].numpy()


def as_float64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cam_args", CAMERAS)
def test_projection_matches_gsplat(seed, cam_args):
    """Same formulas: float64 against float64 at 1e-4 relative; the float32 path within float32 rounding
    (conics of nearly singular covariances lose digits to the determinant's cancellation)."""
    g = random_scene(seed, 2000, extent=0.5, scale_range=(1e-3, 0.2))
    cam = look_at(*cam_args)
    radii, means2d, depths, conics = gsplat_projection(g, cam)
    with jax.enable_x64(True):
        ours = jax.jit(project)(as_float64(g), as_float64(cam))
        assert ours.means2d.dtype == np.float64
    both = np.asarray(ours.visible) & np.all(radii > 0, -1)
    assert both.sum() > 200, "too few Gaussians visible to compare"
    np.testing.assert_allclose(np.asarray(ours.means2d)[both], means2d[both], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours.depths)[both], depths[both], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(ours.conics)[both], conics[both], rtol=1e-4, atol=1e-8)
    ours32 = jax.jit(project)(g, cam)
    np.testing.assert_array_equal(np.asarray(ours32.visible)[both], True)
    np.testing.assert_allclose(np.asarray(ours32.means2d)[both], means2d[both], rtol=1e-4, atol=1e-3)
    scale = np.abs(conics[both]).max(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(ours32.conics)[both] / scale, conics[both] / scale, atol=2e-3)
    # Culling agrees where it is not about footprint size (gsplat bounds 3.33 sigma, we the 1/255 level set).
    in_front = depths > 0.01
    assert not np.any(np.asarray(ours.visible) & ~in_front)


def test_radius_covers_every_contributing_pixel():
    """The tile rectangle from `radii` holds every pixel whose alpha reaches 1/255 (dense check)."""
    g = random_scene(7, 300, scale_range=(0.005, 0.1))
    cam = look_at((0.2, 0.1, 1.0), 97, 61, 40.0)
    p = jax.jit(project)(g, cam)
    ys, xs = np.mgrid[0:61, 0:97] + 0.5
    m, c, r = np.asarray(p.means2d, np.float64), np.asarray(p.conics, np.float64), np.asarray(p.radii)
    op = np.asarray(g.opacities, np.float64)
    for i in np.flatnonzero(np.asarray(p.visible)):
        dx, dy = m[i, 0] - xs, m[i, 1] - ys
        power = 0.5 * (c[i, 0] * dx * dx + c[i, 2] * dy * dy) + c[i, 1] * dx * dy
        hit = op[i] * np.exp(-power) >= 1 / 255
        assert np.all(np.abs(dx[hit]) <= r[i, 0]) and np.all(np.abs(dy[hit]) <= r[i, 1]), i


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat(degree):
    rng = np.random.default_rng(degree)
    dirs = rng.normal(size=(500, 3)).astype(np.float32)
    coeffs = rng.normal(size=(500, 16, 3)).astype(np.float32)
    ref = gs._spherical_harmonics(degree, torch.tensor(dirs, dtype=torch.float64),
                                  torch.tensor(coeffs, dtype=torch.float64)).numpy()
    ours = np.asarray(jax.jit(eval_sh, static_argnums=0)(degree, jnp.asarray(dirs), jnp.asarray(coeffs)))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
