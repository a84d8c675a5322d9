"""Independent float64 NumPy references used by the tests (dense: every pixel, every Gaussian)."""
from __future__ import annotations

import numpy as np


def dense_composite(means2d, conics, opacities, colors, depths, width, height, max_alpha=0.99,
                    min_alpha=1 / 255, min_transmittance=1e-4, background=None):
    """Composites every Gaussian at every pixel in depth order with the Inria/gsplat rules.

    Inputs are projected quantities for the Gaussians that pass the depth cull. Returns rgb [H, W, 3],
    alpha [H, W], depth [H, W] (alpha-weighted), all float64.
    """
    means2d, conics, opacities, colors, depths = (np.asarray(a, np.float64) for a in
                                                  (means2d, conics, opacities, colors, depths))
    order = np.argsort(depths, kind="stable")
    ys, xs = np.mgrid[0:height, 0:width]
    px, py = xs.ravel() + 0.5, ys.ravel() + 0.5
    trans = np.ones(px.shape)
    done = np.zeros(px.shape, bool)
    rgb = np.zeros(px.shape + (3,))
    depth = np.zeros(px.shape)
    for g in order:
        dx, dy = means2d[g, 0] - px, means2d[g, 1] - py
        a, b, c = conics[g]
        power = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = np.minimum(max_alpha, opacities[g] * np.exp(-power))
        use = (power >= 0) & (alpha >= min_alpha) & ~done
        next_t = trans * (1 - alpha)
        stop = use & (next_t <= min_transmittance)
        done |= stop
        use &= ~stop
        w = np.where(use, alpha * trans, 0.0)
        rgb += w[:, None] * colors[g]
        depth += w * depths[g]
        trans = np.where(use, next_t, trans)
    if background is not None:
        rgb += trans[:, None] * np.asarray(background, np.float64)
    return rgb.reshape(height, width, 3), (1 - trans).reshape(height, width), depth.reshape(height, width)


def dense_composite_jax(gaussians, camera, background, max_alpha=0.99, min_alpha=1 / 255, min_transmittance=1e-4,
                        near_plane=0.01):
    """The same dense compositing in JAX (a scan over depth-sorted Gaussians), for autodiff references.

    Uses the library's projection and SH colours (checked against gsplat separately)."""
    import jax
    import jax.numpy as jnp

    from headsup_jax.render import project
    from headsup_jax.render.sh import sh_colors

    p = project(gaussians, camera)
    col = sh_colors(gaussians, camera.position)
    ok = p.depths > near_plane
    order = jnp.argsort(jnp.where(ok, p.depths, jnp.inf))
    ys, xs = jnp.mgrid[0:camera.height, 0:camera.width]
    px, py = xs.ravel() + 0.5, ys.ravel() + 0.5

    def step(carry, g):
        trans, rgb, depth, done = carry
        dx, dy = p.means2d[g, 0] - px, p.means2d[g, 1] - py
        a, b, c = p.conics[g]
        power = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = jnp.minimum(max_alpha, gaussians.opacities[g] * jnp.exp(-power))
        use = (power >= 0) & (alpha >= min_alpha) & ~done & ok[g]
        next_t = trans * (1 - alpha)
        stop = use & (next_t <= min_transmittance)
        use &= ~stop
        w = jnp.where(use, alpha * trans, 0.0)
        return (jnp.where(use, next_t, trans), rgb + w[:, None] * col[g], depth + w * p.depths[g], done | stop), None

    n = px.shape[0]
    dt = gaussians.means.dtype
    init = (jnp.ones(n, dt), jnp.zeros((n, 3), dt), jnp.zeros(n, dt), jnp.zeros(n, bool))
    (trans, rgb, depth, _), _ = jax.lax.scan(step, init, order)
    rgb = rgb + trans[:, None] * background
    hw = (camera.height, camera.width)
    return rgb.reshape(hw + (3,)), (1 - trans).reshape(hw), depth.reshape(hw)
