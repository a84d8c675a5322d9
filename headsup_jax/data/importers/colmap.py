"""COLMAP sparse models (`cameras` and `images`, .txt or .bin) read without COLMAP.

Layout (COLMAP's own, https://colmap.github.io/format.html): SRC/images/<NAME> and the model in
SRC/sparse/0, SRC/sparse or SRC (cameras.bin + images.bin, or cameras.txt + images.txt; binary first).
Optional masks: SRC/masks/<NAME>.png (COLMAP's mask naming). One capture camera per registered image, id
from NAME ('/' and other characters outside [A-Za-z0-9_.-] become '_', the extension dropped). Camera ids
need not be contiguous; cameras no image uses are ignored.

- cameras.txt: `CAMERA_ID MODEL WIDTH HEIGHT PARAMS...`; cameras.bin: uint64 count, then per camera
  int32 id, int32 model id, uint64 width, uint64 height, float64 params.
- images.txt: `IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME` then a line of 2D points (skipped);
  images.bin: uint64 count, then per image uint32 id, float64 qvec[4], tvec[3], uint32 camera id,
  NUL-terminated name, uint64 point count, count x (float64 x, float64 y, int64 point3D id).
- The pose is cam_from_world: world_to_cam = [R(q) | t], q = (w, x, y, z) normalised; OpenCV axes.
- COLMAP's pixel centres are at +0.5, like ours, so (cx, cy) carry over unchanged.
"""
from __future__ import annotations

import pathlib
import struct

import numpy as np

from headsup_jax.data.importers.common import View, error, pinhole, read_image, safe_id

# model id -> (name, parameter count); parameter order as in COLMAP's models.h
MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
          4: ("OPENCV", 8)}
_BY_NAME = {name: (mid, n) for mid, (name, n) in MODELS.items()}


def intrinsics(model: str, p):
    """(K, OpenCV distortion or None) of a supported COLMAP camera model's parameters."""
    if model == "SIMPLE_PINHOLE":
        return pinhole(p[0], p[0], p[1], p[2]), None
    if model == "PINHOLE":
        return pinhole(*p[:4]), None
    if model == "SIMPLE_RADIAL":
        return pinhole(p[0], p[0], p[1], p[2]), (p[3], 0.0, 0.0, 0.0)
    if model == "RADIAL":
        return pinhole(p[0], p[0], p[1], p[2]), (p[3], p[4], 0.0, 0.0)
    return pinhole(*p[:4]), tuple(p[4:8])  # OPENCV


def quaternion_matrix(q) -> np.ndarray:
    """Rotation [3, 3] of a unit quaternion (w, x, y, z)."""
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _camera(cid, model, width, height, params, file, where):
    if model not in _BY_NAME:
        raise error(file, f"{where}.MODEL", f"unsupported camera model {model!r} (supported: {', '.join(_BY_NAME)})")
    if len(params) != _BY_NAME[model][1]:
        raise error(file, f"{where}.PARAMS", f"{model} takes {_BY_NAME[model][1]} parameters, got {len(params)}")
    if width <= 0 or height <= 0:
        raise error(file, f"{where}.WIDTH/HEIGHT", f"expected positive sizes, got {width} x {height}")
    K, dist = intrinsics(model, list(params))
    return cid, (K, dist, int(width), int(height))


def read_cameras_text(path: pathlib.Path) -> dict:
    cams = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            cid, model, w, h = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
            params = [float(x) for x in parts[4:]]
        except (ValueError, IndexError):
            raise error(path, f"line {n}", "expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS...") from None
        k, v = _camera(cid, model, w, h, params, path, f"line {n}")
        cams[k] = v
    return cams


def read_images_text(path: pathlib.Path) -> list:
    """(image id, qvec, tvec, camera id, name, where) per image; every second data line (2D points) skipped."""
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if not line.startswith("#")]
    out = []
    for n, line in lines[0::2]:
        parts = line.split(maxsplit=9)
        if not parts:
            continue
        try:
            out.append((int(parts[0]), [float(x) for x in parts[1:5]], [float(x) for x in parts[5:8]],
                        int(parts[8]), parts[9].strip(), f"line {n}"))
        except (ValueError, IndexError):
            raise error(path, f"line {n}", "expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME") from None
    return out


class _Reader:
    def __init__(self, path: pathlib.Path):
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def take(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise error(self.path, what, f"file ends at byte {len(self.data)} (truncated)")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def name(self, what: str) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise error(self.path, what, "name not NUL-terminated (truncated)")
        name, self.pos = self.data[self.pos:end].decode("utf-8", "replace"), end + 1
        return name


def read_cameras_binary(path: pathlib.Path) -> dict:
    r, cams = _Reader(path), {}
    (count,) = r.take("<Q", "camera count")
    for i in range(count):
        where = f"camera {i}"
        cid, mid, w, h = r.take("<iiQQ", where)
        if mid not in MODELS:
            raise error(path, f"{where}.model_id", f"unsupported camera model id {mid} (supported: "
                        + ", ".join(f"{k} {n}" for k, (n, _) in MODELS.items()) + ")")
        name, n = MODELS[mid]
        k, v = _camera(cid, name, w, h, r.take(f"<{n}d", f"{where}.params"), path, where)
        cams[k] = v
    return cams


def read_images_binary(path: pathlib.Path) -> list:
    r, out = _Reader(path), []
    (count,) = r.take("<Q", "image count")
    for i in range(count):
        where = f"image {i}"
        iid, *pose, cid = r.take("<I7dI", where)
        name = r.name(f"{where}.name")
        (npts,) = r.take("<Q", f"{where}.num_points2D")
        r.take(f"<{24 * npts}x", f"{where}.points2D")
        out.append((iid, pose[:4], pose[4:], cid, name, where))
    return out


def _model_dir(src: pathlib.Path) -> pathlib.Path:
    for d in (src / "sparse" / "0", src / "sparse", src):
        if any((d / f"cameras.{ext}").is_file() for ext in ("bin", "txt")):
            return d
    raise error(src, "sparse model", "no cameras.bin or cameras.txt in SRC/sparse/0, SRC/sparse or SRC")


def read(src: pathlib.Path, frame: str | None = None) -> list[View]:
    """The views of a COLMAP model (frame: unused, a model is one frame)."""
    model = _model_dir(src)
    ext = "bin" if (model / "cameras.bin").is_file() else "txt"
    images_file = model / f"images.{ext}"
    if not images_file.is_file():
        raise error(images_file, "file", f"missing (cameras.{ext} has no images.{ext} beside it)")
    cams = (read_cameras_binary if ext == "bin" else read_cameras_text)(model / f"cameras.{ext}")
    entries = (read_images_binary if ext == "bin" else read_images_text)(images_file)
    image_dir = src / "images"
    views = []
    for _, q, t, cid, name, where in entries:
        if cid not in cams:
            raise error(images_file, f"{where}.CAMERA_ID", f"camera {cid} is not in cameras.{ext}")
        q = np.asarray(q, np.float64)
        if not np.all(np.isfinite(q + np.sum(t))) or np.linalg.norm(q) < 1e-9:
            raise error(images_file, f"{where}.QVEC/TVEC", "quaternion is zero or the pose is not finite")
        K, dist, w, h = cams[cid]
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = quaternion_matrix(q / np.linalg.norm(q)), t
        image = read_image(image_dir / name)
        if image.shape[:2] != (h, w):
            raise error(image_dir / name, "size", f"image is {image.shape[1]}x{image.shape[0]} but camera {cid} "
                        f"in cameras.{ext} is {w}x{h}")
        mask_file = src / "masks" / f"{name}.png"
        mask = read_image(mask_file, "L") if (src / "masks").is_dir() else None
        views.append(View(safe_id(name.rsplit(".", 1)[0]), K, T, image, mask, dist, str(image_dir / name)))
    return views
