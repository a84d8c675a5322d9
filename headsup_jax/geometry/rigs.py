"""Camera rigs around a head at the origin: the paper's 16-camera frontal rig, an Ava-256-like 80-camera
dome, random rigs, and per-capture jitter. All return `headsup_jax.render.Camera`s (OpenCV, metres).

Images are portrait, height = `resolution`, width = round(0.75 * resolution) (the paper's 1000 x 750).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from headsup_jax.render import Camera
from headsup_jax.render.types import camera_centre
from headsup_jax.render.cameras import look_at, look_at_matrix

ASPECT = 0.75  # width / height
TARGET = (0.0, -0.03, 0.0)  # aim point: between the crown (y = 0.125) and the neck of the templates


def image_size(resolution: int) -> tuple[int, int]:
    """(width, height) of a rig image whose height is `resolution`."""
    return int(round(ASPECT * resolution)), int(resolution)


def _spherical(radius, azimuth_deg, elevation_deg) -> np.ndarray:
    """Eye position; azimuth 0 is in front of the face (+z), positive towards the subject's left (+x)."""
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    return radius * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])


def frontal16(resolution: int = 1000, radius: float = 1.0, fov_y_degrees: float = 26.0,
              target=TARGET) -> list[Camera]:
    """16 cameras on the frontal hemisphere in three rows (5 high, 6 level, 5 low), all aimed at `target`."""
    width, height = image_size(resolution)
    rows = [(25.0, (-60, -30, 0, 30, 60)), (0.0, (-75, -45, -15, 15, 45, 75)), (-20.0, (-60, -30, 0, 30, 60))]
    return [look_at(target + _spherical(radius, az, el), width, height, fov_y_degrees, target)
            for el, azimuths in rows for az in azimuths]


def dome80(resolution: int = 1000, radius: float = 1.2, fov_y_degrees: float = 24.0,
           min_elevation: float = -35.0, max_elevation: float = 70.0, target=TARGET) -> list[Camera]:
    """80 cameras all around the head on a dome (golden-spiral spacing between the two elevations)."""
    width, height = image_size(resolution)
    k = np.arange(80) + 0.5
    lo, hi = np.sin(np.radians([min_elevation, max_elevation]))
    elevation = np.degrees(np.arcsin(lo + (hi - lo) * k / 80))
    azimuth = np.degrees(np.pi * (3.0 - np.sqrt(5.0)) * k) % 360.0
    return [look_at(target + _spherical(radius, az, el), width, height, fov_y_degrees, target)
            for az, el in zip(azimuth, elevation)]


def random_rig(num: int, seed: int, resolution: int = 1000, radius=(0.8, 1.3), azimuth=(-90.0, 90.0),
               elevation=(-30.0, 40.0), fov_y_degrees=(20.0, 30.0), target=TARGET) -> list[Camera]:
    """`num` cameras at uniformly random spherical positions and fields of view (ranges are (low, high))."""
    rng = np.random.default_rng(seed)
    width, height = image_size(resolution)
    cams = []
    for _ in range(num):
        r, az, el, fov = (rng.uniform(*bounds) for bounds in (radius, azimuth, elevation, fov_y_degrees))
        cams.append(look_at(target + _spherical(r, az, el), width, height, fov, target))
    return cams


@dataclasses.dataclass(frozen=True)
class Jitter:
    """Standard deviations of the per-camera calibration noise."""

    position: float = 0.02  # metres, camera centre
    target: float = 0.02  # metres, the point the camera aims at
    roll_degrees: float = 2.0
    focal: float = 0.03  # relative
    principal_point: float = 0.01  # fraction of the image size


def jitter(cameras: list[Camera], seed: int, noise: Jitter = Jitter()) -> list[Camera]:
    """Perturb each camera's pose and intrinsics (deterministic in `seed`); poses stay rigid."""
    rng = np.random.default_rng(seed)
    out = []
    for cam in cameras:
        w2c = np.asarray(cam.world_to_cam, np.float64)
        eye = camera_centre(w2c)
        forward = w2c[2, :3]
        target = eye + forward * np.linalg.norm(eye) + rng.normal(0, noise.target, 3)
        m = look_at_matrix(eye + rng.normal(0, noise.position, 3), target).astype(np.float64)
        roll = np.radians(rng.normal(0, noise.roll_degrees))
        c, s = np.cos(roll), np.sin(roll)
        m[:3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ m[:3]
        K = np.asarray(cam.K, np.float64).copy()
        K[:2, :2] *= 1.0 + rng.normal(0, noise.focal)
        K[:2, 2] += rng.normal(0, noise.principal_point, 2) * np.array([cam.width, cam.height])
        out.append(Camera(world_to_cam=m.astype(np.float32), K=K.astype(np.float32), width=cam.width,
                          height=cam.height))
    return out


def make_rig(name: str, resolution: int, seed: int = 0, noise: Jitter | None = None) -> list[Camera]:
    """A rig by name: "frontal16", "dome80" or "random<N>" (e.g. "random12"); jittered when `noise` is given."""
    if name == "frontal16":
        cams = frontal16(resolution)
    elif name == "dome80":
        cams = dome80(resolution)
    elif name.startswith("random") and name[6:].isdigit() and int(name[6:]) > 0:
        cams = random_rig(int(name[6:]), seed, resolution)
    else:
        raise ValueError(f"unknown rig {name!r}: expected 'frontal16', 'dome80' or 'random<N>'")
    return cams if noise is None else jitter(cams, seed, noise)


__all__ = ["ASPECT", "TARGET", "Jitter", "dome80", "frontal16", "image_size", "jitter", "make_rig", "random_rig"]
