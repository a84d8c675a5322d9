"""Tile binning with static shapes: (tile, depth)-sorted Gaussian lists of fixed capacity per tile.

Every visible Gaussian is listed in each tile its screen rectangle (`means2d +- radii`) touches. The
pairs are sorted by (tile, depth) and cut into one list per tile of `tile_capacity` entries. Two
capacities bound memory: `max_pairs` (all (tile, Gaussian) pairs of the image) and `tile_capacity`.
What does not fit is dropped from the far end of the depth order and counted, never silently.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from headsup_jax.render.types import Projection


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Static tiling of an image."""

    width: int = dataclasses.field(metadata=dict(static=True))
    height: int = dataclasses.field(metadata=dict(static=True))
    tile_size: int = dataclasses.field(default=16, metadata=dict(static=True))

    @property
    def tiles_x(self) -> int:
        return math.ceil(self.width / self.tile_size)

    @property
    def tiles_y(self) -> int:
        return math.ceil(self.height / self.tile_size)

    @property
    def num_tiles(self) -> int:
        return self.tiles_x * self.tiles_y

    @property
    def pixels_per_tile(self) -> int:
        return self.tile_size * self.tile_size


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TileBins:
    """Per-tile, depth-ordered Gaussian lists."""

    ids: jax.Array  # [T, K] int32 Gaussian index, 0 where padded
    counts: jax.Array  # [T] int32 entries used, <= K
    dropped_pairs: jax.Array  # [] int32 (tile, Gaussian) pairs that did not fit either capacity
    total_pairs: jax.Array  # [] int32 pairs before any capacity
    max_tile_count: jax.Array  # [] int32 longest tile list before capping


def tile_rects(proj: Projection, grid: TileGrid) -> jax.Array:
    """Inclusive tile rectangle [x0, y0, x1, y1] of each Gaussian; empty (x1 < x0) when invisible. [P, 4]"""
    lo = jnp.floor((proj.means2d - proj.radii) / grid.tile_size).astype(jnp.int32)
    hi = jnp.floor((proj.means2d + proj.radii) / grid.tile_size).astype(jnp.int32)
    upper = jnp.array([grid.tiles_x - 1, grid.tiles_y - 1], jnp.int32)
    lo, hi = jnp.clip(lo, 0, upper), jnp.clip(hi, 0, upper)
    hi = jnp.where(proj.visible[:, None], hi, lo - 1)
    return jnp.concatenate([lo, hi], -1)


def bin_gaussians(proj: Projection, grid: TileGrid, max_pairs: int, tile_capacity: int) -> TileBins:
    """Builds the per-tile lists (all shapes static: [T, tile_capacity]).

    Pairs are enumerated nearest Gaussian first, so the cut at `max_pairs` drops the farthest Gaussians'
    pairs (the one straddling the cut loses its last tiles in row-major order); the cut at `tile_capacity`
    drops the far end of each tile's list."""
    rects = tile_rects(proj, grid)  # [P, 4]
    span = jnp.maximum(rects[:, 2:] - rects[:, :2] + 1, 0)  # [P, 2] tiles in x, y
    order = jnp.argsort(jnp.where(proj.visible, proj.depths, jnp.inf), stable=True).astype(jnp.int32)  # [P]
    n_tiles = (span[:, 0] * span[:, 1])[order]  # [P] by depth rank
    ends = jnp.cumsum(n_tiles)  # [P] inclusive
    total = ends[-1] if n_tiles.shape[0] else jnp.int32(0)

    pair = jnp.arange(max_pairs, dtype=jnp.int32)
    rank = jnp.minimum(jnp.searchsorted(ends, pair, side="right"), n_tiles.shape[0] - 1).astype(jnp.int32)
    local = pair - (ends[rank] - n_tiles[rank])
    gid = order[rank]
    width = jnp.maximum(span[gid, 0], 1)
    tx = rects[gid, 0] + local % width
    ty = rects[gid, 1] + local // width
    tile = jnp.where(pair < total, ty * grid.tiles_x + tx, grid.num_tiles)  # sentinel sorts last
    tile, rank = jax.lax.sort((tile, rank), num_keys=2)  # by tile, then depth rank (a total order)
    gid = order[rank]

    first = jnp.searchsorted(tile, jnp.arange(grid.num_tiles + 1, dtype=jnp.int32), side="left")
    counts_all = (first[1:] - first[:-1]).astype(jnp.int32)  # [T] pairs that made it into max_pairs
    slot = jnp.arange(tile_capacity, dtype=jnp.int32)
    index = first[:-1, None] + slot  # [T, K]
    valid = slot < counts_all[:, None]
    ids = jnp.where(valid, gid[jnp.minimum(index, max_pairs - 1)], 0)
    counts = jnp.minimum(counts_all, tile_capacity)
    dropped = jnp.maximum(total - max_pairs, 0) + jnp.sum(counts_all - counts)
    return TileBins(
        ids=ids.astype(jnp.int32),
        counts=counts,
        dropped_pairs=dropped.astype(jnp.int32),
        total_pairs=total.astype(jnp.int32),
        max_tile_count=jnp.max(counts_all).astype(jnp.int32),
    )
