"""Rasterising UV triangles onto an R x R texel grid: triangle index and barycentrics per texel.

Texel (i, j) (row i from the top, column j) has its centre at u = (j + 0.5) / R, v = 1 - (i + 0.5) / R.
A texel is *exact* when its centre lies in a triangle (barycentrics >= 0). With `conservative=True`
texels whose centre lies within half a texel diagonal of a triangle (so the texel square may touch
it) are added too, bound to the closest point of the closest triangle: a one-texel ring that closes
cracks along chart borders and seams. Vectorised NumPy, chunked to bound memory.
"""
from __future__ import annotations

import numpy as np

RING_RADIUS = np.sqrt(0.5)  # texels: half the diagonal of a texel


def _cross(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def ragged_ranges(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts [N]: (owner, k) listing k = 0..counts[n]-1 for every n, flattened. [sum(counts)] each"""
    owner = np.repeat(np.arange(len(counts)), counts)
    return owner, np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def _candidates(p: np.ndarray, R: int, margin: int):
    """Texels in each triangle's bounding box (grown by `margin`). p: [F, 3, 2] texel coords."""
    lo = np.clip(np.ceil(p.min(1) - margin), 0, R - 1).astype(np.int64)  # [F, 2] (x=j, y=i)
    hi = np.clip(np.floor(p.max(1) + margin), 0, R - 1).astype(np.int64)
    w, h = np.maximum(hi[:, 0] - lo[:, 0] + 1, 0), np.maximum(hi[:, 1] - lo[:, 1] + 1, 0)
    tri, k = ragged_ranges(w * h)
    return tri, lo[tri, 1] + k // w[tri], lo[tri, 0] + k % w[tri]


def _closest(q, a, b, c):
    """Barycentrics of the point of triangle abc closest to q, and the distance. q, a, b, c: [N, 2]"""
    d = _cross(b - a, c - a)
    bary = np.stack([_cross(b - q, c - q), _cross(c - q, a - q), _cross(a - q, b - q)], -1) / d[:, None]
    inside = bary.min(-1) >= -1e-9  # centres on a shared edge count as inside
    best_dist = np.full(len(q), np.inf)
    best_bary = bary.copy()
    corners = (a, b, c)
    for k in range(3):
        s, e = corners[k], corners[(k + 1) % 3]
        t = np.clip(np.sum((q - s) * (e - s), -1) / np.maximum(np.sum((e - s) ** 2, -1), 1e-30), 0, 1)
        dist = np.linalg.norm(s + t[:, None] * (e - s) - q, axis=-1)
        better = ~inside & (dist < best_dist)
        edge_bary = np.zeros((len(q), 3))
        edge_bary[:, k], edge_bary[:, (k + 1) % 3] = 1 - t, t
        best_bary = np.where(better[:, None], edge_bary, best_bary)
        best_dist = np.where(better, dist, best_dist)
    return np.where(inside[:, None], bary, best_bary), np.where(inside, 0.0, best_dist), inside, bary.min(-1)


def rasterize_uv(tri_uv: np.ndarray, resolution: int, conservative: bool = True, chunk: int = 1 << 20):
    """Returns (triangle [R, R] int32, -1 where empty; barycentrics [R, R, 3] float32; exact [R, R] bool;
    mask [R, R] bool). tri_uv: [F, 3, 2] in [0, 1]^2; triangles with zero UV area are ignored."""
    R = resolution
    p = np.stack([tri_uv[..., 0] * R - 0.5, (1 - tri_uv[..., 1]) * R - 0.5], -1).astype(np.float64)  # [F, 3, 2]
    usable = np.flatnonzero(np.abs(_cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])) > 1e-12)
    margin = 1 if conservative else 0
    best_score = np.full(R * R, np.inf)
    best_tri = np.full(R * R, -1, np.int64)
    best_bary = np.zeros((R * R, 3))
    best_exact = np.zeros(R * R, bool)
    area = np.prod(np.ptp(p[usable], axis=1) + 2 * margin + 2, -1)  # bounding-box texels, over-estimated
    chunk_id = (np.cumsum(area) - area) // chunk
    for ids in np.split(usable, np.flatnonzero(np.diff(chunk_id)) + 1):
        tri, i, j = _candidates(p[ids], R, margin)
        q = np.stack([j, i], -1).astype(np.float64)
        a, b, c = (p[ids][tri, k] for k in range(3))
        bary, dist, inside, min_bary = _closest(q, a, b, c)
        score = np.where(inside, -min_bary, dist)  # exact hits first, deepest inside wins ties on edges
        keep = inside | (dist <= RING_RADIUS)
        tri, i, j, bary, score, inside = tri[keep], i[keep], j[keep], bary[keep], score[keep], inside[keep]
        texel = i * R + j
        order = np.lexsort((score, texel))
        first = order[np.r_[True, texel[order][1:] != texel[order][:-1]]]
        texel, better = texel[first], score[first] < best_score[texel[first]]
        sel = first[better]
        best_score[texel[better]] = score[sel]
        best_tri[texel[better]] = ids[tri[sel]]
        best_bary[texel[better]] = bary[sel]
        best_exact[texel[better]] = inside[sel]
    mask = best_tri >= 0
    bary = np.clip(best_bary, 0, 1)
    bary = np.where(mask[:, None], bary / np.maximum(bary.sum(-1, keepdims=True), 1e-30), 0)
    return (best_tri.reshape(R, R).astype(np.int32), bary.reshape(R, R, 3).astype(np.float32),
            best_exact.reshape(R, R), mask.reshape(R, R))
