"""Front-to-back alpha compositing of per-tile Gaussian lists, with a memory-light custom VJP.

Both backends (XLA here, Pallas in `pallas_composite.py`) work on one packed layout:
  attrs  [T, A, K]   per tile, the depth-ordered Gaussians' attributes in rows `ROWS`
  counts [T]         list lengths
and return
  out    [T, 5, PIX] rows r, g, b (accumulated colour), depth (accumulated), final transmittance
  last   [T, PIX]    per pixel, the number of list entries before the one that stopped it
The backward pass walks each list back from the final transmittance, so nothing per (pixel, Gaussian) is
stored between the passes: only `out` and `last`.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from headsup_jax.render.tiles import TileGrid

ROWS = ("mean_x", "mean_y", "conic_a", "conic_b", "conic_c", "opacity", "red", "green", "blue", "depth")
NUM_ATTRS = len(ROWS)
NUM_OUT = 5  # r, g, b, depth, transmittance


@dataclasses.dataclass(frozen=True)
class CompositingRules:
    """The compositing constants (defaults of the Inria/gsplat renderers)."""

    max_alpha: float = 0.99  # alpha = min(max_alpha, opacity * exp(-power))
    min_alpha: float = 1.0 / 255.0  # contributions below are skipped
    min_transmittance: float = 1e-4  # a pixel stops before its transmittance would fall to this


def pixel_centers(grid: TileGrid, dtype=jnp.float32) -> jax.Array:
    """Pixel centres of every tile, x and y rows. [T, 2, PIX]"""
    s = grid.tile_size
    tile = jnp.arange(grid.num_tiles)
    pix = jnp.arange(grid.pixels_per_tile)
    x = (tile % grid.tiles_x)[:, None] * s + (pix % s)[None, :] + 0.5
    y = (tile // grid.tiles_x)[:, None] * s + (pix // s)[None, :] + 0.5
    return jnp.stack([x, y], 1).astype(dtype)


def gaussian_alpha(attrs, px, py, rules: CompositingRules):
    """alpha of Gaussians at pixels, with the skip rules applied (0 where skipped).

    attrs: sequence of the ROWS, each broadcastable against px/py. Returns (alpha, falloff, dx, dy) with
    falloff = exp(-power), so that the unclamped alpha is opacity * falloff.
    """
    mx, my, ca, cb, cc, op = attrs[:6]
    dx, dy = mx - px, my - py
    power = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
    falloff = jnp.exp(-power)
    alpha = jnp.minimum(rules.max_alpha, op * falloff)
    alpha = jnp.where((power < 0) | (alpha < rules.min_alpha), 0.0, alpha)
    return alpha, falloff, dx, dy


def alpha_grads(d_alpha, alpha, falloff, dx, dy, attrs, rules: CompositingRules):
    """Chain rule from d alpha to (mean_x, mean_y, conic_a, conic_b, conic_c, opacity).

    Zero where alpha was skipped or clamped at max_alpha, as in the CUDA renderers."""
    ca, cb, cc, op = attrs[2:6]
    d_raw = jnp.where((alpha > 0) & (op * falloff < rules.max_alpha), d_alpha, 0.0)
    d_power = -op * falloff * d_raw
    return (
        d_power * (ca * dx + cb * dy),
        d_power * (cb * dx + cc * dy),
        d_power * 0.5 * dx * dx,
        d_power * dx * dy,
        d_power * 0.5 * dy * dy,
        d_raw * falloff,
    )


# ----------------------------------------------------------------------------------------------------
# XLA backend: all tiles at once, each list walked in chunks of `chunk` Gaussians.


def _chunk(attrs, start, chunk):
    """Rows of entries [start, start + chunk) of every tile, each [T, chunk, 1] (pixels broadcast last)."""
    block = jax.lax.dynamic_slice_in_dim(attrs, start, chunk, axis=2)  # [T, A, C]
    return [block[:, i, :, None] for i in range(NUM_ATTRS)]


def xla_forward(attrs, counts, grid: TileGrid, rules: CompositingRules, chunk: int = 32, autodiff: bool = False):
    """Forward pass. With `autodiff=True` it scans all K entries (static trip count) so that plain JAX
    autodiff can differentiate it; that stores per-chunk intermediates (the baseline of the benchmark)."""
    num_tiles, _, capacity = attrs.shape
    assert capacity % chunk == 0, (capacity, chunk)
    centers = pixel_centers(grid, attrs.dtype)
    px, py = centers[:, None, 0, :], centers[:, None, 1, :]  # [T, 1, PIX]
    n_chunks = (jnp.max(counts, initial=0) + chunk - 1) // chunk
    slots = jnp.arange(chunk)[None, :, None]
    pix = grid.pixels_per_tile

    def body(state):
        c, trans, acc, done, last = state
        rows = _chunk(attrs, c * chunk, chunk)
        alpha, _, _, _ = gaussian_alpha(rows, px, py, rules)  # [T, C, PIX]
        alpha = jnp.where(c * chunk + slots < counts[:, None, None], alpha, 0.0)
        after = trans[:, None, :] * jnp.cumprod(1.0 - alpha, axis=1)  # transmittance after each entry
        keep = (after > rules.min_transmittance) & ~done[:, None, :]  # a prefix of the chunk
        before = jnp.concatenate([trans[:, None, :], after[:, :-1]], axis=1)
        w = jnp.where(keep, alpha * before, 0.0)  # [T, C, PIX]
        values = jnp.stack(rows[6:10], 1)[..., 0]  # [T, 4, C] colour and depth
        acc = acc + jnp.einsum("tvc,tcp->tvp", values, w)
        stops = ~done & (after[:, -1] <= rules.min_transmittance)
        last = jnp.where(stops, c * chunk + jnp.sum(keep, axis=1, dtype=last.dtype), last)
        trans = jnp.where(jnp.any(keep, 1), jnp.min(jnp.where(keep, after, jnp.inf), 1), trans)
        return c + 1, trans, acc, done | stops, last

    init = (
        jnp.int32(0),
        jnp.ones((num_tiles, pix), attrs.dtype),
        jnp.zeros((num_tiles, 4, pix), attrs.dtype),
        jnp.zeros((num_tiles, pix), bool),
        jnp.broadcast_to(counts[:, None], (num_tiles, pix)).astype(jnp.int32),
    )
    if autodiff:
        (_, trans, acc, _, last), _ = jax.lax.scan(lambda s, _: (body(s), None), init, length=capacity // chunk)
    else:
        _, trans, acc, _, last = jax.lax.while_loop(lambda s: (s[0] < n_chunks) & ~jnp.all(s[3]), body, init)
    out = jnp.concatenate([acc, trans[:, None, :]], axis=1)  # [T, 5, PIX]
    return out, last


def xla_backward(attrs, counts, out, last, d_out, grid: TileGrid, rules: CompositingRules, chunk: int = 32):
    num_tiles, _, capacity = attrs.shape
    centers = pixel_centers(grid, attrs.dtype)
    px, py = centers[:, None, 0, :], centers[:, None, 1, :]
    slots = jnp.arange(chunk)[None, :, None]
    n_chunks = (jnp.max(counts, initial=0) + chunk - 1) // chunk
    d_values = d_out[:, :4]  # [T, 4, PIX] cotangents of colour and depth
    trans_final = out[:, 4]
    # S: the cotangent-weighted sum of everything behind the current entry, incl. the final transmittance.
    tail0 = d_out[:, 4] * trans_final

    def body(state):
        c, trans, tail, grads = state
        rows = _chunk(attrs, c * chunk, chunk)
        alpha, falloff, dx, dy = gaussian_alpha(rows, px, py, rules)  # [T, C, PIX]
        index = c * chunk + slots
        alpha = jnp.where((index < counts[:, None, None]) & (index < last[:, None, :]), alpha, 0.0)
        one_minus = 1.0 - alpha
        start = trans / jnp.prod(one_minus, axis=1)  # transmittance before the chunk
        before = start[:, None, :] * jnp.concatenate(
            [jnp.ones_like(one_minus[:, :1]), jnp.cumprod(one_minus, axis=1)[:, :-1]], axis=1
        )
        w = alpha * before  # [T, C, PIX]
        values = jnp.stack(rows[6:10], 1)[..., 0]  # [T, 4, C]
        v = jnp.einsum("tvp,tvc->tcp", d_values, values)  # [T, C, PIX]
        vw = v * w
        behind = tail[:, None, :] + jnp.flip(jnp.cumsum(jnp.flip(vw, 1), 1), 1) - vw  # S_k
        d_alpha = jnp.where(alpha > 0, before * v - behind / one_minus, 0.0)
        d_geom = alpha_grads(d_alpha, alpha, falloff, dx, dy, rows, rules)
        d_geom = jnp.stack([jnp.sum(g, -1) for g in d_geom], 1)  # [T, 6, C]
        d_vals = jnp.einsum("tvp,tcp->tvc", d_values, w)  # [T, 4, C]
        block = jnp.concatenate([d_geom, d_vals], 1)  # [T, A, C]
        grads = jax.lax.dynamic_update_slice_in_dim(grads, block, c * chunk, axis=2)
        return c - 1, start, tail + jnp.sum(vw, 1), grads

    init = (n_chunks - 1, trans_final, tail0, jnp.zeros_like(attrs))
    _, _, _, grads = jax.lax.while_loop(lambda s: s[0] >= 0, body, init)
    return grads


# ----------------------------------------------------------------------------------------------------
# The differentiable entry point.


def _backend_fns(backend: str):
    if backend == "xla":
        return xla_forward, xla_backward
    if backend == "pallas":
        from headsup_jax.render import pallas_composite

        return pallas_composite.pallas_forward, pallas_composite.pallas_backward
    raise ValueError(f"unknown compositing backend {backend!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _composite_custom_vjp(attrs, counts, grid: TileGrid, rules: CompositingRules, backend: str):
    return _backend_fns(backend)[0](attrs, counts, grid, rules)[0]


def _composite_fwd(attrs, counts, grid, rules, backend):
    out, last = _backend_fns(backend)[0](attrs, counts, grid, rules)
    return out, (attrs, counts, out, last)


def _composite_bwd(grid, rules, backend, residuals, d_out):
    attrs, counts, out, last = residuals
    grads = _backend_fns(backend)[1](attrs, counts, out, last, d_out, grid, rules)
    return grads, None


_composite_custom_vjp.defvjp(_composite_fwd, _composite_bwd)


def composite(attrs, counts, grid: TileGrid, rules: CompositingRules, backend: str):
    """Composites packed tile lists. attrs [T, A, K], counts [T] -> out [T, 5, PIX] (see module doc).

    backend: "xla" or "pallas" (custom VJP), or "xla_autodiff" (plain autodiff, for comparison only).
    """
    if backend == "xla_autodiff":
        return xla_forward(attrs, counts, grid, rules, autodiff=True)[0]
    return _composite_custom_vjp(attrs, counts, grid, rules, backend)
