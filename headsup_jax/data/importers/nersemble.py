"""NeRSemble multi-view captures (v1 frame folders and v2 per-camera videos).

Layouts followed (github.com/tobias-kirschstein/nersemble, src/nersemble/data_manager/multi_view_data.py,
and github.com/tobias-kirschstein/nersemble-data, src/nersemble_data/constants.py):

    v1  <participant>/camera_params.json
        <participant>/sequences/<sequence>/frame_<t:05d>/images-2x/cam_<serial>.png   (or images*/, .jpg)
                                                        /alpha_map/cam_<serial>.png   (optional masks)
    v2  <participant>/calibration/camera_params.json
        <participant>/sequences/<sequence>/images/cam_<serial>.mp4                   (frame t of each video)

SRC is the sequence folder (`--frame t`, default 0, picks frame_<t:05d>/ or the video frame) or one frame
folder; camera_params.json is looked up in SRC and up to three folders above it (beside it or in
calibration/). camera_params.json: `world_2_cam` {serial: 4x4 world-to-camera, OpenCV axes, metres} and
`intrinsics`, one 3x3 K shared by all cameras (or {serial: 3x3}) for the full 2200 x 3208 (W x H) images;
images downscaled by an integer factor d (2200 // d x 3208 // d, e.g. images-2x) get K / d, as
nersemble's data parser rescales it. Every calibrated camera needs an image and every image a camera.
"""
from __future__ import annotations

import pathlib
import re

import numpy as np

from headsup_jax.data.importers.common import (View, error, field, load_json, matrix, read_image,
                                                read_video_frame, rigid, safe_id)

FULL_SIZE = (2200, 3208)  # (width, height) the intrinsics refer to
_CAM = re.compile(r"^cam_(.+)\.(png|jpg|jpeg|mp4)$", re.IGNORECASE)


def _calibration(src: pathlib.Path) -> pathlib.Path:
    for d in [src, *list(src.resolve().parents)[:3]]:
        for f in (d / "camera_params.json", d / "calibration" / "camera_params.json"):
            if f.is_file():
                return f
    raise error(src, "camera_params.json", "not found in SRC or up to three folders above it "
                "(beside it or in calibration/)")


def _frame_folder(src: pathlib.Path, frame: int) -> pathlib.Path:
    """The folder whose images*/ subfolder holds this frame's cam_<serial> files (or videos)."""
    if (src / f"frame_{frame:05d}").is_dir():
        return src / f"frame_{frame:05d}"
    if any(src.glob("frame_*")):
        raise error(src / f"frame_{frame:05d}", "--frame", f"no frame {frame} in this sequence")
    return src


def _files(folder: pathlib.Path, prefix: str) -> dict:
    """serial -> file of cam_<serial>.* in the first subfolder named prefix* that holds any."""
    for sub in sorted(p for p in folder.glob(f"{prefix}*") if p.is_dir()):
        found = {m.group(1): f for f in sorted(sub.iterdir()) if (m := _CAM.match(f.name))}
        if found:
            return found
    return {}


def _scaled_K(K: np.ndarray, w: int, h: int, file) -> np.ndarray:
    d = max(1, round(FULL_SIZE[0] / w))
    if (FULL_SIZE[0] // d, FULL_SIZE[1] // d) != (w, h):
        raise error(file, "size", f"image is {w}x{h}; NeRSemble's intrinsics are for {FULL_SIZE[0]}x"
                    f"{FULL_SIZE[1]} images or those downscaled by an integer factor")
    K = K.copy()
    K[:2] /= d
    return K


def read(src: pathlib.Path, frame: str | None = None) -> list[View]:
    """The views of one NeRSemble frame."""
    try:
        t = int(frame or 0)
    except ValueError:
        raise error(src, "--frame", f"expected a frame index, got {frame!r}") from None
    calib = _calibration(src)
    params = load_json(calib)
    w2c = field(params, "world_2_cam", calib, "world_2_cam")
    intr = field(params, "intrinsics", calib, "intrinsics")
    if not isinstance(w2c, dict) or not w2c:
        raise error(calib, "world_2_cam", "expected {serial: 4x4 matrix} with at least one camera")
    folder = _frame_folder(src, t)
    images, alphas = _files(folder, "images"), _files(folder, "alpha_map")
    if not images:
        raise error(folder, "images", "no images*/cam_<serial>.png|jpg|mp4 files")
    for serial, f in images.items():
        if serial not in w2c:
            raise error(f, "camera", f"serial {serial!r} has no world_2_cam entry in {calib}")
    views = []
    for serial, pose in w2c.items():
        where = f"world_2_cam[{serial}]"
        T = rigid(matrix(pose, (4, 4), calib, where), calib, where)
        if serial not in images:
            raise error(calib, where, f"camera {serial} has no image in {folder}")
        f = images[serial]
        image = read_video_frame(f, t) if f.suffix.lower() == ".mp4" else read_image(f)
        K_field = f"intrinsics[{serial}]" if isinstance(intr, dict) else "intrinsics"
        K = matrix(field(intr, serial, calib, K_field) if isinstance(intr, dict) else intr, (3, 3), calib, K_field)
        mask = read_image(alphas[serial], "L") if serial in alphas else None
        views.append(View(safe_id(f"cam_{serial}"), _scaled_K(K, image.shape[1], image.shape[0], f), T, image,
                          mask, None, str(f)))
    return views
