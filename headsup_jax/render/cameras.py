"""Building cameras: intrinsics from a field of view and look-at extrinsics (OpenCV axes)."""
from __future__ import annotations

import numpy as np

from headsup_jax.render.types import Camera


def intrinsics(width: int, height: int, fov_y_degrees: float) -> np.ndarray:
    """Pinhole K with square pixels and the principal point at the image centre. [3, 3]"""
    f = 0.5 * height / np.tan(0.5 * np.radians(fov_y_degrees))
    return np.array([[f, 0.0, 0.5 * width], [0.0, f, 0.5 * height], [0.0, 0.0, 1.0]], np.float32)


def look_at_matrix(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """world_to_cam [4, 4] of a camera at `eye` looking at `target`; image y points along -up."""
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError(f"look_at: up {up} is parallel to the viewing direction {forward}")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = R, -R @ eye
    return m.astype(np.float32)


def look_at(eye, width: int, height: int, fov_y_degrees: float = 30.0, target=(0.0, 0.0, 0.0),
            up=(0.0, 1.0, 0.0)) -> Camera:
    """A camera at `eye` looking at `target`."""
    return Camera(world_to_cam=look_at_matrix(eye, target, up), K=intrinsics(width, height, fov_y_degrees),
                  width=width, height=height)


def orbit(num: int, radius: float, width: int, height: int, fov_y_degrees: float = 30.0,
          elevation_degrees: float = 0.0, target=(0.0, 0.0, 0.0)) -> list[Camera]:
    """`num` cameras evenly around the +y axis, starting in front (+z)."""
    cams = []
    el = np.radians(elevation_degrees)
    for k in range(num):
        az = 2 * np.pi * k / num
        eye = np.asarray(target) + radius * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
        cams.append(look_at(eye, width, height, fov_y_degrees, target))
    return cams
