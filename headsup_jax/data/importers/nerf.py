"""NeRF / instant-ngp / nerfstudio `transforms.json`.

Format (nerfstudio "Data conventions" and instant-ngp's nerf_loader): top-level intrinsics, each of which a
frame may override: `fl_x`, `fl_y`, `cx`, `cy`, `w`, `h` (pixels; cx, cy default to the image centre, w, h
to the image size), or `camera_angle_x` (horizontal field of view in radians; `camera_angle_y` for fy,
else fy = fx) as in the original NeRF Blender scenes; `camera_model` OPENCV (default), PINHOLE or
SIMPLE_PINHOLE; OpenCV distortion `k1`, `k2`, `p1`, `p2` (and `k3`) where present. `frames`: one per image,
`file_path` relative to the JSON's folder (no extension: `.png` is tried, as the Blender scenes store it),
`transform_matrix` the 4x4 camera-to-world in OpenGL camera axes (x right, y up, z back), and optional
`fg_mask_path` (the head-avatar variant: a foreground mask). Without one, an RGBA image's alpha is its mask.
World_to_cam is inv(transform_matrix @ diag(1, -1, -1, 1)): OpenGL to OpenCV camera axes.
Camera ids come from the file names (extension dropped, characters outside [A-Za-z0-9_.-] as '_').
"""
from __future__ import annotations

import math
import pathlib

import numpy as np

from headsup_jax.data.importers.common import (View, error, field, load_json, matrix, number, pinhole,
                                                read_image, rigid, safe_id)

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
_DISTORTION = ("k1", "k2", "p1", "p2", "k3")


def _file(base: pathlib.Path, rel, path, where: str) -> pathlib.Path:
    if not isinstance(rel, str) or not rel:
        raise error(path, where, f"expected a relative file path, got {rel!r}")
    f = base / rel
    return f if f.suffix or f.exists() else f.with_suffix(".png")


def _intrinsics(get, w: int, h: int, path, where: str):
    """K and distortion from the frame's keys (falling back to the top level)."""
    for key, size in (("w", w), ("h", h)):
        if get(key) is not None and int(number(get(key), path, f"{where}.{key}", True)) != size:
            raise error(path, f"{where}.{key}", f"says {get(key)} but the image is {w}x{h}")
    if get("fl_x") is not None:
        fx = number(get("fl_x"), path, f"{where}.fl_x", True)
    elif get("camera_angle_x") is not None:
        fx = 0.5 * w / math.tan(0.5 * number(get("camera_angle_x"), path, f"{where}.camera_angle_x", True))
    else:
        raise error(path, f"{where}.fl_x", "missing (and no camera_angle_x)")
    if get("fl_y") is not None:
        fy = number(get("fl_y"), path, f"{where}.fl_y", True)
    elif get("camera_angle_y") is not None:
        fy = 0.5 * h / math.tan(0.5 * number(get("camera_angle_y"), path, f"{where}.camera_angle_y", True))
    else:
        fy = fx
    cx = number(get("cx"), path, f"{where}.cx") if get("cx") is not None else w / 2
    cy = number(get("cy"), path, f"{where}.cy") if get("cy") is not None else h / 2
    model = get("camera_model") or "OPENCV"
    if model not in _MODELS:
        raise error(path, f"{where}.camera_model", f"unsupported camera model {model!r} (supported: "
                    f"{', '.join(_MODELS)})")
    if get("k4"):
        raise error(path, f"{where}.k4", "k4 (fisheye / higher-order radial) is not supported")
    dist = tuple(number(get(k) or 0.0, path, f"{where}.{k}") for k in _DISTORTION)
    return pinhole(fx, fy, cx, cy), dist if model == "OPENCV" else None


def read(src: pathlib.Path, frame: str | None = None) -> list[View]:
    """The views of a transforms.json (SRC: the file or its folder; frame: unused)."""
    path = src / "transforms.json" if src.is_dir() else src
    meta = load_json(path)
    frames = field(meta, "frames", path, "frames")
    if not isinstance(frames, list) or not frames:
        raise error(path, "frames", "expected a non-empty list")
    views = []
    for i, fr in enumerate(frames):
        where = f"frames[{i}]"
        if not isinstance(fr, dict):
            raise error(path, where, "expected an object")
        image_file = _file(path.parent, field(fr, "file_path", path, f"{where}.file_path"), path, f"{where}.file_path")
        rgba = read_image(image_file, "RGBA")
        h, w = rgba.shape[:2]
        K, dist = _intrinsics(lambda k: fr.get(k, meta.get(k)), w, h, path, where)
        c2w = matrix(field(fr, "transform_matrix", path, f"{where}.transform_matrix"), (4, 4), path,
                     f"{where}.transform_matrix")
        c2w = rigid(c2w, path, f"{where}.transform_matrix") @ GL_TO_CV
        mask = (read_image(_file(path.parent, fr["fg_mask_path"], path, f"{where}.fg_mask_path"), "L")
                if "fg_mask_path" in fr else rgba[..., 3])
        views.append(View(safe_id(image_file.stem), K, np.linalg.inv(c2w), np.ascontiguousarray(rgba[..., :3]),
                          mask, dist, str(image_file)))
    if not any("fg_mask_path" in fr for fr in frames) and all(np.all(v.mask == 255) for v in views):
        for v in views:  # opaque images: no masks
            v.mask = None
    return views
