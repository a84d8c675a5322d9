"""`HeadTemplate`: a triangle mesh with UVs, regions, blendshapes and landmarks, checked on construction."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from headsup_jax.errors import TemplateError


@dataclasses.dataclass(frozen=True, eq=False)
class HeadTemplate:
    """A neutral head in metres, canonical frame: +y up, +z out of the face, +x the subject's left.

    A head is `vertices + identity_coeffs @ identity_deltas + expression_coeffs @ expression_deltas`
    (see `headsup_jax.geometry.rig.deform`). `regions` maps a name to the indices of its faces.
    """

    vertices: np.ndarray  # [V, 3] float32 metres
    faces: np.ndarray  # [F, 3] int32, counter-clockwise seen from outside
    uvs: np.ndarray  # [U, 2] float32
    face_uvs: np.ndarray  # [F, 3] int32 indices into uvs
    regions: dict  # name -> [F_r] int32 face indices
    expression_names: tuple  # [E] ARKit names
    expression_deltas: np.ndarray  # [E, V, 3] float32 metres
    identity_deltas: np.ndarray | None = None  # [I, V, 3] float32 metres, coefficients ~ N(0, 1)
    landmarks: np.ndarray | None = None  # [L] int32 vertex indices (Multi-PIE 68 where known)
    name: str = "template"

    def __post_init__(self):
        validate(self)

    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]

    def region_of_faces(self) -> np.ndarray:
        """Position in `list(regions)` of each face's region, -1 for faces in none. [F]"""
        out = np.full(self.faces.shape[0], -1, np.int32)
        for k, idx in enumerate(self.regions.values()):
            out[idx] = k
        return out

    def digest(self) -> str:
        """A hash of the geometry the atlas depends on (vertices, faces, UVs, regions)."""
        h = hashlib.sha256()
        for a in (self.vertices, self.faces, self.uvs, self.face_uvs):
            h.update(np.ascontiguousarray(a).tobytes())
        for name, idx in self.regions.items():
            h.update(name.encode())
            h.update(np.ascontiguousarray(idx, np.int64).tobytes())
        return h.hexdigest()[:16]


def _fail(template_name: str, field: str, message: str):
    raise TemplateError(f"{template_name}: {field}: {message}")


def _check_finite(name: str, field: str, a: np.ndarray) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        first = np.argwhere(bad)[0].tolist()
        _fail(name, field, f"{int(bad.sum())} non-finite values (first at index {first})")


def _check_shape(name: str, field: str, a, shape: tuple) -> None:
    a = np.asarray(a)
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
        _fail(name, field, f"shape {list(a.shape)}, expected {want}")


def validate(t: HeadTemplate) -> None:
    """Raises TemplateError naming the template and the field when the template is inconsistent."""
    n = t.name
    _check_shape(n, "vertices", t.vertices, (None, 3))
    V = t.vertices.shape[0]
    _check_shape(n, "faces", t.faces, (None, 3))
    F = t.faces.shape[0]
    _check_shape(n, "uvs", t.uvs, (None, 2))
    _check_shape(n, "face_uvs", t.face_uvs, (F, 3))
    for field, a in (("vertices", t.vertices), ("uvs", t.uvs)):
        if a.dtype != np.float32:
            _fail(n, field, f"dtype {a.dtype}, expected float32")
        _check_finite(n, field, a)
    for field, a, count in (("faces", t.faces, V), ("face_uvs", t.face_uvs, t.uvs.shape[0])):
        if a.dtype != np.int32:
            _fail(n, field, f"dtype {a.dtype}, expected int32")
        if F and (a.min() < 0 or a.max() >= count):
            bad = int(np.argwhere((a < 0) | (a >= count))[0, 0])
            _fail(n, field, f"face {bad} references index {a[bad].tolist()} but there are {count}")
    f = t.faces
    repeated = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 0] == f[:, 2])
    if repeated.any():
        bad = int(np.flatnonzero(repeated)[0])
        _fail(n, "faces", f"face {bad} repeats a vertex: {t.faces[bad].tolist()}")
    for region, idx in t.regions.items():
        idx = np.asarray(idx)
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= F)):
            _fail(n, f"regions[{region!r}]", f"face indices must be a 1-D array within [0, {F})")
    E = len(t.expression_names)
    _check_shape(n, "expression_deltas", t.expression_deltas, (E, V, 3))
    if len(set(t.expression_names)) != E:
        _fail(n, "expression_names", "duplicate names")
    deltas = [("expression_deltas", t.expression_deltas)]
    if t.identity_deltas is not None:
        _check_shape(n, "identity_deltas", t.identity_deltas, (None, V, 3))
        deltas.append(("identity_deltas", t.identity_deltas))
    for field, a in deltas:
        if a.dtype != np.float32:
            _fail(n, field, f"dtype {a.dtype}, expected float32")
        _check_finite(n, field, a)
    if t.landmarks is not None:
        lm = np.asarray(t.landmarks)
        if lm.ndim != 1 or (lm.size and (lm.min() < 0 or lm.max() >= V)):
            _fail(n, "landmarks", f"vertex indices must be a 1-D array within [0, {V})")


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals. [V, 3]"""
    p = vertices[faces]  # [F, 3, 3]
    fn = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])  # [F, 3], length = 2 * area
    n = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
