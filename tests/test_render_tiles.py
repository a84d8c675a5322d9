"""Capacity overflow: what `max_pairs` and `tile_capacity` drop is the far end of the depth order, and the
image is the dense reference's of what is kept."""
import dataclasses

import jax
import numpy as np
import pytest

from headsup_jax.render import project, rasterize
from headsup_jax.render.cameras import look_at
from headsup_jax.render.scenes import random_scene
from reference import assert_images_match, reference_image

TILE = 16
CAM = look_at((0.0, 0.0, 1.0), 64, 48, 40.0)  # 4 x 3 tiles


def pairs_by_depth(proj, cam):
    """All (tile, Gaussian) pairs of visible Gaussians, nearest Gaussian first (ties by index), each
    Gaussian's tiles in row-major order. -> [N, 2] (tile, gaussian)"""
    m, r = np.asarray(proj.means2d, np.float64), np.asarray(proj.radii)
    depth, visible = np.asarray(proj.depths), np.asarray(proj.visible)
    tiles = np.array([-(-cam.width // TILE), -(-cam.height // TILE)])
    lo = np.clip(np.floor((m - r) / TILE).astype(int), 0, tiles - 1)
    hi = np.clip(np.floor((m + r) / TILE).astype(int), 0, tiles - 1)
    pairs = [(ty * tiles[0] + tx, i) for i in np.lexsort((np.arange(len(depth)), depth)) if visible[i]
             for ty in range(lo[i, 1], hi[i, 1] + 1) for tx in range(lo[i, 0], hi[i, 0] + 1)]
    return np.array(pairs).reshape(-1, 2)


def kept_lists(pairs, num_tiles, max_pairs, tile_capacity):
    """The README's rule: the first `max_pairs` pairs, then each tile's nearest `tile_capacity`: T lists of ids"""
    lists = [[] for _ in range(num_tiles)]
    for t, i in pairs[:max_pairs]:  # already nearest first, so each list is depth-ordered
        lists[t].append(i)
    return [ids[:tile_capacity] for ids in lists]


def tiled_reference(g, cam, lists):
    """Each tile's pixels from the dense reference of that tile's kept Gaussians (the others can only give
    alpha below 1/255 there, which the rules skip)."""
    out = [np.zeros((cam.height, cam.width) + s) for s in [(3,), (), ()]]
    tiles_x = -(-cam.width // TILE)
    for t, ids in enumerate(lists):
        keep = np.zeros(g.count, bool)
        keep[ids] = True
        ref = reference_image(dataclasses.replace(g, opacities=np.where(keep, g.opacities, 0.0)), cam)
        y, x = t // tiles_x * TILE, t % tiles_x * TILE
        for a, b in zip(out, ref):
            a[y:y + TILE, x:x + TILE] = b[y:y + TILE, x:x + TILE]
    return out


def faint_scene(n):
    """Gaussians of one to a few tiles each, faint enough that the far ones show through."""
    return random_scene(3, n, extent=0.3, scale_range=(0.005, 0.02), opacity_range=(0.02, 0.08))


def test_pair_capacity_drops_the_farthest_gaussians():
    """A cut at `max_pairs` between two Gaussians: the image is the reference's of the nearest ones."""
    g = faint_scene(400)
    proj = jax.jit(project)(g, CAM)
    pairs = pairs_by_depth(proj, CAM)
    starts = np.flatnonzero(np.diff(pairs[:, 1], prepend=-1))  # first pair of each Gaussian, nearest first
    cut = starts[len(starts) // 2]  # keep the nearest half of the visible Gaussians
    assert pairs[cut - 1, 1] != pairs[cut, 1]
    out = jax.jit(lambda g: rasterize(g, CAM, max_pairs=int(cut), tile_capacity=len(pairs)))(g)
    assert int(out.stats["total_pairs"]) == len(pairs) > 1.5 * int(out.stats["visible"])  # multi-tile
    assert int(out.stats["dropped_pairs"]) == len(pairs) - cut
    nearest = np.unique(pairs[:cut, 1])
    assert len(nearest) == len(starts) // 2
    assert_images_match(out, reference_image(jax.tree.map(lambda a: a[nearest], g), CAM))
    full = reference_image(g, CAM)[0]
    assert np.abs(full - np.asarray(out.rgb)).max() > 0.05  # the dropped half is visible


@pytest.mark.parametrize("max_pairs, tile_capacity, splits_a_gaussian",
                         [(10_000, 128, False), (1000, 128, False), (1001, 10_000, True)])
def test_capacities_drop_the_far_end(max_pairs, tile_capacity, splits_a_gaussian):
    """`tile_capacity` overflowing in several tiles, alone and after a `max_pairs` cut, and a `max_pairs` cut
    through a Gaussian's tiles: every tile shows the reference of exactly the pairs the README's rule keeps."""
    g = faint_scene(800)
    proj = jax.jit(project)(g, CAM)
    pairs = pairs_by_depth(proj, CAM)
    assert (max_pairs < len(pairs) and pairs[max_pairs - 1, 1] == pairs[max_pairs, 1]) == splits_a_gaussian
    lists = kept_lists(pairs, 12, max_pairs, tile_capacity)
    out = jax.jit(lambda g: rasterize(g, CAM, max_pairs=max_pairs, tile_capacity=tile_capacity))(g)
    assert int(out.stats["total_pairs"]) == len(pairs)
    assert int(out.stats["max_tile_count"]) == np.bincount(pairs[:max_pairs, 0]).max()
    assert int(out.stats["dropped_pairs"]) == len(pairs) - sum(map(len, lists)) > 0
    assert_images_match(out, tiled_reference(g, CAM, lists))
    assert np.abs(reference_image(g, CAM)[0] - np.asarray(out.rgb)).max() > 0.05  # the dropped pairs show


def test_one_overfull_tile_keeps_the_nearest():
    """300 Gaussians in a single 16x16 tile with room for 128: 172 pairs are dropped, and the image is
    that of the 128 nearest."""
    g = random_scene(1, 300, extent=0.02, scale_range=(0.002, 0.004), opacity_range=(0.05, 0.1))
    cam = look_at((0.0, 0.0, 1.0), 16, 16, 10.0)
    out = jax.jit(lambda g: rasterize(g, cam, tile_capacity=128))(g)
    assert int(out.stats["visible"]) == 300
    assert int(out.stats["max_tile_count"]) == 300
    assert int(out.stats["dropped_pairs"]) == 300 - 128
    nearest = np.argsort(np.asarray(project(g, cam).depths), kind="stable")[:128]
    assert_images_match(out, reference_image(jax.tree.map(lambda a: a[nearest], g), cam))
    out = jax.jit(lambda g: rasterize(g, cam, max_pairs=200))(g)
    assert int(out.stats["dropped_pairs"]) == 100 and int(out.stats["total_pairs"]) == 300
    nearest = np.argsort(np.asarray(project(g, cam).depths), kind="stable")[:200]
    assert_images_match(out, reference_image(jax.tree.map(lambda a: a[nearest], g), cam))
