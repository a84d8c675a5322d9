"""The UV atlas: which texel of the R x R grid is a Gaussian, and where it sits on the template.

`build_atlas` selects regions, packs their charts into one square (`packing`), rasterises the packed
triangles (`uv_raster`), and derives the template position and normal maps (the decoder's positional
prior). G = `atlas.count` valid texels = the number of Gaussians. Results are cached on disk by a hash
of the template geometry, the region selection and R.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pathlib
import tempfile

import numpy as np

from headsup_jax.geometry.packing import chart_labels, pack_charts
from headsup_jax.geometry.template import HeadTemplate, vertex_normals
from headsup_jax.geometry.uv_raster import rasterize_uv
from headsup_jax.limits import load_npz

# Regions used when none are given (ICT-FaceKit names; the procedural template uses the first two).
DEFAULT_REGIONS = ("face", "head_neck", "mouth_socket", "eyeball_left", "eyeball_right")
GUTTER_TEXELS = 2
CACHE_VERSION = 3


@dataclasses.dataclass(frozen=True, eq=False)
class UVAtlas:
    """Per-texel surface binding on an R x R grid (row i from the top; see `uv_raster`)."""

    resolution: int
    region_names: tuple  # selected regions; `region` indexes this tuple
    faces: np.ndarray  # [Fs] int32 template faces in the atlas
    face_vertices: np.ndarray  # [Fs, 3] int32 their vertex indices
    face_uvs: np.ndarray  # [Fs, 3, 2] float32 packed atlas UVs of their corners
    charts: np.ndarray  # [C, 4] float32 packed rectangles (x, y, w, h) in atlas units, gutter included
    triangle: np.ndarray  # [R, R] int32 template face index, -1 where invalid
    barycentric: np.ndarray  # [R, R, 3] float32
    mask: np.ndarray  # [R, R] bool, valid texels (exact + conservative ring)
    exact: np.ndarray  # [R, R] bool, texels whose centre lies in a triangle
    region: np.ndarray  # [R, R] int32, -1 where invalid
    position_map: np.ndarray  # [R, R, 3] float32 neutral template point (metres), 0 where invalid
    normal_map: np.ndarray  # [R, R, 3] float32 unit normal, 0 where invalid
    texel_size: float  # metres: mean surface length of a texel edge on the neutral template

    @property
    def count(self) -> int:
        """G, the number of valid texels (Gaussians)."""
        return int(self.texel_index.shape[0])

    @functools.cached_property
    def texel_index(self) -> np.ndarray:
        """Flat indices (i * R + j) of the valid texels, row-major. [G]"""
        return np.flatnonzero(self.mask.ravel())

    def texel_faces(self) -> np.ndarray:
        """Template face index of each valid texel. [G]"""
        return self.triangle.ravel()[self.texel_index]

    def texel_barycentrics(self) -> np.ndarray:
        return self.barycentric.reshape(-1, 3)[self.texel_index]  # [G, 3]

    def binding(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per valid texel: vertex indices [G, 3], barycentrics [G, 3], packed corner UVs [G, 3, 2]."""
        return self._binding

    @functools.cached_property
    def _binding(self):
        lookup = np.full(int(self.faces.max()) + 1, -1, np.int64)
        lookup[self.faces] = np.arange(len(self.faces))
        local = lookup[self.texel_faces()]
        return self.face_vertices[local], self.texel_barycentrics(), self.face_uvs[local]

    def gather(self, uv_map):
        """The valid texels of a UV map [..., R, R, A] (NumPy or JAX) -> [..., G, A]."""
        R = self.resolution
        flat = uv_map.reshape(*uv_map.shape[:-3], R * R, uv_map.shape[-1])
        return flat[..., self.texel_index, :]

    def scatter(self, values: np.ndarray, fill=0.0) -> np.ndarray:
        """Per-Gaussian values [G, A] back onto the grid [R, R, A] (NumPy)."""
        out = np.full((self.resolution ** 2, values.shape[-1]), fill, values.dtype)
        out[self.texel_index] = values
        return out.reshape(self.resolution, self.resolution, -1)


def select_faces(template: HeadTemplate, regions=None) -> tuple[tuple, np.ndarray, np.ndarray]:
    """(region names, face indices [Fs], region position per face [Fs]) of a region selection."""
    if not template.regions:
        if regions:
            raise ValueError(f"{template.name}: has no regions, cannot select {list(regions)}")
        return ("all",), np.arange(len(template.faces), dtype=np.int32), np.zeros(len(template.faces), np.int32)
    if regions is None:
        regions = [r for r in DEFAULT_REGIONS if r in template.regions] or list(template.regions)
    unknown = [r for r in regions if r not in template.regions]
    if unknown:
        raise ValueError(f"{template.name}: unknown regions {unknown}; valid regions: {', '.join(template.regions)}")
    faces = np.concatenate([template.regions[r] for r in regions]).astype(np.int32)
    which = np.concatenate([np.full(len(template.regions[r]), k, np.int32) for k, r in enumerate(regions)])
    faces, first = np.unique(faces, return_index=True)  # a face listed in two regions counts once
    return tuple(regions), faces, which[first]


def _compute(template: HeadTemplate, R: int, regions) -> dict:
    names, faces, face_region = select_faces(template, regions)
    tri_uv = template.uvs[template.face_uvs[faces]].astype(np.float64)  # [Fs, 3, 2]
    p = template.vertices[template.faces[faces]].astype(np.float64)  # [Fs, 3, 3]
    area3d = 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=-1)
    packed, charts = pack_charts(tri_uv, area3d, chart_labels(template.face_uvs[faces], tri_uv), GUTTER_TEXELS / R)
    e1, e2 = packed[:, 1] - packed[:, 0], packed[:, 2] - packed[:, 0]
    uv_area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum()
    local, bary, exact, mask = rasterize_uv(packed, R)
    triangle = np.where(mask, faces[np.maximum(local, 0)], -1).astype(np.int32)
    region = np.where(mask, face_region[np.maximum(local, 0)], -1).astype(np.int32)
    corners = template.faces[np.maximum(triangle, 0)]  # [R, R, 3]
    position = np.einsum("ijk,ijkc->ijc", bary, template.vertices[corners].astype(np.float64))
    vn = vertex_normals(template.vertices.astype(np.float64), template.faces)  # [V, 3]
    normal = np.einsum("ijk,ijkc->ijc", bary, vn[corners])
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    return dict(resolution=np.int64(R), region_names=np.asarray(names), faces=faces,
                face_vertices=template.faces[faces], face_uvs=packed.astype(np.float32),
                charts=charts.astype(np.float32), triangle=triangle, barycentric=bary, mask=mask, exact=exact,
                region=region, position_map=np.where(mask[..., None], position, 0).astype(np.float32),
                normal_map=np.where(mask[..., None], normal, 0).astype(np.float32),
                texel_size=np.float64(np.sqrt(area3d.sum() / uv_area) / R))


def _from_arrays(d) -> UVAtlas:
    fields = {f.name for f in dataclasses.fields(UVAtlas)}
    values = {k: d[k] for k in fields}
    values["resolution"] = int(values["resolution"])
    values["texel_size"] = float(values["texel_size"])
    values["region_names"] = tuple(str(x) for x in values["region_names"])
    return UVAtlas(**values)


def cache_key(template: HeadTemplate, resolution: int, regions=None) -> str:
    names, _, _ = select_faces(template, regions)
    h = hashlib.sha256(f"{template.digest()}|{resolution}|{','.join(names)}|v{CACHE_VERSION}".encode())
    return h.hexdigest()[:20]


def build_atlas(template: HeadTemplate, resolution: int, regions=None, cache_dir=None) -> UVAtlas:
    """The atlas of `template` at R = `resolution` (32 to 1024) over `regions` (default: DEFAULT_REGIONS
    present in the template, else all). With `cache_dir`, reuses `atlas_<hash>.npz` or writes it."""
    if not 32 <= int(resolution) <= 1024:
        raise ValueError(f"atlas resolution {resolution} is outside [32, 1024]")
    path = None
    if cache_dir is not None:
        path = pathlib.Path(cache_dir) / f"atlas_{cache_key(template, resolution, regions)}.npz"
        if path.exists():
            try:
                return _from_arrays(load_npz(path))
            except (OSError, KeyError, ValueError) as e:
                raise ValueError(f"{path}: unreadable atlas cache ({e}); delete it to rebuild") from e
    arrays = _compute(template, int(resolution), regions)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp.npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    return _from_arrays(arrays)
