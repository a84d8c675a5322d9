"""What every importer shares: one `View` per camera, checked number parsing, image decoding, units.

A reader turns its format into `View`s in the source's units and axes already converted to ours (OpenCV
world_to_cam, K in pixels with pixel (i, j) centred at (j + .5, i + .5)); `writer.write_capture_folder`
scales, undistorts and writes them. Errors name the source file and field: `InputError("file FILE, field F: ...")`.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from headsup_jax.data.io import decode_image
from headsup_jax.errors import InputError

# metres per unit; `detect_units` picks one from the rig's size when --units is not given
UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}
_RIGID_TOL = 1e-4


@dataclasses.dataclass
class View:
    """One camera of an import with its decoded image (source units, our axes)."""

    id: str
    K: np.ndarray  # [3, 3] float64 pixels
    world_to_cam: np.ndarray  # [4, 4] float64, rigid, translation in source units
    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray | None = None  # uint8 [H, W], 0 = background
    distortion: tuple[float, ...] | None = None  # OpenCV order (k1, k2, p1, p2[, k3]); None or zeros: pinhole
    source: str = ""  # the file the image came from (for errors)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


def error(file, field: str, message: str) -> InputError:
    return InputError(f"file {file}, field {field}: {message}")


def load_json(path: pathlib.Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(path, "file", "missing") from None
    except (OSError, ValueError) as e:
        raise error(path, "json", f"unreadable JSON ({e})") from None


def field(obj, key, file, where: str):
    """obj[key], or an error naming `where` when obj is not a dict or lacks the key."""
    if not isinstance(obj, dict) or key not in obj:
        raise error(file, where, "missing")
    return obj[key]


def matrix(value, shape, file, where: str) -> np.ndarray:
    """A finite float64 array of `shape`, or an error naming the field."""
    try:
        m = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        m = None
    if m is None or m.shape != tuple(shape):
        raise error(file, where, f"expected a {' x '.join(map(str, shape))} array of numbers")
    if not np.all(np.isfinite(m)):
        raise error(file, where, "contains non-finite values")
    return m


def number(value, file, where: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
            or (positive and value <= 0):
        raise error(file, where, f"expected a {'positive ' if positive else ''}number, got {value!r}")
    return float(value)


def rigid(T: np.ndarray, file, where: str) -> np.ndarray:
    """T [4, 4] unchanged if its rotation is orthonormal with det +1 and its last row [0, 0, 0, 1]."""
    R = T[:3, :3]
    if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-6) or np.abs(R.T @ R - np.eye(3)).max() > _RIGID_TOL \
            or np.linalg.det(R) <= 0:
        raise error(file, where, "is not a rigid pose (rotation not orthonormal with det +1, or last row "
                    "not [0, 0, 0, 1])")
    return T


def pinhole(fx, fy, cx, cy) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def read_image(path: pathlib.Path, mode: str = "RGB", data: bytes | None = None) -> np.ndarray:
    """Decode an image file (or its bytes, e.g. from a zip) to uint8; errors name the file."""
    try:
        return decode_image(path.read_bytes() if data is None else data, mode, path)
    except FileNotFoundError:
        raise error(path, "file", "missing image") from None
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 (pillow raises many types for corrupt data)
        raise error(path, "data", f"unreadable image ({e})") from None


def read_video_frame(path: pathlib.Path, index: int) -> np.ndarray:
    """Frame `index` of a video as uint8 [H, W, 3] (imageio's ffmpeg plugin)."""
    import imageio.v2 as imageio

    if not path.is_file():
        raise error(path, "file", "missing video")
    try:
        with imageio.get_reader(str(path), "ffmpeg") as reader:
            return np.asarray(reader.get_data(index))[..., :3]
    except IndexError:
        raise error(path, "frame", f"the video has no frame {index}") from None
    except Exception as e:  # noqa: BLE001
        raise error(path, "data", f"unreadable video ({e})") from None


def camera_centres(views) -> np.ndarray:
    """[N, 3] camera centres -R^T t."""
    return np.stack([-v.world_to_cam[:3, :3].T @ v.world_to_cam[:3, 3] for v in views])


def detect_units(views) -> str:
    """Units from the rig's size: the median distance r of the camera centres from their mean (from the
    origin for one camera). Head rigs put cameras 0.3-3 m from the head, so r < 10 reads as metres,
    10 <= r < 316 as centimetres and r >= 316 as millimetres (thresholds between the unit ranges)."""
    c = camera_centres(views)
    r = float(np.median(np.linalg.norm(c - (c.mean(0) if len(c) > 1 else 0.0), axis=1)))
    return "m" if r < 10 else "cm" if r < 316 else "mm"


def safe_id(name: str) -> str:
    """A camera id ([A-Za-z0-9_.-]+) from a source name: other characters become '_'."""
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "_.-") else "_" for ch in name) or "_"
