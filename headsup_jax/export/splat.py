"""`.splat`: the 32-bytes-per-Gaussian format of the web splat viewers (antimatter15/splat and its kin).

Each record, little-endian: position 3 x f32, scale 3 x f32 (linear), RGBA 4 x u8, rotation 4 x u8.
As antimatter15/splat's convert.py writes it:
    RGB = trunc(clip(255 * (0.5 + C0 * f_dc))), the view-independent colour of the degree-0 SH term
    A   = trunc(clip(255 * opacity))
    rot = trunc(clip(128 * q / |q| + 128)), q = (w, x, y, z)
and records sorted by exp(scale_0 + scale_1 + scale_2) * sigmoid(opacity) = volume * opacity, largest
first (the viewers stream the file and draw the big, opaque Gaussians before the rest arrive).
Reading gives degree-0 SH, opacities A / 255 and normalised quaternions (q_u8 - 128) / 128.
"""
from __future__ import annotations

import numpy as np
from etils import epath

from headsup_jax.export.checks import GaussianFileError, host_gaussians
from headsup_jax.fileio import write_bytes_atomic
from headsup_jax.render.sh import C0, rgb_to_sh
from headsup_jax.render.types import Gaussians

RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])
assert RECORD.itemsize == 32


def splat_order(gaussians: Gaussians) -> np.ndarray:
    """Indices in the viewers' order: descending scale product x opacity (stable among ties). [P]"""
    g = host_gaussians(gaussians)
    return np.argsort(-np.prod(g.scales, -1) * g.opacities, kind="stable")


def _u8(x) -> np.ndarray:
    return np.clip(x, 0, 255).astype(np.uint8)  # truncates, as convert.py does


def save_splat(gaussians: Gaussians, path) -> None:
    """Write Gaussians [P] as a .splat file (atomically), sorted as the viewers sort."""
    g = host_gaussians(gaussians)
    order = splat_order(g)
    q = g.quats / np.linalg.norm(g.quats, axis=-1, keepdims=True)
    records = np.empty(g.count, RECORD)
    records["position"] = g.means
    records["scale"] = g.scales
    records["rgba"] = _u8(255 * np.concatenate([0.5 + C0 * g.sh[:, 0], g.opacities[:, None]], -1))
    records["rotation"] = _u8(128 * q + 128)
    write_bytes_atomic(path, records[order].tobytes())


def load_splat(path) -> Gaussians:
    """Read a .splat file -> Gaussians [P] (NumPy float32, SH degree 0)."""
    data = epath.Path(path).read_bytes()
    if len(data) % RECORD.itemsize:
        raise GaussianFileError(f"{path}: {len(data)} bytes is not a whole number of 32-byte .splat records")
    records = np.frombuffer(data, RECORD)
    for field in ("position", "scale"):
        bad = ~np.all(np.isfinite(records[field]), -1)
        if bad.any():
            raise GaussianFileError(f"{path}: record {int(np.flatnonzero(bad)[0])} has a non-finite {field}")
    q = (records["rotation"].astype(np.float32) - 128) / 128
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm == 0):
        raise GaussianFileError(f"{path}: record {int(np.flatnonzero(norm[:, 0] == 0)[0])} has a zero rotation")
    rgba = records["rgba"].astype(np.float32) / 255
    return Gaussians(means=records["position"].copy(), quats=q / norm, scales=records["scale"].copy(),
                     opacities=rgba[:, 3], sh=rgb_to_sh(rgba[:, None, :3]).astype(np.float32))
