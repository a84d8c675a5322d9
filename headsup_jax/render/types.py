"""Pytree types of the renderer (Gaussians, Camera, Projection, RenderOutput) and `camera_centre`.

All are registered dataclasses, so they pass through `jax.jit`, `jax.vmap` (batched cameras or batched
Gaussians) and `jax.grad`. Image sizes are static metadata.
"""
from __future__ import annotations

import dataclasses

import jax


def camera_centre(world_to_cam):
    """Camera centre -R^T t in world coordinates; NumPy in, NumPy out (JAX likewise). [..., 4, 4] -> [..., 3]"""
    R, t = world_to_cam[..., :3, :3], world_to_cam[..., :3, 3]
    return -(R.swapaxes(-1, -2) @ t[..., None])[..., 0]


def _pytree(cls=None, *, meta=()):
    def wrap(c):
        c = dataclasses.dataclass(frozen=True)(c)
        data = [f.name for f in dataclasses.fields(c) if f.name not in meta]
        return jax.tree_util.register_dataclass(c, data_fields=data, meta_fields=list(meta))

    return wrap if cls is None else wrap(cls)


@_pytree
class Gaussians:
    """A set of 3D Gaussians (DESIGN.md conventions; raw quats are normalised by the renderer)."""

    means: jax.Array  # [P, 3] metres, world frame
    quats: jax.Array  # [P, 4] (w, x, y, z)
    scales: jax.Array  # [P, 3] positive, linear
    opacities: jax.Array  # [P] in [0, 1]
    sh: jax.Array  # [P, (L+1)^2, 3]

    @property
    def count(self) -> int:
        return self.means.shape[-2]

    @property
    def sh_degree(self) -> int:
        return int(round(self.sh.shape[-2] ** 0.5)) - 1


@_pytree(meta=("width", "height"))
class Camera:
    """A pinhole camera, OpenCV convention: x right, y down, z forward; pixel (i, j) centre at (j+.5, i+.5)."""

    world_to_cam: jax.Array  # [4, 4]
    K: jax.Array  # [3, 3] pixels
    width: int
    height: int

    @property
    def position(self) -> jax.Array:
        """Camera centre in world coordinates. [3]"""
        return camera_centre(self.world_to_cam)


@_pytree
class Projection:
    """Screen-space Gaussians (see `project`)."""

    means2d: jax.Array  # [P, 2] pixels
    conics: jax.Array  # [P, 3] upper triangle (a, b, c) of the inverse 2D covariance
    depths: jax.Array  # [P] camera z
    radii: jax.Array  # [P, 2] int32 half-extent in pixels of the 1/255 level set; 0 when culled
    visible: jax.Array  # [P] bool


@_pytree
class RenderOutput:
    """Images of one camera and the renderer's counters."""

    rgb: jax.Array  # [H, W, 3]
    alpha: jax.Array  # [H, W] accumulated opacity, 1 - final transmittance
    depth: jax.Array  # [H, W] alpha-weighted camera depth, sum_i w_i z_i (divide by alpha for mean depth)
    stats: dict  # name -> scalar array (e.g. "dropped_pairs", "max_tile_count")
