"""Camera conditioning: per-pixel Plücker ray maps."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from headsup_jax.render.types import camera_centre


def plucker_rays(K: jax.Array, world_to_cam: jax.Array, height: int, width: int) -> jax.Array:
    """Plücker coordinates (d, o x d) of the rays through pixel centres of an H x W image.

    K [..., 3, 3] and world_to_cam [..., 4, 4] describe the camera at that image size. -> [..., H, W, 6]
    """
    ys, xs = jnp.meshgrid(jnp.arange(height) + 0.5, jnp.arange(width) + 0.5, indexing="ij")
    pix = jnp.stack([xs, ys, jnp.ones_like(xs)], -1)  # [H, W, 3]
    R = world_to_cam[..., :3, :3]
    cam_dirs = jnp.einsum("...ij,hwj->...hwi", jnp.linalg.inv(K), pix)
    dirs = jnp.einsum("...ji,...hwj->...hwi", R, cam_dirs)  # R^T d: camera to world
    dirs = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
    origin = camera_centre(world_to_cam)[..., None, None, :]  # [..., 1, 1, 3]
    moment = jnp.cross(jnp.broadcast_to(origin, dirs.shape), dirs)
    return jnp.concatenate([dirs, moment], -1)


def ray_distance2(points: jax.Array, rays: jax.Array) -> jax.Array:
    """Squared distance from points [L, 3] to the lines of Plücker rays [B, T, 6] (unit d, m = o x d):
    |p x d - m|^2 = |p|^2 - (p.d)^2 - 2 p.(d x m) + |m|^2. -> [B, L, T]"""
    d, m = rays[..., :3], rays[..., 3:]
    along = jnp.einsum("lc,btc->blt", points, d)
    across = jnp.einsum("lc,btc->blt", points, jnp.cross(d, m))
    d2 = jnp.sum(points ** 2, -1)[None, :, None] - along ** 2 - 2.0 * across + jnp.sum(m ** 2, -1)[:, None, :]
    return jnp.maximum(d2, 0.0)
