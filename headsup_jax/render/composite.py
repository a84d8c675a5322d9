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


def step_back(alpha, trans, tail, v):
    """Walks one list entry backwards.

    alpha: the entry's alpha (0 where it was skipped or past the pixel's stop); trans: transmittance
    after it; tail: cotangent-weighted sum of everything behind it; v: cotangent-weighted value (colour,
    depth) of the entry. -> (transmittance before it, its weight w, d loss / d alpha)."""
    one_minus = 1.0 - alpha
    before = trans / one_minus
    d_alpha = jnp.where(alpha > 0, before * v - tail / one_minus, 0.0)
    return before, alpha * before, d_alpha


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
# XLA backend: groups of tiles at once, each list walked entry by entry (as the Pallas kernel does).


TILE_GROUP = 64  # tiles composited together; groups run one after another, longest lists first
UNROLL = 8  # list entries per loop iteration (amortises the loop's overhead; divides the capacity)


def _in_tile_groups(fn, counts, *tile_arrays, group: int = TILE_GROUP):
    """Applies `fn(counts, *arrays)` to groups of tiles of similar list length, one group at a time.

    Sorting tiles by list length makes each group's loop as long as its own longest list (not the
    image's), and a group's working set stays small enough for the cache. Outputs return in tile order.
    """
    num_tiles = counts.shape[0]
    size = min(group, num_tiles)
    n_groups = -(-num_tiles // size)
    order = jnp.argsort(-counts)
    pad = n_groups * size - num_tiles

    def split(x):  # [T, ...] -> [n_groups, size, ...]
        x = jnp.concatenate([x[order], jnp.zeros((pad,) + x.shape[1:], x.dtype)])
        return x.reshape((n_groups, size) + x.shape[1:])

    def merge(y):  # [n_groups, size, ...] -> [T, ...]
        y = y.reshape((n_groups * size,) + y.shape[2:])[:num_tiles]
        return jnp.zeros_like(y).at[order].set(y)

    outs = jax.lax.map(lambda xs: fn(*xs), (split(counts),) + tuple(split(a) for a in tile_arrays))
    return jax.tree.map(merge, outs)


def _batch_as_tiles(fn):
    """`fn(counts [T], *tile arrays [T, ...])` -> a pytree of [T, ...] (tiles independent), vmapped by
    folding the batch into the tiles: under vmap it runs once on [B * T, ...]. Plain vmap would batch the
    list walks' while loops, which turns the backward's column writes into scatters that copy the whole
    [T, A, K] gradient at every entry (a vmapped backward ran 5-7x slower per view than one view)."""

    @jax.custom_batching.custom_vmap
    def folded(*arrays):
        return fn(*arrays)

    @folded.def_vmap
    def rule(axis_size, in_batched, *arrays):
        arrays = [a if batched else jnp.broadcast_to(a, (axis_size,) + a.shape)
                  for a, batched in zip(arrays, in_batched)]
        out = folded(*[a.reshape((-1,) + a.shape[2:]) for a in arrays])  # nested vmaps fold again
        out = jax.tree.map(lambda y: y.reshape((axis_size, -1) + y.shape[1:]), out)
        return out, jax.tree.map(lambda _: True, out)

    return folded


def xla_forward(attrs, counts, grid: TileGrid, rules: CompositingRules, autodiff: bool = False):
    """Forward pass over groups of tiles. With `autodiff=True` all tiles scan all K entries at once
    (static trip count) so that plain JAX autodiff can differentiate it; that stores per-entry
    intermediates (the baseline of the benchmark)."""
    centers = pixel_centers(grid, attrs.dtype)
    if autodiff:
        return _forward_tiles(counts, attrs, centers, rules=rules, autodiff=True)
    tiles = functools.partial(_in_tile_groups, functools.partial(_forward_tiles, rules=rules), group=TILE_GROUP)
    return _batch_as_tiles(tiles)(counts, attrs, centers)


def xla_backward(attrs, counts, out, last, d_out, grid: TileGrid, rules: CompositingRules):
    centers = pixel_centers(grid, attrs.dtype)
    tiles = functools.partial(_in_tile_groups, functools.partial(_backward_tiles, rules=rules), group=TILE_GROUP)
    return _batch_as_tiles(tiles)(counts, attrs, centers, out, last, d_out)


def _entry(attrs, k):
    """Attributes of entry k of every tile, in ROWS order, each [T, 1] (pixels broadcast last)."""
    column = jax.lax.dynamic_index_in_dim(attrs, k, axis=2, keepdims=False)  # [T, A]
    return [column[:, i, None] for i in range(NUM_ATTRS)]


def _forward_tiles(counts, attrs, centers, *, rules: CompositingRules, autodiff: bool = False):
    """Composites the lists of some tiles entry by entry. counts [T], attrs [T, A, K], centers [T, 2, PIX]."""
    num_tiles, _, capacity = attrs.shape
    px, py = centers[:, 0], centers[:, 1]  # [T, PIX]

    def entry(state):
        k, trans, acc, done, last = state
        e = _entry(attrs, k)
        alpha, _, _, _ = gaussian_alpha(e, px, py, rules)  # [T, PIX]
        alpha = jnp.where(k < counts[:, None], alpha, 0.0)
        after = trans * (1.0 - alpha)
        stops = ~done & (alpha > 0) & (after <= rules.min_transmittance)
        keep = ~done & ~stops
        w = jnp.where(keep, alpha * trans, 0.0)
        acc = acc + jnp.stack(e[6:10], 1) * w[:, None, :]  # [T, 4, PIX] colour and depth
        return k + 1, jnp.where(keep, after, trans), acc, done | stops, jnp.where(stops, k, last)

    def body(state):
        for _ in range(UNROLL):
            state = entry(state)
        return state

    pix = centers.shape[-1]
    init = (
        jnp.int32(0),
        jnp.ones((num_tiles, pix), attrs.dtype),
        jnp.zeros((num_tiles, 4, pix), attrs.dtype),
        jnp.zeros((num_tiles, pix), bool),
        jnp.zeros((num_tiles, pix), jnp.int32),
    )
    if autodiff:
        (_, trans, acc, done, last), _ = jax.lax.scan(lambda s, _: (body(s), None), init, length=capacity // UNROLL)
    else:
        n = jnp.max(counts, initial=0)
        _, trans, acc, done, last = jax.lax.while_loop(lambda s: (s[0] < n) & ~jnp.all(s[3]), body, init)
    last = jnp.where(done, last, counts[:, None])  # pixels that never stopped: the whole list
    return jnp.concatenate([acc, trans[:, None, :]], axis=1), last  # [T, 5, PIX], [T, PIX]


def _backward_tiles(counts, attrs, centers, out, last, d_out, *, rules: CompositingRules):
    """Cotangents of the attributes of some tiles, walking their lists back from the final transmittance."""
    del counts  # `last` bounds every pixel's list
    px, py = centers[:, 0], centers[:, 1]  # [T, PIX]
    d_values = d_out[:, :4]  # [T, 4, PIX] cotangents of colour and depth
    trans_final = out[:, 4]

    def entry(state):
        k, trans, tail, grads = state  # tail: cotangent-weighted sum of all behind entry k
        e = _entry(attrs, k)
        alpha, falloff, dx, dy = gaussian_alpha(e, px, py, rules)
        alpha = jnp.where(k < last, alpha, 0.0)
        v = jnp.sum(d_values * jnp.stack(e[6:10], 1), 1)  # [T, PIX]
        before, w, d_alpha = step_back(alpha, trans, tail, v)
        d_geom = alpha_grads(d_alpha, alpha, falloff, dx, dy, e, rules)
        column = jnp.concatenate([jnp.stack([jnp.sum(g, -1) for g in d_geom], 1),
                                  jnp.sum(d_values * w[:, None, :], -1)], 1)  # [T, A]
        grads = jax.lax.dynamic_update_index_in_dim(grads, column, k, axis=2)
        return k - 1, before, tail + v * w, grads

    def body(state):
        for _ in range(UNROLL):
            state = entry(state)
        return state

    # start at the end of the unrolled block holding the last entry any pixel used; entries past a pixel's
    # stop (and padding) have alpha 0 and leave everything unchanged
    end = -(-jnp.max(last, initial=0) // UNROLL) * UNROLL
    init = (end - 1, trans_final, d_out[:, 4] * trans_final, jnp.zeros_like(attrs))
    return jax.lax.while_loop(lambda s: s[0] >= 0, body, init)[3]


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
