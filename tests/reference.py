"""The dense reference renderer of the render tests and benchmarks/render.py: every pixel against every
Gaussian in depth order with the Inria/gsplat rules, in plain JAX (no tiles, no custom VJP). It is
differentiable (reference gradients, the benchmark's dense baseline) and runs in float64 under
`jax.enable_x64` (`reference_image`, the images the tile renderer is checked against)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from headsup_jax.render import project
from headsup_jax.render.sh import sh_colors

MAX_ALPHA, MIN_ALPHA, MIN_TRANSMITTANCE = 0.99, 1 / 255, 1e-4
TOL = 1e-5  # float32 tile renderer against the float64 reference, per pixel and channel


def _composite_block(g: jax.Array, xy: jax.Array) -> jax.Array:
    """Pixels `xy` [B, 2] against all depth-sorted Gaussians `g` [P, 10]. -> [B, 5] rgb, depth, transmittance"""
    mx, my, ca, cb, cc, op = (g[:, i, None] for i in range(6))  # [P, 1]
    dx, dy = mx - xy[None, :, 0], my - xy[None, :, 1]
    power = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy  # [P, B]
    alpha = jnp.minimum(MAX_ALPHA, op * jnp.exp(-power))
    alpha = jnp.where((power >= 0) & (alpha >= MIN_ALPHA), alpha, 0.0)
    after = jnp.cumprod(1.0 - alpha, axis=0)  # [P, B] transmittance after each Gaussian, non-increasing
    w = jnp.where(after > MIN_TRANSMITTANCE, alpha * after / (1.0 - alpha), 0.0)  # stops before T reaches 1e-4
    acc = g[:, 6:10].T @ w  # [4, B] colour and depth
    return jnp.concatenate([acc, 1.0 - jnp.sum(w, 0, keepdims=True)], 0).T


def dense_composite(means2d, conics, opacities, colors, depths, width: int, height: int, background=None,
                    rows: tuple[int, int] | None = None, block_pairs: int = 2**21):
    """Composites projected Gaussians (means2d [P, 2], conics [P, 3], opacities [P], colors [P, 3], depths [P])
    at pixel centres; a Gaussian of opacity 0 contributes nothing (how callers leave one out). Pixels go in
    blocks of about `block_pairs` (pixel, Gaussian) pairs, rematerialised in the backward pass, so memory is
    one block. rows: (first, count) renders only that band of rows. -> rgb [R, W, 3], alpha [R, W], depth [R, W]"""
    g = jnp.concatenate([means2d, conics, opacities[:, None], colors, depths[:, None]], -1)
    g = g[jnp.argsort(depths, stable=True)]  # [P, 10]
    first, count = rows or (0, height)
    ys, xs = np.mgrid[first:first + count, 0:width] + 0.5
    xy = np.stack([xs.ravel(), ys.ravel()], -1)  # [N, 2]
    block = max(8, block_pairs // max(g.shape[0], 1))
    n = len(xy)
    xy = np.concatenate([xy, np.full((-n % block, 2), -1e6)]).reshape(-1, block, 2).astype(g.dtype)
    out = jax.lax.map(jax.checkpoint(lambda b: _composite_block(g, b)), jnp.asarray(xy))
    out = out.reshape(-1, 5)[:n].reshape(count, width, 5)
    rgb = out[..., :3] if background is None else out[..., :3] + out[..., 4:] * jnp.asarray(background, g.dtype)
    return rgb, 1.0 - out[..., 4], out[..., 3]


def projected(gaussians, camera, near_plane=0.01, far_plane=1e10):
    """`dense_composite`'s inputs: the library's projection and colours (`project` and `sh_colors` are
    checked against gsplat separately), opacity 0 outside (near_plane, far_plane) and no other culling."""
    p = project(gaussians, camera)
    ok = (p.depths > near_plane) & (p.depths < far_plane)
    return (p.means2d, p.conics, jnp.where(ok, gaussians.opacities, 0.0), sh_colors(gaussians, camera.position),
            p.depths)


def dense_render(gaussians, camera, background=None, rows=None, block_pairs: int = 2**21):
    """`dense_composite` of `projected` Gaussians, in their dtype: differentiable in everything."""
    return dense_composite(*projected(gaussians, camera), camera.width, camera.height, background, rows,
                           block_pairs)


_projected = jax.jit(projected)
_composite = jax.jit(dense_composite, static_argnames=("width", "height", "rows", "block_pairs"))


def reference_image(gaussians, camera, background=None):
    """The float64 reference images as NumPy (rgb [H, W, 3], alpha [H, W], depth [H, W]): the float32
    projection and colours the renderer composites, composited in float64."""
    inputs = _projected(gaussians, camera)
    with jax.enable_x64(True):
        args = [np.asarray(a, np.float64) for a in inputs]
        bg = None if background is None else np.asarray(background, np.float64)
        out = _composite(*args, width=camera.width, height=camera.height, background=bg)
        return tuple(np.asarray(a) for a in out)


def assert_images_match(out, ref, tol: float = TOL) -> None:
    """rasterize() output `out` against `reference_image` `ref`, rgb, alpha and depth within `tol`."""
    for name, got, want in zip(("rgb", "alpha", "depth"), (out.rgb, out.alpha, out.depth), ref):
        np.testing.assert_allclose(np.asarray(got), want, atol=tol, rtol=0, err_msg=name)
