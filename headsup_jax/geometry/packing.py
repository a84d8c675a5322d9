"""Splitting selected UV triangles into charts and packing the charts into one square atlas.

A chart is a set of triangles connected through shared UV indices and wound the same way in UV (so
mirrored or folded pieces become charts of their own); triangles that still overlap another triangle
of their chart (a fold within one winding) are detached into one-triangle charts. Each chart's UV
bounding box is scaled so that all charts get the same texel density on the surface (rectangle area
proportional to 3D area) and the rectangles are skyline-packed (bottom-left), with a gutter between
them, into the unit square at the largest scale that fits. Charts are only scaled and translated,
never rotated.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from headsup_jax.geometry.uv_raster import ragged_ranges


def signed_uv_area(tri_uv: np.ndarray) -> np.ndarray:
    """Signed area of each UV triangle (positive when counter-clockwise). [F]"""
    e1, e2 = tri_uv[:, 1] - tri_uv[:, 0], tri_uv[:, 2] - tri_uv[:, 0]
    return 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])


def _candidate_pairs(tri_uv: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Pairs of triangles of the same group whose bounding boxes share a grid cell. [P, 2]"""
    lo, hi = tri_uv.min(1), tri_uv.max(1)
    cell = max(2 * np.median(hi - lo), np.max(hi - lo) / 64, 1e-12)
    c_lo, c_hi = np.floor(lo / cell).astype(np.int64), np.floor(hi / cell).astype(np.int64)
    span = c_hi - c_lo + 1  # [F, 2] cells covered in x and y
    tri, k = ragged_ranges(span[:, 0] * span[:, 1])
    key = np.stack([group[tri], c_lo[tri, 0] + k % span[tri, 0], c_lo[tri, 1] + k // span[tri, 0]], -1)
    _, cell_id = np.unique(key, axis=0, return_inverse=True)
    order = np.argsort(cell_id, kind="stable")
    tri, cell_id = tri[order], cell_id.ravel()[order]
    size = np.bincount(cell_id)
    start = np.cumsum(size) - size
    after = (start + size)[cell_id] - np.arange(len(tri)) - 1  # later members of the same cell
    first, step = ragged_ranges(after)
    pairs = np.stack([tri[first], tri[first + 1 + step]], -1)
    return np.unique(np.sort(pairs, 1), axis=0) if len(pairs) else np.zeros((0, 2), np.int64)


def overlapping(tri_uv: np.ndarray, group: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Triangles whose interior overlaps another triangle of the same group (separating axes; shared
    edges and corners do not count). [F] bool"""
    pairs = _candidate_pairs(tri_uv, group)
    a, b = tri_uv[pairs[:, 0]], tri_uv[pairs[:, 1]]
    separated = np.zeros(len(pairs), bool)
    for t in (a, b):
        for k in range(3):
            edge = t[:, (k + 1) % 3] - t[:, k]
            axis = np.stack([-edge[:, 1], edge[:, 0]], -1)  # [P, 2]
            pa, pb = np.einsum("pkc,pc->pk", a, axis), np.einsum("pkc,pc->pk", b, axis)
            gap = np.maximum(pb.min(1) - pa.max(1), pa.min(1) - pb.max(1))
            separated |= gap >= -tol * np.linalg.norm(axis, axis=-1)
    out = np.zeros(len(tri_uv), bool)
    out[pairs[~separated].ravel()] = True
    return out


def chart_labels(face_uvs: np.ndarray, tri_uv: np.ndarray) -> np.ndarray:
    """Chart index per triangle: connected through shared UV indices, split by winding, folds
    detached. [F]"""
    flipped = signed_uv_area(tri_uv) < 0
    n = int(face_uvs.max()) + 1 if face_uvs.size else 0
    node = face_uvs + n * flipped[:, None]  # the two windings never share a node  # [F, 3]
    rows = np.concatenate([node[:, 0], node[:, 1]])
    cols = np.concatenate([node[:, 1], node[:, 2]])
    graph = sp.coo_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(2 * n, 2 * n))
    _, label = connected_components(graph, directed=False)
    _, chart = np.unique(label[node[:, 0]], return_inverse=True)
    folded = overlapping(tri_uv, chart)
    chart[folded] = chart.max() + 1 + np.arange(folded.sum())
    return np.unique(chart, return_inverse=True)[1].astype(np.int32)


def _skyline(widths, heights, order, bin_width):
    """Bottom-left skyline packing in `order`: each rectangle goes where its top ends lowest (then
    leftmost). Returns (x, y, total height)."""
    x, y = np.zeros(len(widths)), np.zeros(len(widths))
    sky = [(0.0, 0.0)]  # (start x, height) of each skyline segment, sorted by x; segment k ends at k+1
    for i in order:
        w, best = widths[i], None
        for k, (sx, _) in enumerate(sky):
            if sx + w > bin_width + 1e-12:
                break
            top = max(h for j, (tx, h) in enumerate(sky) if tx < sx + w - 1e-12 and
                      (j + 1 == len(sky) or sky[j + 1][0] > sx + 1e-12))
            if best is None or top + heights[i] < best[0] - 1e-12:
                best = (top + heights[i], sx, top)
        if best is None:
            return x, y, np.inf
        _, sx, top = best
        x[i], y[i] = sx, top
        end = sx + w
        after = [s for s in sky if s[0] >= end - 1e-12]
        covered = [s for s in sky if s[0] < end - 1e-12]
        tail = [(end, covered[-1][1])] if (not after or after[0][0] > end + 1e-12) and end < bin_width - 1e-12 else []
        merged = []
        for seg in [s for s in sky if s[0] < sx - 1e-12] + [(sx, top + heights[i])] + tail + after:
            if not merged or abs(merged[-1][1] - seg[1]) > 1e-12:
                merged.append(seg)
        sky = merged
    return x, y, max(h for _, h in sky)


def pack_charts(tri_uv: np.ndarray, area3d: np.ndarray, chart: np.ndarray, gutter: float):
    """Packs the charts into [0, 1]^2. Returns (packed UVs [F, 3, 2], rectangles [C, 4] as x, y, w, h).

    tri_uv: [F, 3, 2] source UVs; area3d: [F] surface area; chart: [F] labels from `chart_labels`;
    gutter: empty space around each rectangle, in atlas units (e.g. 2 / resolution).
    """
    C = int(chart.max()) + 1
    lo = np.full((C, 2), np.inf)
    hi = np.full((C, 2), -np.inf)
    np.minimum.at(lo, chart, tri_uv.min(1))
    np.maximum.at(hi, chart, tri_uv.max(1))
    uv_area = np.bincount(chart, np.abs(signed_uv_area(tri_uv)), C)
    density = np.sqrt(np.bincount(chart, area3d, C) / np.maximum(uv_area, 1e-30))  # surface length per UV unit
    size = (hi - lo) * density[:, None]  # [C, 2] before the global scale
    keys = (size[:, 0] * size[:, 1], size[:, 1], size.max(1), size[:, 0])
    orders = [np.argsort(-key, kind="stable") for key in keys]

    def fits(k, order):
        w, h = k * size[:, 0] + gutter, k * size[:, 1] + gutter
        return w.max() <= 1 and _skyline(w, h, order, 1.0)[2] <= 1

    if not fits(0.0, orders[0]):
        raise ValueError(f"atlas: {C} charts do not fit even at zero size with gutter {gutter:.4g}; "
                         "raise the resolution or select fewer regions")
    best_k, best_order = -1.0, None
    for order in orders:  # the largest scale over a few orderings (area, height, longer side, width)
        lo_k, hi_k = 0.0, 1.0 / max(size.max(), 1e-30)
        for _ in range(40):
            mid = 0.5 * (lo_k + hi_k)
            lo_k, hi_k = (mid, hi_k) if fits(mid, order) else (lo_k, mid)
        if lo_k > best_k:
            best_k, best_order = lo_k, order
    k = best_k
    w, h = k * size[:, 0] + gutter, k * size[:, 1] + gutter
    x, y, _ = _skyline(w, h, best_order, 1.0)
    scale = (k * density)[chart][:, None, None]  # [F, 1, 1]
    offset = np.stack([x, y], -1) + 0.5 * gutter  # [C, 2]
    packed = (tri_uv - lo[chart][:, None]) * scale + offset[chart][:, None]
    return packed, np.stack([x, y, w, h], -1)
