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
