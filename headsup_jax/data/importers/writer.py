"""Turn an importer's `View`s into a validated capture folder: units to metres, undistortion to an ideal
pinhole camera (OpenCV), PNG images and masks, then the capture validator.

Everything is written into a temporary folder beside --out and renamed to --out only once the validator
accepts it, so a failed import leaves no --out behind (an existing, non-empty --out is refused).
"""
from __future__ import annotations

import pathlib
import shutil
import uuid

import numpy as np

from headsup_jax.data.capture import CameraSpec, CaptureError, check_capture, write_capture
from headsup_jax.data.importers.common import UNITS, View, detect_units, error
from headsup_jax.data.io import encode_png
from headsup_jax.errors import InputError

# our pixel centres are at +0.5 (DESIGN.md), OpenCV's at integers: K_opencv = _TO_OPENCV @ K
_TO_OPENCV = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])


def is_distorted(view: View) -> bool:
    return view.distortion is not None and any(d != 0 for d in view.distortion)


def undistort(view: View) -> View:
    """The view resampled to a pinhole camera of the same size (bilinear; images and masks alike).

    The new K is OpenCV's `getOptimalNewCameraMatrix` with alpha 0: every output pixel sees the scene.
    """
    import cv2

    size = (view.width, view.height)
    K_cv, dist = _TO_OPENCV @ view.K, np.asarray(view.distortion, np.float64)
    new_cv, _ = cv2.getOptimalNewCameraMatrix(K_cv, dist, size, 0, size)
    map_x, map_y = cv2.initUndistortRectifyMap(K_cv, dist, None, new_cv, size, cv2.CV_32FC1)

    def remap(a):
        return None if a is None else cv2.remap(a, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    new_K = np.linalg.inv(_TO_OPENCV) @ new_cv
    new_K[0, 1] = new_K[1, 0] = 0.0
    return View(view.id, new_K, view.world_to_cam, remap(view.image), remap(view.mask), None, view.source)


def _check_views(views: list[View]) -> None:
    if not views:
        raise InputError("the source holds no cameras with images")
    seen = set()
    for v in views:
        if v.id in seen:
            raise error(v.source, "camera id", f"two cameras get the id {v.id!r}")
        seen.add(v.id)
        if v.mask is not None and v.mask.shape != v.image.shape[:2]:
            raise error(v.source, "mask", f"mask is {v.mask.shape[1]}x{v.mask.shape[0]} but the image is "
                        f"{v.width}x{v.height}")
    with_mask = [v.mask is not None for v in views]
    if any(with_mask) and not all(with_mask):
        v = views[with_mask.index(False)]
        raise error(v.source, "mask", "no mask for this camera while other cameras have one")


def write_capture_folder(views: list[View], out, subject: str | None = None,
                         units: str | None = None) -> tuple:
    """Write `views` as the capture folder `out`; returns (Capture, units used, ids undistorted)."""
    out = pathlib.Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out}: exists and is not empty (choose a new folder)")
    _check_views(views)
    if units is not None and units not in UNITS:
        raise InputError(f"--units {units!r}: expected one of {sorted(UNITS)}")
    units = units or detect_units(views)
    undistorted = [v.id for v in views if is_distorted(v)]
    cams, images, masks = [], {}, {}
    for v in views:
        v = undistort(v) if is_distorted(v) else v
        T = np.array(v.world_to_cam, np.float64)
        T[:3, 3] *= UNITS[units]
        cams.append(CameraSpec(v.id, v.K, T, v.width, v.height))
        images[v.id] = encode_png(v.image)
        if v.mask is not None:
            masks[v.id] = encode_png(v.mask)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.importing-{uuid.uuid4().hex[:8]}"
    try:
        write_capture(tmp, cams, images, masks or None)
        _, problems = check_capture(tmp, subject or out.name)
        if problems:
            raise CaptureError(problems[0])
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    capture, _ = check_capture(out, subject or out.name, decode_images=False)
    return capture, units, undistorted
