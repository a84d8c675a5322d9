"""`rasterize`: one call from Gaussians and a camera to images (gsplat's `rasterization()` in JAX)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from headsup_jax.render.backend import default_backend
from headsup_jax.render.composite import CompositingRules, composite
from headsup_jax.render.projection import project
from headsup_jax.render.sh import sh_colors
from headsup_jax.render.tiles import TileGrid, bin_gaussians
from headsup_jax.render.types import Camera, Gaussians, RenderOutput

CAPACITY_ALIGN = 128  # tile lists are padded to this many entries (a lane width on TPU and GPU)


def default_capacities(num_gaussians: int, grid: TileGrid) -> tuple[int, int]:
    """(max_pairs, tile_capacity) used when the caller gives none: room for every Gaussian to touch
    8 tiles on average, and per tile a list of up to 2048 entries (or all Gaussians, if fewer)."""
    max_pairs = max(8 * num_gaussians, 4 * grid.num_tiles, CAPACITY_ALIGN)
    tile_capacity = min(max(num_gaussians, 1), 2048)
    return max_pairs, tile_capacity


def _untile(tiles: jax.Array, grid: TileGrid) -> jax.Array:
    """[T, C, PIX] -> [H, W, C]"""
    s = grid.tile_size
    x = tiles.reshape(grid.tiles_y, grid.tiles_x, tiles.shape[1], s, s)
    x = x.transpose(0, 3, 1, 4, 2).reshape(grid.tiles_y * s, grid.tiles_x * s, tiles.shape[1])
    return x[: grid.height, : grid.width]


def _empty_render(camera: Camera, background) -> RenderOutput:
    """The image of no Gaussians: the background (black without one), zero alpha and depth."""
    shape = (camera.height, camera.width)
    bg = jnp.zeros(3, jnp.float32) if background is None else jnp.asarray(background)
    zero = jnp.int32(0)
    stats = {"dropped_pairs": zero, "total_pairs": zero, "max_tile_count": zero, "visible": zero}
    return RenderOutput(rgb=jnp.broadcast_to(bg, shape + (3,)), alpha=jnp.zeros(shape), depth=jnp.zeros(shape),
                        stats=stats)


def rasterize(
    gaussians: Gaussians,
    camera: Camera,
    *,
    background: jax.Array | None = None,
    backend: str = "auto",
    sh_degree: int | None = None,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    tile_size: int = 16,
    max_pairs: int | None = None,
    tile_capacity: int | None = None,
    rules: CompositingRules = CompositingRules(),
) -> RenderOutput:
    """Renders `gaussians` seen by `camera`: rgb [H, W, 3], alpha [H, W], depth [H, W] and counters.

    Differentiable in the Gaussians' attributes and the background. `stats["dropped_pairs"]` counts
    (tile, Gaussian) pairs that did not fit `max_pairs` or `tile_capacity` (0 means exact).
    backend: "xla", "pallas", "auto" (see `backend.default_backend`), or "xla_autodiff" (plain autodiff through
    the XLA forward instead of the custom VJP; for comparisons). Batch with `jax.vmap`.
    """
    if gaussians.count == 0:
        return _empty_render(camera, background)
    grid = TileGrid(camera.width, camera.height, tile_size)
    default_pairs, default_capacity = default_capacities(gaussians.count, grid)
    max_pairs = max_pairs or default_pairs
    capacity = tile_capacity or default_capacity
    capacity = -(-capacity // CAPACITY_ALIGN) * CAPACITY_ALIGN
    backend = default_backend() if backend == "auto" else backend

    proj = project(gaussians, camera, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
                   alpha_min=rules.min_alpha)
    colors = sh_colors(gaussians, camera.position, sh_degree)  # [P, 3]
    bins = bin_gaussians(proj, grid, max_pairs, capacity)
    packed = jnp.concatenate(
        [proj.means2d, proj.conics, gaussians.opacities[:, None], colors, proj.depths[:, None]], -1
    )  # [P, A] in the order of composite.ROWS
    valid = jnp.arange(capacity)[None, :] < bins.counts[:, None]  # [T, K]
    attrs = jnp.where(valid[..., None], packed[bins.ids], 0.0).transpose(0, 2, 1)  # [T, A, K]
    image = _untile(composite(attrs, bins.counts, grid, rules, backend), grid)  # [H, W, 5]

    transmittance = image[..., 4]
    rgb = image[..., :3]
    if background is not None:
        rgb = rgb + transmittance[..., None] * jnp.asarray(background, rgb.dtype)
    stats = {
        "dropped_pairs": bins.dropped_pairs,
        "total_pairs": bins.total_pairs,
        "max_tile_count": bins.max_tile_count,
        "visible": jnp.sum(proj.visible).astype(jnp.int32),
    }
    return RenderOutput(rgb=rgb, alpha=1.0 - transmittance, depth=image[..., 3], stats=stats)
