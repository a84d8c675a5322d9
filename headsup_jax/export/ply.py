"""PLY in the standard 3D Gaussian splatting layout (the Inria `point_cloud.ply`), via plyfile.

One `vertex` element, float32 properties in this order:
    x, y, z            means (metres)
    nx, ny, nz         zeros (unused by splatting tools)
    f_dc_0..2          SH degree-0 coefficients (R, G, B)
    f_rest_0..         the higher coefficients channel-major: all of R's (L+1)^2 - 1, then G's, then B's
    opacity            logit of the opacity
    scale_0..2         log of the scales
    rot_0..3           the rotation quaternion (w, x, y, z), as predicted (readers normalise it)
Colour is SH(dir) + 0.5 as in our renderer and the Inria one, so the coefficients are stored as they are.
"""
from __future__ import annotations

import io

import numpy as np
import plyfile

from headsup_jax.export.checks import GaussianFileError, host_gaussians
from headsup_jax.fileio import write_bytes_atomic
from headsup_jax.limits import check_file_size
from headsup_jax.render.types import Gaussians

_OPACITY_EPS = 1e-12  # opacities 0 and 1 are stored as finite logits (about -27.6 and +27.6)
_FIXED = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
_TAIL = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
_REST_COUNTS = {3 * ((d + 1) ** 2 - 1): d for d in range(4)}  # number of f_rest -> SH degree


def property_names(sh_degree: int) -> list[str]:
    """The layout's property names, in order, for SH degree 0..3."""
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return _FIXED + [f"f_rest_{i}" for i in range(rest)] + _TAIL


def save_ply(gaussians: Gaussians, path, sh_degree: int | None = None) -> None:
    """Write Gaussians [P] to `path` (binary little-endian PLY, atomically).

    `sh_degree` (0..3, default: the Gaussians' own) pads the missing higher coefficients with zeros or
    drops the extra ones; `sh_degree=3` gives the 45 f_rest properties many viewers require."""
    g = host_gaussians(gaussians)
    degree = g.sh_degree if sh_degree is None else int(sh_degree)
    if not 0 <= degree <= 3:
        raise ValueError(f"sh_degree must be in 0..3, got {sh_degree}")
    K = (degree + 1) ** 2
    sh = np.zeros((g.count, K, 3), np.float32)
    k = min(K, g.sh.shape[1])
    sh[:, :k] = g.sh[:, :k]
    p = np.clip(g.opacities.astype(np.float64), _OPACITY_EPS, 1.0 - _OPACITY_EPS)
    columns = [g.means, np.zeros_like(g.means), sh[:, 0],
               sh[:, 1:].transpose(0, 2, 1).reshape(g.count, -1),  # [P, 3 * (K - 1)] channel-major
               np.log(p / (1.0 - p))[:, None], np.log(g.scales.astype(np.float64)), g.quats]
    values = np.concatenate([np.asarray(c, np.float32) for c in columns], 1)  # [P, 17 + 3 (K - 1)]
    names = property_names(degree)
    vertex = np.empty(g.count, [(n, "f4") for n in names])
    for i, n in enumerate(names):
        vertex[n] = values[:, i]
    buf = io.BytesIO()
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")], byte_order="<").write(buf)
    write_bytes_atomic(path, buf.getvalue())


def _column(vertex, name: str, path) -> np.ndarray:
    if name not in vertex.data.dtype.names:
        raise GaussianFileError(f"{path}: vertex property {name!r} is missing (3DGS layout expected)")
    col = np.asarray(vertex[name], np.float64)
    if not np.all(np.isfinite(col)):
        raise GaussianFileError(f"{path}: vertex property {name!r} has non-finite values "
                                f"(first at vertex {int(np.flatnonzero(~np.isfinite(col))[0])})")
    return col


def load_ply(path) -> Gaussians:
    """Read a PLY in the 3DGS layout (ours or another tool's, SH degree 0..3) -> Gaussians [P] (NumPy float32).

    Scales are exp(scale_*), opacities sigmoid(opacity), quaternions as stored (w, x, y, z)."""
    check_file_size(path)
    try:
        data = plyfile.PlyData.read(str(path))
    except (plyfile.PlyParseError, ValueError, EOFError) as e:
        raise GaussianFileError(f"{path}: not a readable PLY file ({e})") from e
    if "vertex" not in [el.name for el in data.elements]:
        raise GaussianFileError(f"{path}: no 'vertex' element (3DGS layout expected)")
    vertex = data["vertex"]
    names = vertex.data.dtype.names
    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda n: int(n[7:]) if n[7:].isdigit() else -1)
    if len(rest) not in _REST_COUNTS:
        raise GaussianFileError(f"{path}: {len(rest)} f_rest_* properties; SH degrees 0..3 have "
                                f"{sorted(_REST_COUNTS)}")
    col = lambda n: _column(vertex, n, path)
    for i, n in enumerate(rest):
        if n != f"f_rest_{i}":
            raise GaussianFileError(f"{path}: vertex property 'f_rest_{i}' is missing (found {n!r})")
    P, K = len(vertex.data), (_REST_COUNTS[len(rest)] + 1) ** 2
    sh = np.zeros((P, K, 3))
    sh[:, 0] = np.stack([col(f"f_dc_{c}") for c in range(3)], 1)
    if K > 1:
        sh[:, 1:] = np.stack([col(n) for n in rest], 1).reshape(P, 3, K - 1).transpose(0, 2, 1)
    f32 = lambda a: np.asarray(a, np.float32)
    return Gaussians(means=f32(np.stack([col(n) for n in "xyz"], 1)),
                     quats=f32(np.stack([col(f"rot_{i}") for i in range(4)], 1)),
                     scales=f32(np.exp(np.stack([col(f"scale_{i}") for i in range(3)], 1))),
                     opacities=f32(1.0 / (1.0 + np.exp(-col("opacity")))), sh=f32(sh))
