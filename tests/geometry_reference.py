"""Independent float64 references for the geometry tests: 2D triangle overlap, mesh silhouettes,
point-in-triangle, and a fixture-free locator for the ICT archive."""
from __future__ import annotations

import os
import pathlib

import numpy as np

ICT = pathlib.Path(os.environ.get("HEADSUP_ICT_PATH") or
                   pathlib.Path(__file__).resolve().parents[1] / ".." / "shared/data/ict_facekit/ict_facekit.npz")
ICT_SKIP_REASON = f"ICT-FaceKit archive not found at {ICT} (set HEADSUP_ICT_PATH)"


def _cross2(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def overlapping_pairs(tri: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Pairs (i, j) of 2D triangles [F, 3, 2] whose interiors overlap (separating axis test; touching
    edges and corners do not count). Candidate pairs come from a uniform grid over bounding boxes."""
    lo, hi = tri.min(1), tri.max(1)
    cell = np.median(hi - lo) * 2 + 1e-12
    c_lo, c_hi = np.floor(lo / cell).astype(np.int64), np.floor(hi / cell).astype(np.int64)
    ids, keys = [], []
    for dx in range(int((c_hi - c_lo)[:, 0].max()) + 1):
        for dy in range(int((c_hi - c_lo)[:, 1].max()) + 1):
            ok = (c_lo[:, 0] + dx <= c_hi[:, 0]) & (c_lo[:, 1] + dy <= c_hi[:, 1])
            ids.append(np.flatnonzero(ok))
            keys.append((c_lo[ok, 0] + dx) * 1_000_003 + c_lo[ok, 1] + dy)
    ids, keys = np.concatenate(ids), np.concatenate(keys)
    order = np.lexsort((ids, keys))
    ids, keys = ids[order], keys[order]
    pairs = []
    for k in range(1, 64):
        same = keys[k:] == keys[:-k]
        if not same.any():
            break
        pairs.append(np.stack([ids[:-k][same], ids[k:][same]], -1))
    pairs = np.unique(np.sort(np.concatenate(pairs), 1), axis=0) if pairs else np.zeros((0, 2), int)
    a, b = tri[pairs[:, 0]], tri[pairs[:, 1]]
    separated = np.zeros(len(pairs), bool)
    for t in (a, b):
        for k in range(3):
            edge = t[:, (k + 1) % 3] - t[:, k]
            axis = np.stack([-edge[:, 1], edge[:, 0]], -1)
            pa, pb = np.einsum("nkc,nc->nk", a, axis), np.einsum("nkc,nc->nk", b, axis)
            scale = np.linalg.norm(axis, axis=-1) * (np.abs(a).max((1, 2)) + 1)
            gap = np.maximum(pb.min(1) - pa.max(1), pa.min(1) - pb.max(1))
            separated |= gap >= -tol * scale
    return pairs[~separated]


def mesh_silhouette(vertices, faces, world_to_cam, K, width, height) -> np.ndarray:
    """Pixels whose centre (j + .5, i + .5) falls in a projected triangle. [H, W] bool"""
    W2C, K = np.asarray(world_to_cam, np.float64), np.asarray(K, np.float64)
    pc = np.asarray(vertices, np.float64) @ W2C[:3, :3].T + W2C[:3, 3]
    pix = pc @ K.T
    tri = (pix[:, :2] / pix[:, 2:])[faces]  # [F, 3, 2]
    lo = np.clip(np.floor(tri.min(1)), 0, [width - 1, height - 1]).astype(np.int64)
    hi = np.clip(np.ceil(tri.max(1)), 0, [width - 1, height - 1]).astype(np.int64)
    w, h = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
    owner = np.repeat(np.arange(len(tri)), w * h)  # one entry per (triangle, pixel of its box)
    k = np.arange(owner.size) - np.repeat(np.cumsum(w * h) - w * h, w * h)
    x, y = lo[owner, 0] + k % w[owner], lo[owner, 1] + k // w[owner]
    q = np.stack([x + 0.5, y + 0.5], -1)
    a, b, c = tri[owner, 0], tri[owner, 1], tri[owner, 2]
    d = _cross2(b - a, c - a)
    ok = d != 0
    bary = np.stack([_cross2(b - q, c - q), _cross2(c - q, a - q), _cross2(a - q, b - q)], -1)[ok] / d[ok, None]
    img = np.zeros((height, width), bool)
    inside = bary.min(1) >= 0
    img[y[ok][inside], x[ok][inside]] = True
    return img


def texel_centres(resolution: int) -> np.ndarray:
    """UV of every texel centre, row i from the top. [R, R, 2]"""
    i, j = np.mgrid[0:resolution, 0:resolution]
    return np.stack([(j + 0.5) / resolution, 1 - (i + 0.5) / resolution], -1)


def barycentric(q, tri) -> np.ndarray:
    """Barycentric coordinates of 2D points q [N, 2] in triangles tri [N, 3, 2] (float64). [N, 3]"""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    d = _cross2(b - a, c - a)
    return np.stack([_cross2(b - q, c - q), _cross2(c - q, a - q), _cross2(a - q, b - q)], -1) / d[:, None]
