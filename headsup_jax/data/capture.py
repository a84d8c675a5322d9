"""The on-disk capture format: one folder per subject (and optionally per frame), loaded and validated.

    <root>/<subject>[/<frame>]/cameras.json        {"cameras": [{"id", "K", "world_to_cam", "width", "height",
                                                               "distortion" (optional, all 0)}, ...]}
                              /images/<id>.png|jpg  one image per camera, size width x height
                              /masks/<id>.png       optional; if the folder exists, one mask per camera
                              /depth/<id>.png       optional; 16-bit PNG, camera z in millimetres, 0 = none
                              /blendshapes.json     optional {ARKit name: weight}

Cameras follow DESIGN.md: OpenCV axes, metres, K in pixels with pixel (i, j) centred at (j + .5, i + .5).
The renderer is an ideal pinhole: K must have zero skew and distortion coefficients, if given, must be 0
(undistort the images first).
Every problem is reported as a `Problem(subject, file, field, message)`; `load_capture` raises the first as a
`CaptureError`, `check_capture` returns them all (the validator's report).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import numpy as np

from headsup_jax.data.blendshapes import ARKIT_BLENDSHAPES
from headsup_jax.data.io import image_size, write_bytes_atomic, write_json_atomic
from headsup_jax.errors import InputError
from headsup_jax.limits import check_file_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
_RIGID_TOL = 1e-4
_SKEW_TOL = 1e-6  # pixels
_SINGULAR = {"images": "image", "masks": "mask", "depth": "depth map"}


@dataclasses.dataclass(frozen=True)
class Problem:
    subject: str
    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"subject {self.subject!r}, file {self.file}, field {self.field}: {self.message}"


class CaptureError(InputError):
    """Bad capture data; names the subject, the file and the field."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


@dataclasses.dataclass(frozen=True)
class CameraSpec:
    """One calibrated camera as stored in cameras.json."""

    id: str
    K: np.ndarray  # [3, 3] float32 pixels
    world_to_cam: np.ndarray  # [4, 4] float32, rigid
    width: int
    height: int
    distortion: tuple[float, ...] | None = None

    def to_json(self) -> dict:
        out = {"id": self.id, "K": np.asarray(self.K, float).tolist(),
               "world_to_cam": np.asarray(self.world_to_cam, float).tolist(),
               "width": int(self.width), "height": int(self.height)}
        if self.distortion is not None:
            out["distortion"] = [float(d) for d in self.distortion]
        return out

    def to_camera(self):
        """The renderer's `Camera` (a validated spec has no skew and no distortion)."""
        from headsup_jax.render import Camera

        return Camera(world_to_cam=np.asarray(self.world_to_cam, np.float32), K=np.asarray(self.K, np.float32),
                      width=int(self.width), height=int(self.height))


@dataclasses.dataclass(frozen=True)
class Capture:
    """A validated capture folder (images are referenced, not loaded)."""

    subject: str
    frame: str  # "" when the subject folder holds the capture directly
    path: pathlib.Path
    cameras: tuple[CameraSpec, ...]
    image_files: dict  # camera id -> Path
    mask_files: dict | None  # camera id -> Path, or None without a masks/ folder
    depth_files: dict | None  # camera id -> Path, or None without a depth/ folder
    blendshapes: dict | None  # ARKit name -> weight


def _matrix(value, shape, problems, subject, file, field) -> np.ndarray | None:
    try:
        m = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        m = None
    if m is None or m.shape != shape:
        problems.append(Problem(subject, file, field, f"expected a {shape[0]}x{shape[1]} matrix of numbers"))
        return None
    if not np.all(np.isfinite(m)):
        problems.append(Problem(subject, file, field, "contains non-finite values"))
        return None
    return m


def _check_K(K, problems, subject, file, field) -> None:
    if abs(np.linalg.det(K)) < 1e-9 or K[0, 0] <= 0 or K[1, 1] <= 0:
        problems.append(Problem(subject, file, field, "is singular or has non-positive focal lengths"))
    elif not np.allclose(K[2], [0, 0, 1]) or abs(K[1, 0]) > 1e-9:
        problems.append(Problem(subject, file, field, "is not a pinhole matrix (last row must be [0, 0, 1])"))
    elif abs(K[0, 1]) > _SKEW_TOL:
        problems.append(Problem(subject, file, field, f"has skew K[0][1] = {K[0, 1]:g}; the renderer's pinhole "
                                "projection needs K[0][1] = 0"))


def _check_distortion(dist, problems, subject, file, field) -> None:
    try:
        d = np.asarray(dist, np.float64)
    except (TypeError, ValueError):
        d = None
    if not isinstance(dist, list) or d is None or d.ndim != 1 or not np.all(np.isfinite(d)):
        problems.append(Problem(subject, file, field, "expected a list of finite numbers"))
    elif np.any(d != 0):
        problems.append(Problem(subject, file, field, f"non-zero coefficients {dist}: the renderer is an ideal "
                                "pinhole camera; undistort the images first (and store zeros or no distortion)"))


def _check_rigid(T, problems, subject, file, field) -> None:
    R = T[:3, :3]
    if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-6):
        problems.append(Problem(subject, file, field, "last row must be [0, 0, 0, 1]"))
    elif np.abs(R.T @ R - np.eye(3)).max() > _RIGID_TOL or np.linalg.det(R) <= 0:
        problems.append(Problem(subject, file, field, "is not rigid (rotation part is not orthonormal, det +1)"))


def camera_problems(K, world_to_cam, subject: str, file: str, where: str) -> list[Problem]:
    """Problems of one camera's K (finite, invertible, pinhole, no skew) and world_to_cam (finite, rigid)."""
    problems: list[Problem] = []
    K = _matrix(K, (3, 3), problems, subject, file, f"{where}.K")
    T = _matrix(world_to_cam, (4, 4), problems, subject, file, f"{where}.world_to_cam")
    if K is not None:
        _check_K(K, problems, subject, file, f"{where}.K")
    if T is not None:
        _check_rigid(T, problems, subject, file, f"{where}.world_to_cam")
    return problems


def parse_cameras(obj, subject: str, file: str = "cameras.json") -> tuple[list[CameraSpec], list[Problem]]:
    """Parse and check the decoded JSON of a cameras.json file."""
    problems: list[Problem] = []
    if not isinstance(obj, dict) or not isinstance(obj.get("cameras"), list) or not obj["cameras"]:
        return [], [Problem(subject, file, "cameras", "expected {\"cameras\": [...]} with at least one camera")]
    cams, seen = [], set()
    for i, c in enumerate(obj["cameras"]):
        where = f"cameras[{i}]"
        if not isinstance(c, dict):
            problems.append(Problem(subject, file, where, "expected an object"))
            continue
        cid = c.get("id")
        if not isinstance(cid, str) or not _ID_PATTERN.match(cid):
            problems.append(Problem(subject, file, f"{where}.id", f"{cid!r} is not a valid id ([A-Za-z0-9_.-]+)"))
            continue
        if cid in seen:
            problems.append(Problem(subject, file, f"{where}.id", f"duplicate camera id {cid!r}"))
            continue
        seen.add(cid)
        where = f"cameras[{cid}]"
        n = len(problems)
        problems += camera_problems(c.get("K"), c.get("world_to_cam"), subject, file, where)
        size = [c.get(k) for k in ("width", "height")]
        if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
            problems.append(Problem(subject, file, f"{where}.width/height", f"expected positive integers, got {size}"))
        dist = c.get("distortion")
        if dist is not None:
            _check_distortion(dist, problems, subject, file, f"{where}.distortion")
        if len(problems) == n:
            K, T = np.asarray(c["K"], np.float32), np.asarray(c["world_to_cam"], np.float32)
            cams.append(CameraSpec(cid, K, T, size[0], size[1],
                                   None if dist is None else tuple(float(d) for d in dist)))
    return cams, problems


def _image_files(folder: pathlib.Path, subject: str, kind: str, ids, suffixes, problems) -> dict:
    """Map camera id -> file in `folder`, reporting missing, duplicated and extra files."""
    found: dict[str, list[pathlib.Path]] = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.name.startswith("."):
            continue
        if p.suffix.lower() not in suffixes or p.stem not in ids:
            problems.append(Problem(subject, f"{kind}/{p.name}", "file", "extra file: no camera with this id"))
            continue
        found.setdefault(p.stem, []).append(p)
    out = {}
    for cid in ids:
        files = found.get(cid, [])
        if not files:
            problems.append(Problem(subject, f"{kind}/{cid}.*", "file", f"missing {_SINGULAR[kind]} for camera {cid!r}"))
        elif len(files) > 1:
            problems.append(Problem(subject, f"{kind}/{cid}.*", "file",
                                    f"several files for camera {cid!r}: {[f.name for f in files]}"))
        else:
            out[cid] = files[0]
    return out


def _check_sizes(files: dict, cams: dict, subject: str, kind: str, problems) -> None:
    for cid, path in files.items():
        try:
            size = image_size(check_file_size(path).read_bytes(), source=path)
        except Exception as e:  # noqa: BLE001 (pillow raises many types for corrupt data)
            problems.append(Problem(subject, f"{kind}/{path.name}", "data", f"unreadable image ({e})"))
            continue
        want = (cams[cid].width, cams[cid].height)
        if size != want:
            problems.append(Problem(subject, f"{kind}/{path.name}", "size",
                                    f"image is {size[0]}x{size[1]} but cameras.json says {want[0]}x{want[1]}"))


def _blendshapes(path: pathlib.Path, subject: str, problems) -> dict | None:
    if not path.exists():
        return None
    try:
        obj = json.loads(check_file_size(path).read_text())
    except (OSError, ValueError) as e:
        problems.append(Problem(subject, path.name, "json", f"unreadable JSON ({e})"))
        return None
    if not isinstance(obj, dict):
        problems.append(Problem(subject, path.name, "json", "expected an object {name: weight}"))
        return None
    for name, w in obj.items():
        if name not in ARKIT_BLENDSHAPES:
            problems.append(Problem(subject, path.name, name, "unknown blendshape name (not an ARKit name)"))
        elif isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w):
            problems.append(Problem(subject, path.name, name, f"weight {w!r} is not a finite number"))
    return {k: float(v) for k, v in obj.items()}


def check_capture(path, subject: str | None = None, frame: str = "",
                  decode_images: bool = True) -> tuple[Capture | None, list[Problem]]:
    """Load a capture folder and list every problem; the Capture is None when any problem was found."""
    path = pathlib.Path(path)
    subject = subject or path.name
    problems: list[Problem] = []
    try:
        obj = json.loads(check_file_size(path / "cameras.json").read_text())
    except (OSError, ValueError) as e:
        return None, [Problem(subject, "cameras.json", "json", f"unreadable ({e})")]
    cams, cam_problems = parse_cameras(obj, subject)
    problems += cam_problems
    by_id = {c.id: c for c in cams}
    ids = [c.id for c in cams]
    images = _image_files(path / "images", subject, "images", ids, IMAGE_SUFFIXES, problems)
    masks, depth = (_image_files(path / kind, subject, kind, ids, (".png",), problems) if (path / kind).is_dir()
                    else None for kind in ("masks", "depth"))
    if decode_images:
        for kind, files in (("images", images), ("masks", masks), ("depth", depth)):
            _check_sizes(files or {}, by_id, subject, kind, problems)
    blend = _blendshapes(path / "blendshapes.json", subject, problems)
    if problems:
        return None, problems
    return Capture(subject, frame, path, tuple(cams), images, masks, depth, blend), []


def load_capture(path, subject: str | None = None, frame: str = "") -> Capture:
    """Load and validate a capture folder; raises `CaptureError` naming subject, file and field."""
    capture, problems = check_capture(path, subject, frame)
    if problems:
        raise CaptureError(problems[0])
    return capture


def find_captures(root) -> list[tuple[str, str, pathlib.Path]]:
    """(subject, frame, folder) of every capture under `root` (root itself, <subject>/ or <subject>/<frame>/)."""
    root = pathlib.Path(root)
    if (root / "cameras.json").exists():
        return [(root.name, "", root)]
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (d / "cameras.json").exists():
            out.append((d.name, "", d))
        else:
            out += [(d.name, f.name, f) for f in sorted(d.iterdir()) if (f / "cameras.json").exists()]
    return out


def write_capture(path, cameras, images: dict, masks: dict | None = None, blendshapes: dict | None = None,
                  image_format: str = "png", depths: dict | None = None) -> None:
    """Write a capture folder (every file atomically). images/masks/depths: camera id -> encoded bytes."""
    path = pathlib.Path(path)
    for cid, data in images.items():
        write_bytes_atomic(path / "images" / f"{cid}.{image_format}", data)
    for cid, data in (masks or {}).items():
        write_bytes_atomic(path / "masks" / f"{cid}.png", data)
    for cid, data in (depths or {}).items():
        write_bytes_atomic(path / "depth" / f"{cid}.png", data)
    if blendshapes is not None:
        write_json_atomic(path / "blendshapes.json", {k: float(v) for k, v in blendshapes.items()})
    write_json_atomic(path / "cameras.json", {"cameras": [c.to_json() for c in cameras]})  # last: marks complete


def validate_tree(root) -> list[tuple[str, str, list[Problem]]]:
    """(subject, frame, problems) for every capture under `root`, plus subject folders holding no capture."""
    root = pathlib.Path(root)
    if not root.is_dir():
        return [(root.name, "", [Problem(root.name, str(root), "path", "not a directory")])]
    found = find_captures(root)
    report = [(s, f, check_capture(p, s, f)[1]) for s, f, p in found]
    with_capture = {s for s, _, _ in found}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if d.name not in with_capture and not (root / "cameras.json").exists():
            report.append((d.name, "", [Problem(d.name, "cameras.json", "file", "missing: no capture in this folder")]))
    return report
