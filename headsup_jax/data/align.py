"""Head alignment: the similarity from a capture's world frame to the template's canonical frame (+y up,
+z out of the face, metres, head at the origin), applied to the capture's cameras.

A similarity S maps x -> s R x + t (capture world -> template). The cameras are rewritten so that they see
the same images of a head in the template frame: world_to_cam' = diag(s, s, s, 1) @ world_to_cam @ S^-1,
i.e. [R_c R^T | s t_c - R_c R^T t] (rigid; K unchanged, depths scale by s). The capture's own cameras are
kept in `alignment.json`:

    {"method": "masks" | "manual", "world_to_template": {"scale", "rotation" (3x3), "translation"},
     "original_cameras": {id: world_to_cam as first read}, "fit": {...} (method details)}

Every alignment starts from those original cameras, so aligning again re-estimates from the same input
(a no-op for a deterministic method; a new --pose replaces the old one, never composes), and `undo`
restores cameras.json to the original values exactly.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from headsup_jax.data.capture import load_capture
from headsup_jax.data.io import write_json_atomic
from headsup_jax.errors import InputError

ALIGNMENT_FILE = "alignment.json"
METHODS = ("masks", "landmarks", "manual")
_ROTATION_TOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Similarity:
    """x -> scale * rotation @ x + translation."""

    scale: float
    rotation: np.ndarray  # [3, 3] float64, proper rotation
    translation: np.ndarray  # [3] float64

    def apply(self, points) -> np.ndarray:
        """[..., 3] -> [..., 3]"""
        return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.translation

    def inverse(self) -> "Similarity":
        r = self.rotation.T
        return Similarity(1.0 / self.scale, r, -r @ self.translation / self.scale)

    def compose(self, first: "Similarity") -> "Similarity":
        """self after `first`."""
        return Similarity(self.scale * first.scale, self.rotation @ first.rotation, self.apply(first.translation))

    def matrix(self) -> np.ndarray:
        """[4, 4]"""
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = self.scale * self.rotation, self.translation
        return m

    def to_json(self) -> dict:
        return {"scale": float(self.scale), "rotation": self.rotation.tolist(),
                "translation": self.translation.tolist()}


def transform_camera(world_to_cam, sim: Similarity) -> np.ndarray:
    """world_to_cam [4, 4] of the capture frame -> world_to_cam of the frame `sim` maps to (rigid). [4, 4]"""
    w2c = np.asarray(world_to_cam, np.float64)
    out = np.eye(4)
    out[:3, :3] = w2c[:3, :3] @ sim.rotation.T
    out[:3, 3] = sim.scale * w2c[:3, 3] - out[:3, :3] @ sim.translation
    return out


def quaternion_matrix(q) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> rotation [3, 3]."""
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def rotation_angle_degrees(r) -> float:
    """Angle of the rotation [3, 3] in degrees."""
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))


def _error(file, field: str, message: str) -> InputError:
    return InputError(f"file {file}, field {field}: {message}")


def _numbers(value, shape, file, field: str) -> np.ndarray:
    try:
        a = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape != shape or not np.all(np.isfinite(a)):
        raise _error(file, field, f"expected {' x '.join(map(str, shape))} finite numbers, got {value!r}")
    return a


def similarity_from_json(obj, file) -> Similarity:
    """{"scale": s, "rotation": 3x3 rows or quaternion [w, x, y, z], "translation": [x, y, z]} -> Similarity."""
    if not isinstance(obj, dict):
        raise _error(file, "pose", "expected an object with scale, rotation, translation")
    for key in ("scale", "rotation", "translation"):
        if key not in obj:
            raise _error(file, key, "missing")
    scale = obj["scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
        raise _error(file, "scale", f"expected a positive number, got {scale!r}")
    rot = obj["rotation"]
    if isinstance(rot, list) and len(rot) == 4 and not isinstance(rot[0], list):
        q = _numbers(rot, (4,), file, "rotation")
        if np.linalg.norm(q) < 1e-6:
            raise _error(file, "rotation", "the quaternion is zero")
        r = quaternion_matrix(q)
    else:
        r = _numbers(rot, (3, 3), file, "rotation")
        if np.abs(r.T @ r - np.eye(3)).max() > _ROTATION_TOL or np.linalg.det(r) <= 0:
            raise _error(file, "rotation", "not a rotation (orthonormal with det +1) nor a quaternion [w, x, y, z]")
    return Similarity(float(scale), r, _numbers(obj["translation"], (3,), file, "translation"))


def read_pose(path) -> Similarity:
    """The manual pose file (capture world -> template)."""
    path = pathlib.Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise _error(path, "file", "missing") from None
    except (OSError, ValueError) as e:
        raise _error(path, "json", f"unreadable JSON ({e})") from None
    return similarity_from_json(obj, path)


def original_cameras(folder) -> tuple[dict, dict | None]:
    """(cameras.json as read, the original world_to_cam per id from alignment.json or None if unaligned)."""
    folder = pathlib.Path(folder)
    cameras = json.loads((folder / "cameras.json").read_text())
    path = folder / ALIGNMENT_FILE
    if not path.exists():
        return cameras, None
    try:
        original = json.loads(path.read_text())["original_cameras"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _error(path, "original_cameras", f"unreadable ({e!r}); restore cameras.json by hand") from None
    ids = {c["id"] for c in cameras["cameras"]}
    if not isinstance(original, dict) or set(original) != ids:
        raise _error(path, "original_cameras", f"camera ids do not match cameras.json ({sorted(ids)})")
    for cid, m in original.items():
        _numbers(m, (4, 4), path, f"original_cameras.{cid}")
    return cameras, original


def _with_poses(cameras: dict, poses: dict) -> dict:
    return {**cameras, "cameras": [{**c, "world_to_cam": poses[c["id"]]} for c in cameras["cameras"]]}


def align_capture(folder, method: str = "masks", pose=None, settings=None) -> tuple[Similarity, dict]:
    """Estimate the capture-world -> template similarity of the capture `folder` from its original cameras
    and rewrite its cameras.json (the originals go to alignment.json). Returns (similarity, fit details)."""
    folder = pathlib.Path(folder)
    if method not in METHODS:
        raise InputError(f"unknown alignment method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "landmarks":
        raise InputError("alignment --method landmarks is not available: no 2D face-landmark detector with its "
                         "weights inside a pip wheel is a dependency (see README, Your own captures); use masks "
                         "or manual --pose")
    if (method == "manual") != (pose is not None):
        raise InputError("alignment: --pose POSE.json goes with --method manual (and only with it)")
    capture = load_capture(folder)  # validates the capture as it is now
    cameras, original = original_cameras(folder)
    if original is None:
        original = {c["id"]: c["world_to_cam"] for c in cameras["cameras"]}
    source = [dataclasses.replace(c, world_to_cam=np.asarray(original[c.id], np.float64)) for c in capture.cameras]
    if method == "manual":
        sim, info = read_pose(pose), {"pose_file": str(pose)}
    else:
        from headsup_jax.data.align_masks import MaskFitSettings, fit_masks

        sim, info = fit_masks(capture, source, settings or MaskFitSettings())
    poses = {c.id: transform_camera(c.world_to_cam, sim).tolist() for c in source}
    write_json_atomic(folder / ALIGNMENT_FILE, {"method": method, "world_to_template": sim.to_json(),
                                                "original_cameras": original, "fit": info})
    write_json_atomic(folder / "cameras.json", _with_poses(cameras, poses))  # after: the originals are kept
    return sim, info


def undo_alignment(folder) -> bool:
    """Restore the original cameras of an aligned capture and remove alignment.json; False if not aligned."""
    folder = pathlib.Path(folder)
    cameras, original = original_cameras(folder)
    if original is None:
        return False
    write_json_atomic(folder / "cameras.json", _with_poses(cameras, original))
    (folder / ALIGNMENT_FILE).unlink()
    return True
