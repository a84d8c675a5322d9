"""Ava-256 captures (Meta's 256-identity multi-view dataset).

Layout followed (github.com/facebookresearch/ava-256: DATASHEET.md, utils.load_camera_calibration and
data/ava_dataset.py):

    <capture>/decoder/camera_calibration.json
    <capture>/decoder/frame_list.csv              seg_id,frame_id (the default frame: its first row)
    <capture>/decoder/image/cam<id>.zip           members cam<id>/<frame:06d>.avif (or the unzipped
                                                  folder image/cam<id>/<frame:06d>.avif|png|jpg)

SRC is <capture> or its decoder/ folder; `--frame` a frame id. camera_calibration.json: {"KRT": [{
"cameraId", "K" (3x3 stored transposed: K = K_json^T), "T" (4x4 stored transposed: [R | t] =
T_json[:4, :3]^T, world-to-camera, OpenCV axes, millimetres), "distortion" [k1, k2, p1, p2]
(radial-tangential, OpenCV's order), "projectionModel": "Pinhole"}, ...]}. K refers to the full 2668 x 4096
(W x H) sensor with pixel centres at integers (ava_dataset.py's pixelcoords); released images (667 x 1024,
1334 x 2048) get K (in our +0.5 pixel-centre convention) scaled by width / 2668, as ava_dataset.py divides
focal and principal point by its downsample factor. Every camera needs an image. Segmentation images
(segmentation_parts/) are not read: their classes have no plain foreground label.
"""
from __future__ import annotations

import csv
import pathlib
import zipfile

import numpy as np

from headsup_jax.data.importers.common import View, error, field, load_json, matrix, read_image, rigid, safe_id

FULL_SIZE = (2668, 4096)  # (width, height) of the calibration
_SUFFIXES = (".avif", ".png", ".jpg", ".jpeg")


def _base(src: pathlib.Path) -> pathlib.Path:
    for d in (src, src / "decoder"):
        if (d / "camera_calibration.json").is_file():
            return d
    raise error(src / "decoder" / "camera_calibration.json", "file", "missing (SRC is a capture or its decoder/)")


def _default_frame(base: pathlib.Path, first_cam: str) -> str:
    frame_list = base / "frame_list.csv"
    if frame_list.is_file():
        rows = list(csv.DictReader(frame_list.read_text().splitlines()))
        if not rows or "frame_id" not in rows[0]:
            raise error(frame_list, "frame_id", "expected a header seg_id,frame_id and at least one row")
        return rows[0]["frame_id"]
    folder, archive = base / "image" / f"cam{first_cam}", base / "image" / f"cam{first_cam}.zip"
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    if archive.is_file():
        try:
            with zipfile.ZipFile(archive) as z:
                names = z.namelist()
        except zipfile.BadZipFile as e:
            raise error(archive, "data", f"unreadable zip ({e})") from None
    stems = sorted(pathlib.PurePosixPath(n).stem for n in names if n.lower().endswith(_SUFFIXES))
    if not stems:
        raise error(base / "image", f"cam{first_cam}", "no images (and no frame_list.csv to pick a frame)")
    return stems[0]


def _image(base: pathlib.Path, cam: str, frame: str) -> tuple[np.ndarray, str]:
    try:
        name = f"{int(frame):06d}"
    except ValueError:
        raise error(base, "--frame", f"expected a frame id (a number), got {frame!r}") from None
    archive = base / "image" / f"cam{cam}.zip"
    if archive.is_file():
        try:
            with zipfile.ZipFile(archive) as z:
                member = next((m for m in z.namelist() if pathlib.PurePosixPath(m).stem == name
                               and m.lower().endswith(_SUFFIXES)), None)
                if member is None:
                    raise error(archive, f"cam{cam}/{name}.avif", f"no image of frame {frame} in the archive")
                return read_image(archive / member, data=z.read(member)), f"{archive}:{member}"
        except zipfile.BadZipFile as e:
            raise error(archive, "data", f"unreadable zip ({e})") from None
    for suffix in _SUFFIXES:
        f = base / "image" / f"cam{cam}" / f"{name}{suffix}"
        if f.is_file():
            return read_image(f), str(f)
    raise error(base / "camera_calibration.json", f"KRT[cameraId={cam}]",
                f"camera has no image of frame {frame} (image/cam{cam}.zip or image/cam{cam}/{name}.avif)")


def read(src: pathlib.Path, frame: str | None = None) -> list[View]:
    """The views of one Ava-256 frame."""
    base = _base(src)
    calib = base / "camera_calibration.json"
    krt = field(load_json(calib), "KRT", calib, "KRT")
    if not isinstance(krt, list) or not krt:
        raise error(calib, "KRT", "expected a non-empty list of cameras")
    cams = [str(field(item, "cameraId", calib, f"KRT[{i}].cameraId")) for i, item in enumerate(krt)]
    frame = frame if frame is not None else _default_frame(base, cams[0])
    views = []
    for i, (item, cam) in enumerate(zip(krt, cams)):
        where = f"KRT[{i}]"
        if item.get("projectionModel", "Pinhole") != "Pinhole":
            raise error(calib, f"{where}.projectionModel", f"unsupported {item['projectionModel']!r} (Pinhole only)")
        K = matrix(field(item, "K", calib, f"{where}.K"), (3, 3), calib, f"{where}.K").T
        T = np.eye(4)
        T[:3] = matrix(field(item, "T", calib, f"{where}.T"), (4, 4), calib, f"{where}.T")[:4, :3].T
        dist = matrix(item.get("distortion", [0.0] * 4), (4,), calib, f"{where}.distortion")
        image, source = _image(base, cam, frame)
        h, w = image.shape[:2]
        scale = w / FULL_SIZE[0]
        if abs(FULL_SIZE[1] * scale - h) > 1:
            raise error(source, "size", f"image is {w}x{h}, not the calibration's {FULL_SIZE[0]}x{FULL_SIZE[1]} "
                        "aspect")
        K[:2, 2] += 0.5  # pixel centres: ava-256's at integers (pixelcoords = arange), ours at +0.5
        K[:2] *= scale
        views.append(View(safe_id(cam), K, rigid(T, calib, f"{where}.T"), image, None, tuple(dist), source))
    return views
