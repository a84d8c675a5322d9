"""Minimal Wavefront OBJ reading and writing: positions, texture coordinates, polygons, groups."""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from headsup_jax.errors import TemplateError
from headsup_jax.fileio import write_text_atomic
from headsup_jax.limits import check_file_size


@dataclasses.dataclass(frozen=True)
class ObjMesh:
    vertices: np.ndarray  # [V, 3] float64
    uvs: np.ndarray  # [U, 2] float64
    faces: np.ndarray  # [F, 3] int32 (polygons split into fans)
    face_uvs: np.ndarray | None  # [F, 3] int32, None when the file has no texture indices
    groups: dict  # group or object name -> [F_g] int32 face indices


def _index(token: str, count: int, path, lineno: int, what: str) -> int:
    try:
        k = int(token)
    except ValueError:
        raise TemplateError(f"{path}:{lineno}: face: bad {what} index {token!r}") from None
    k = k - 1 if k > 0 else count + k  # OBJ is 1-based; negative indices count back from the end
    if not 0 <= k < count:
        plural = {"vertex": "vertices", "texture coordinate": "texture coordinates"}[what]
        raise TemplateError(f"{path}:{lineno}: face references {what} {token} but the file has {count} {plural} "
                         "so far")
    return k


def read_obj(path, require_faces: bool = True) -> ObjMesh:
    """Parses `path`; raises TemplateError naming the file, line and field for malformed content."""
    path = check_file_size(path)
    verts, uvs, faces, fuvs, group_of_face = [], [], [], [], []
    group, has_uv = "default", None
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            key = parts[0]
            if key in ("v", "vt"):
                n = 3 if key == "v" else 2
                try:
                    values = [float(x) for x in parts[1:1 + n]]
                except ValueError:
                    raise TemplateError(f"{path}:{lineno}: {key}: not a number in {line.strip()!r}") from None
                if len(values) < n:
                    raise TemplateError(f"{path}:{lineno}: {key}: expected {n} numbers, got {len(values)}")
                if not np.all(np.isfinite(values)):
                    raise TemplateError(f"{path}:{lineno}: {key}: non-finite value in {line.strip()!r}")
                (verts if key == "v" else uvs).append(values)
            elif key in ("g", "o"):
                group = parts[1] if len(parts) > 1 else "default"
            elif key == "f":
                corners = [c.split("/") for c in parts[1:]]
                if len(corners) < 3:
                    raise TemplateError(f"{path}:{lineno}: face has {len(corners)} corners, needs at least 3")
                this_uv = all(len(c) > 1 and c[1] for c in corners)
                if has_uv is None:
                    has_uv = this_uv
                elif has_uv != this_uv:
                    raise TemplateError(f"{path}:{lineno}: face {'has' if this_uv else 'lacks'} texture indices "
                                     f"while earlier faces {'lack' if this_uv else 'have'} them")
                vi = [_index(c[0], len(verts), path, lineno, "vertex") for c in corners]
                ti = [_index(c[1], len(uvs), path, lineno, "texture coordinate") for c in corners] if this_uv else []
                for k in range(1, len(corners) - 1):
                    faces.append([vi[0], vi[k], vi[k + 1]])
                    fuvs.append([ti[0], ti[k], ti[k + 1]] if this_uv else [0, 0, 0])
                    group_of_face.append(group)
    if not verts:
        raise TemplateError(f"{path}: no vertices ('v' lines)")
    if not faces and require_faces:
        raise TemplateError(f"{path}: no faces ('f' lines)")
    names = np.asarray(group_of_face)
    groups = {g: np.flatnonzero(names == g).astype(np.int32) for g in dict.fromkeys(group_of_face)}
    return ObjMesh(np.asarray(verts, np.float64), np.asarray(uvs, np.float64).reshape(-1, 2),
                   np.asarray(faces, np.int32).reshape(-1, 3), np.asarray(fuvs, np.int32) if has_uv else None, groups)


def write_obj(path, vertices, faces, uvs=None, face_uvs=None, groups=None) -> None:
    """Writes triangles in order (with texture indices when given), `g` lines where the group changes; atomic."""
    path = pathlib.Path(path)
    faces = np.asarray(faces)
    lines = [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in np.asarray(vertices, np.float64)]
    if uvs is not None:
        lines += [f"vt {u:.9g} {v:.9g}" for u, v in np.asarray(uvs, np.float64)]
    group_of_face = np.full(len(faces), "default", object)
    for name, idx in (groups or {}).items():
        group_of_face[np.asarray(idx)] = name
    current = None
    for i, (a, b, c) in enumerate(faces + 1):
        if group_of_face[i] != current:
            current = group_of_face[i]
            lines.append(f"g {current}")
        if face_uvs is None:
            lines.append(f"f {a} {b} {c}")
        else:
            ta, tb, tc = np.asarray(face_uvs)[i] + 1
            lines.append(f"f {a}/{ta} {b}/{tb} {c}/{tc}")
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_obj_vertices(path) -> np.ndarray:
    """Only the `v` lines of an OBJ, fast (for blendshape files of a known topology). [V, 3] float64"""
    path = check_file_size(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        rows = [line[2:] for line in f if line.startswith("v ")]
    try:
        v = np.array(" ".join(rows).split(), np.float64)
    except ValueError:
        raise TemplateError(f"{path}: v: a vertex line holds something that is not a number") from None
    if v.size % 3 or len(v) // 3 != len(rows):
        raise TemplateError(f"{path}: v: every vertex line must hold exactly 3 numbers")
    if not np.all(np.isfinite(v)):
        raise TemplateError(f"{path}: v: vertex {int(np.flatnonzero(~np.isfinite(v))[0]) // 3} is not finite")
    return v.reshape(-1, 3)
