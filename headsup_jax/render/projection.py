"""EWA projection of 3D Gaussians to the image plane (the conventions of gsplat's pinhole camera)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from headsup_jax.render.types import Camera, Gaussians, Projection

ALPHA_MIN = 1.0 / 255.0  # the compositing threshold; the screen radius is the extent of this level set


def quat_to_rotmat(quats: jax.Array) -> jax.Array:
    """Rotation matrices from (w, x, y, z) quaternions, normalised here. [..., 4] -> [..., 3, 3]"""
    q = quats / jnp.sqrt(jnp.maximum(jnp.sum(quats * quats, -1, keepdims=True), 1e-24))
    w, x, y, z = jnp.moveaxis(q, -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return jnp.stack([jnp.stack(r, -1) for r in rows], -2)


def facing_quats(normals: np.ndarray) -> np.ndarray:
    """Quaternions (w, x, y, z) rotating +z onto each unit normal (NumPy; +z -> -z turns about x). [n, 3] -> [n, 4]"""
    normals = np.asarray(normals, np.float64)
    q = np.concatenate([1.0 + normals[:, 2:], np.cross([0.0, 0.0, 1.0], normals)], -1)
    q[q[:, 0] < 1e-6] = [0.0, 1.0, 0.0, 0.0]
    return (q / np.linalg.norm(q, axis=-1, keepdims=True)).astype(np.float32)


def covariance(quats: jax.Array, scales: jax.Array) -> jax.Array:
    """World-space covariance R S S R^T. [P, 4], [P, 3] -> [P, 3, 3]"""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ jnp.swapaxes(m, -1, -2)


def project(
    gaussians: Gaussians,
    camera: Camera,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    alpha_min: float = ALPHA_MIN,
) -> Projection:
    """Projects Gaussians into `camera`.

    The 2D covariance is J W Sigma W^T J^T + eps2d I, with the Jacobian evaluated at the mean clamped to
    1.3x the field of view (as gsplat). `radii` bound the level set where opacity * exp(-power) reaches
    `alpha_min`, so every pixel that can receive a contribution lies inside the Gaussian's tiles.
    A Gaussian is invisible (radii 0) when its depth is outside (near, far), its 2D covariance is
    singular, its opacity is below `alpha_min` or its footprint misses the image.
    """
    R, t = camera.world_to_cam[:3, :3], camera.world_to_cam[:3, 3]
    means_c = gaussians.means @ R.T + t  # [P, 3]
    cov_c = R @ covariance(gaussians.quats, gaussians.scales) @ R.T  # [P, 3, 3]

    tz_raw = means_c[:, 2]
    in_depth = (tz_raw > near_plane) & (tz_raw < far_plane)
    tz = jnp.where(in_depth, tz_raw, 1.0)  # safe value for culled Gaussians (no NaN in gradients)
    K = camera.K
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    w, h = camera.width, camera.height
    lim_x_pos = (w - cx) / fx + 0.3 * (0.5 * w / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * w / fx)
    lim_y_pos = (h - cy) / fy + 0.3 * (0.5 * h / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * h / fy)
    tx = tz * jnp.clip(means_c[:, 0] / tz, -lim_x_neg, lim_x_pos)
    ty = tz * jnp.clip(means_c[:, 1] / tz, -lim_y_neg, lim_y_pos)
    zeros = jnp.zeros_like(tz)
    J = jnp.stack(
        [jnp.stack([fx / tz, zeros, -fx * tx / tz**2], -1), jnp.stack([zeros, fy / tz, -fy * ty / tz**2], -1)],
        -2,
    )  # [P, 2, 3]
    cov2d = J @ cov_c @ jnp.swapaxes(J, -1, -2) + eps2d * jnp.eye(2, dtype=cov_c.dtype)  # [P, 2, 2]
    a, b, c = cov2d[:, 0, 0], 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0]), cov2d[:, 1, 1]
    det_raw = a * c - b * b
    det = jnp.maximum(det_raw, 1e-10)
    conics = jnp.stack([c / det, -b / det, a / det], -1)  # [P, 3]
    means2d = jnp.stack([fx * means_c[:, 0] / tz + cx, fy * means_c[:, 1] / tz + cy], -1)  # [P, 2]

    opacities = gaussians.opacities
    level = 2.0 * jnp.log(jnp.maximum(opacities / alpha_min, 1.0))  # Mahalanobis^2 of the alpha_min level set
    extent = jnp.sqrt(level[:, None] * jnp.maximum(jnp.stack([a, c], -1), 0.0))  # [P, 2]
    radii = jnp.ceil(jax.lax.stop_gradient(extent)).astype(jnp.int32)
    inside = (
        (means2d[:, 0] + radii[:, 0] > 0)
        & (means2d[:, 0] - radii[:, 0] < w)
        & (means2d[:, 1] + radii[:, 1] > 0)
        & (means2d[:, 1] - radii[:, 1] < h)
    )
    visible = in_depth & (det_raw > 1e-10) & (opacities >= alpha_min) & inside & jnp.all(radii > 0, -1)
    radii = jnp.where(visible[:, None], radii, 0)
    return Projection(means2d=means2d, conics=conics, depths=tz_raw, radii=radii, visible=visible)
