"""What the file formats share: their error type, host copies of Gaussians, choosing a format by suffix."""
from __future__ import annotations

import pathlib

import numpy as np

from headsup_jax.errors import InputError
from headsup_jax.render.types import Gaussians

SUFFIXES = (".ply", ".splat")


class GaussianFileError(InputError):
    """A Gaussians file (PLY, .splat) that cannot be read or written; names the file and the property."""


def host_gaussians(gaussians: Gaussians) -> Gaussians:
    """One set of Gaussians [P] as float32 NumPy arrays (refuses a batch [B, P])."""
    g = Gaussians(*(np.asarray(getattr(gaussians, f), np.float32) for f in ("means", "quats", "scales",
                                                                            "opacities", "sh")))
    if g.means.ndim != 2:
        raise ValueError(f"expected one set of Gaussians (means [P, 3]), got means {g.means.shape}; index the batch")
    return g


def _format(path) -> str:
    suffix = pathlib.PurePath(str(path)).suffix.lower()
    if suffix not in SUFFIXES:
        raise GaussianFileError(f"{path}: unknown Gaussians file type {suffix!r}; expected one of {SUFFIXES}")
    return suffix


def save_gaussians(gaussians: Gaussians, path, sh_degree: int | None = None) -> None:
    """Write a .ply (with `sh_degree`) or .splat (colour of the DC term only) by the suffix of `path`."""
    if _format(path) == ".ply":
        from headsup_jax.export.ply import save_ply

        save_ply(gaussians, path, sh_degree)
    else:
        from headsup_jax.export.splat import save_splat

        save_splat(gaussians, path)


def load_gaussians(path) -> Gaussians:
    """Read a .ply or .splat file by its suffix."""
    if _format(path) == ".ply":
        from headsup_jax.export.ply import load_ply

        return load_ply(path)
    from headsup_jax.export.splat import load_splat

    return load_splat(path)
