"""Tiny capture folders for the data tests (made in tmp_path, never committed)."""
import numpy as np

from headsup_jax.data.capture import CameraSpec, write_capture
from headsup_jax.data.io import encode_png
from headsup_jax.render.cameras import look_at


def tiny_cameras(n=4, width=32, height=24):
    cams = []
    for k in range(n):
        az = np.radians(-60 + 120 * k / max(n - 1, 1))
        cam = look_at([0.8 * np.sin(az), 0.1, 0.8 * np.cos(az)], width, height, 30.0)
        cams.append(CameraSpec(f"cam{k:02d}", np.asarray(cam.K), np.asarray(cam.world_to_cam), width, height))
    return cams


def make_capture(path, n=4, width=32, height=24, seed=0, masks=True, blendshapes=None):
    """A capture folder whose image k is filled with a value identifying (seed, camera k)."""
    cams = tiny_cameras(n, width, height)
    rng = np.random.default_rng(seed)
    images, mask_bytes = {}, {}
    for k, c in enumerate(cams):
        img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        img[0, 0] = (seed % 256, k, 7)  # tag pixel: (subject seed, camera index)
        images[c.id] = encode_png(img)
        mask_bytes[c.id] = encode_png(np.where(rng.random((height, width)) > 0.5, 255, 0).astype(np.uint8))
    write_capture(path, cams, images, mask_bytes if masks else None, blendshapes)
    return cams
