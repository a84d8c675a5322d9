"""Loading head templates: ICT-FaceKit (archive or OBJ folder), FLAME, generic OBJ + blendshape folder.

`load_template(spec)` takes "procedural", "ict" (the shared archive), "flame:MODEL[,UV_OBJ]", a path to
an ICT .npz archive, a path to an ICT-FaceKit folder, or "HEAD.obj[,BLENDSHAPE_DIR]". Every loader
converts to metres and validates topology, naming the file and field of anything wrong.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from headsup_jax.errors import TemplateError, TemplateNotFoundError
from headsup_jax.geometry.obj import read_obj, read_obj_vertices, write_obj
from headsup_jax.geometry.procedural import procedural_template
from headsup_jax.geometry.template import HeadTemplate
from headsup_jax.limits import load_npz
from headsup_jax.safe_pickle import NUMPY_GLOBALS, SPARSE_GLOBALS, load_pickle

ICT_ENV = "HEADSUP_ICT_PATH"
ICT_DEFAULT = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared/data/ict_facekit/ict_facekit.npz"
CM = 0.01
# Vertex index ranges [first, last] of the parts of the ICT-FaceKit head (from its documentation).
ICT_REGIONS = {
    "face": (0, 9408), "head_neck": (9409, 11247), "mouth_socket": (11248, 13293),
    "eye_socket_left": (13294, 13677), "eye_socket_right": (13678, 14061), "gums_tongue": (14062, 17038),
    "teeth": (17039, 21450), "eyeball_left": (21451, 23020), "eyeball_right": (23021, 24590),
    "lacrimal_left": (24591, 24794), "lacrimal_right": (24795, 24998), "eye_blend_left": (24999, 25022),
    "eye_blend_right": (25023, 25046), "eye_occlusion_left": (25047, 25198),
    "eye_occlusion_right": (25199, 25350), "eyelashes_left": (25351, 26034), "eyelashes_right": (26035, 26718),
}


def ict_path() -> pathlib.Path:
    """The ICT-FaceKit archive: $HEADSUP_ICT_PATH, else ../shared/data/ict_facekit/ict_facekit.npz."""
    return pathlib.Path(os.environ.get(ICT_ENV) or ICT_DEFAULT).resolve()


def _regions_from_ranges(faces: np.ndarray, names, ranges) -> dict:
    """Each face goes to the part holding its lowest vertex index."""
    ranges = np.asarray(ranges)
    part = np.searchsorted(ranges[:, 0], faces.min(1), side="right") - 1  # [F]
    inside = (part >= 0) & (faces.min(1) <= ranges[np.maximum(part, 0), 1])
    return {str(n): np.flatnonzero(inside & (part == k)).astype(np.int32) for k, n in enumerate(names)}


def load_ict_archive(path) -> HeadTemplate:
    path = pathlib.Path(path)
    if not path.exists():
        raise TemplateNotFoundError(f"ICT-FaceKit archive not found at {path}; set {ICT_ENV} or pass a path")
    d = load_npz(path)
    need = ["vertices", "faces", "uvs", "face_uvs", "expression_deltas", "expression_names",
            "region_names", "region_ranges"]
    missing = [k for k in need if k not in d]
    if missing:
        raise TemplateError(f"{path}: missing arrays {missing} (has {sorted(d)})")
    faces = d["faces"].astype(np.int32)
    return HeadTemplate(
        vertices=(d["vertices"].astype(np.float32) * CM), faces=faces, uvs=d["uvs"].astype(np.float32),
        face_uvs=d["face_uvs"].astype(np.int32),
        regions=_regions_from_ranges(faces, d["region_names"], d["region_ranges"]),
        expression_names=tuple(str(x) for x in d["expression_names"]),
        expression_deltas=d["expression_deltas"].astype(np.float32) * CM,
        identity_deltas=d["identity_deltas"].astype(np.float32) * CM if "identity_deltas" in d else None,
        landmarks=d["landmarks68"].astype(np.int32) if "landmarks68" in d else None,
        name=path.name)


def _shapes(paths, reference: np.ndarray, scale: float, neutral_name: str, faces=None) -> np.ndarray:
    """Deltas of full-shape OBJs against `reference` (same vertex count required; with `faces`, the
    files' own faces, when they have any, must equal them). [K, V, 3] float32"""
    out = np.zeros((len(paths),) + reference.shape, np.float32)
    for k, p in enumerate(paths):
        mesh = read_obj(p, require_faces=False) if faces is not None else None
        v = read_obj_vertices(p) if mesh is None else mesh.vertices
        if v.shape != reference.shape:
            raise TemplateError(f"{p}: v: {len(v)} vertices but {neutral_name} has {len(reference)}")
        if mesh is not None and len(mesh.faces) and not np.array_equal(mesh.faces, faces):
            raise TemplateError(f"{p}: f: its {len(mesh.faces)} faces differ from the {len(faces)} of "
                             f"{neutral_name} (blendshapes need the same topology)")
        out[k] = (v - reference) * scale
    return out


def load_obj_template(obj_path, blendshape_dir=None, scale: float = 1.0, name: str | None = None,
                      identity_paths=(), regions=None) -> HeadTemplate:
    """A template from an OBJ with UVs; `blendshape_dir` holds `<ARKitName>.obj` files of the same
    topology (full shapes, not deltas; faces, if present, are checked). Identity OBJs (ICT folders)
    are read for their vertices only. OBJ groups become regions unless `regions` is given. `scale`
    converts the files' unit to metres."""
    obj_path = pathlib.Path(obj_path)
    mesh = read_obj(obj_path)
    if mesh.face_uvs is None or not len(mesh.uvs):
        raise TemplateError(f"{obj_path}: faces have no texture coordinates (vt and f v/vt): the atlas needs UVs")
    if blendshape_dir and not pathlib.Path(blendshape_dir).is_dir():
        raise TemplateNotFoundError(f"{blendshape_dir}: blendshape folder not found")
    shapes = sorted(pathlib.Path(blendshape_dir).glob("*.obj")) if blendshape_dir else []
    if regions is None:
        regions = {} if list(mesh.groups) == ["default"] else mesh.groups
    identity = _shapes(list(identity_paths), mesh.vertices, scale, obj_path.name) if identity_paths else None
    return HeadTemplate(
        vertices=(mesh.vertices * scale).astype(np.float32), faces=mesh.faces, uvs=mesh.uvs.astype(np.float32),
        face_uvs=mesh.face_uvs, regions=regions, expression_names=tuple(p.stem for p in shapes),
        expression_deltas=_shapes(shapes, mesh.vertices, scale, obj_path.name, mesh.faces), identity_deltas=identity,
        landmarks=None, name=name or obj_path.name)


def save_obj_template(template: HeadTemplate, obj_path) -> pathlib.Path:
    """Writes `template` as HEAD.obj (regions as groups) and HEAD_blendshapes/<name>.obj (full shapes),
    the layout `load_template("HEAD.obj")` reads back. Returns the blendshape folder."""
    obj_path = pathlib.Path(obj_path)
    folder = obj_path.with_name(obj_path.stem + "_blendshapes")
    write_obj(obj_path, template.vertices, template.faces, template.uvs, template.face_uvs, template.regions or None)
    for name, delta in zip(template.expression_names, template.expression_deltas):
        write_obj(folder / f"{name}.obj", template.vertices + delta, template.faces)
    return folder


def load_ict_folder(folder) -> HeadTemplate:
    """The ICT-FaceKit repository layout: FaceXModel/generic_neutral_mesh.obj, identity###.obj and one
    OBJ per expression (full shapes, centimetres). Parts come from ICT_REGIONS when the vertex count
    matches the ICT head; otherwise the whole mesh is one region."""
    folder = pathlib.Path(folder)
    if (folder / "FaceXModel").is_dir():
        folder = folder / "FaceXModel"
    neutral = folder / "generic_neutral_mesh.obj"
    if not neutral.exists():
        raise TemplateNotFoundError(f"{folder}: no generic_neutral_mesh.obj (not an ICT-FaceKit folder)")
    identity = sorted(folder.glob("identity*.obj"))
    expressions = [p for p in sorted(folder.glob("*.obj")) if p != neutral and p not in identity]
    mesh = read_obj(neutral)
    regions = None
    if len(mesh.vertices) == ICT_REGIONS["eyelashes_right"][1] + 1:
        regions = _regions_from_ranges(mesh.faces, list(ICT_REGIONS), list(ICT_REGIONS.values()))
    t = load_obj_template(neutral, None, CM, folder.name, identity, regions if regions is not None else {})
    return dataclasses.replace(t, expression_names=tuple(p.stem for p in expressions),
                               expression_deltas=_shapes(expressions, mesh.vertices, CM, neutral.name))


class _ChumpyStub:
    """Stands in for chumpy arrays when unpickling the official FLAME model without chumpy."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"x": state})

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.__dict__.get("x"), dtype)


def _read_flame_model(path: pathlib.Path) -> dict:
    """The official FLAME pickle (Python 2: NumPy arrays, chumpy arrays, a scipy.sparse J_regressor, strings)
    read through the allow-list unpickler, chumpy's classes replaced by an inert stub; or an .npz."""
    if path.suffix == ".npz":
        return load_npz(path)
    model = load_pickle(path, {**NUMPY_GLOBALS, **SPARSE_GLOBALS}, {"chumpy": _ChumpyStub}, encoding="latin1")
    if not isinstance(model, dict):
        raise TemplateError(f"{path}: expected a dict of FLAME arrays, got {type(model).__name__}")
    return model


def load_flame(model_path, uv_obj=None, num_shape: int = 300) -> HeadTemplate:
    """FLAME (metres, +y up, +z forward): `v_template` [V, 3], `shapedirs` [V, 3, num_shape + E]
    (shape directions then expression directions), `f` [F, 3]; UVs from the template OBJ (by default
    head_template.obj beside the model). Expression directions are PCA, named flame_exp_000..."""
    model_path = pathlib.Path(model_path)
    if not model_path.exists():
        raise TemplateNotFoundError(f"{model_path}: FLAME model not found")
    m = _read_flame_model(model_path)
    for key in ("v_template", "shapedirs", "f"):
        if key not in m:
            raise TemplateError(f"{model_path}: missing field {key!r} (has {sorted(m)})")
    v = np.asarray(m["v_template"], np.float64)
    dirs = np.asarray(m["shapedirs"], np.float64)
    faces = np.asarray(m["f"]).astype(np.int64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise TemplateError(f"{model_path}: v_template: shape {list(v.shape)}, expected [V, 3]")
    if dirs.ndim != 3 or dirs.shape[:2] != v.shape or dirs.shape[2] <= num_shape:
        raise TemplateError(f"{model_path}: shapedirs: shape {list(dirs.shape)}, expected [{len(v)}, 3, >{num_shape}]")
    if uv_obj is None:
        uv_obj = next((model_path.parent / n for n in ("head_template.obj", "head_template_mesh.obj")
                       if (model_path.parent / n).exists()), None)
        if uv_obj is None:
            raise TemplateNotFoundError(f"{model_path}: no head_template.obj beside the model for the UV layout; "
                                    "pass flame:MODEL,UV_OBJ")
    uv = read_obj(uv_obj)
    if uv.face_uvs is None:
        raise TemplateError(f"{uv_obj}: faces have no texture coordinates")
    if uv.faces.shape != faces.shape or not np.array_equal(uv.faces, faces):
        raise TemplateError(f"{uv_obj}: f: its {len(uv.faces)} faces differ from {model_path.name}'s f "
                         f"({len(faces)} faces)")
    expr = dirs[:, :, num_shape:]
    return HeadTemplate(
        vertices=v.astype(np.float32), faces=faces.astype(np.int32), uvs=uv.uvs.astype(np.float32),
        face_uvs=uv.face_uvs, regions={}, expression_names=tuple(f"flame_exp_{k:03d}" for k in range(expr.shape[2])),
        expression_deltas=expr.transpose(2, 0, 1).astype(np.float32),
        identity_deltas=dirs[:, :, :num_shape].transpose(2, 0, 1).astype(np.float32), name=model_path.name)


def load_template(spec: str = "procedural") -> HeadTemplate:
    """A template by spec (see the module docstring)."""
    if spec == "procedural":
        return procedural_template()
    if spec == "ict":
        return load_ict_archive(ict_path())
    if spec.startswith("flame:"):
        model, _, uv = spec[len("flame:"):].partition(",")
        return load_flame(model, uv or None)
    path_str, _, extra = spec.partition(",")
    path = pathlib.Path(path_str)
    if path.is_dir():
        return load_ict_folder(path)
    if path.suffix == ".npz":
        return load_ict_archive(path)
    if path.suffix == ".obj":
        if not path.exists():
            raise TemplateNotFoundError(f"{path}: template OBJ not found")
        default_dir = path.with_name(path.stem + "_blendshapes")
        return load_obj_template(path, extra or (default_dir if default_dir.is_dir() else None))
    raise TemplateError(f"unknown template {spec!r}: use procedural, ict, flame:MODEL[,UV_OBJ], an ICT .npz or "
                     "folder, or HEAD.obj[,BLENDSHAPE_DIR]")
