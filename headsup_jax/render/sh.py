"""Real spherical harmonics up to degree 3, in gsplat's basis and sign convention."""
from __future__ import annotations

import jax
import jax.numpy as jnp

C0 = 0.2820947917738781


def rgb_to_sh(rgb):
    """The degree-0 coefficient that renders as colour `rgb` from every direction (NumPy or JAX). [..., 3]"""
    return (rgb - 0.5) / C0


def sh_basis(degree: int, dirs: jax.Array) -> jax.Array:
    """SH basis at unit directions. [..., 3] -> [..., (degree+1)^2]"""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    x, y, z = dirs[..., 0], dirs[..., 1], dirs[..., 2]
    out = [jnp.full_like(x, C0)]
    if degree >= 1:
        a = 0.48860251190292
        out += [-a * y, a * z, -a * x]
    if degree >= 2:
        z2 = z * z
        fC1, fS1 = x * x - y * y, 2 * x * y
        b, a = -1.092548430592079 * z, 0.5462742152960395
        out += [a * fS1, b * y, 0.9461746957575601 * z2 - 0.3153915652525201, b * x, a * fC1]
    if degree >= 3:
        fC2, fS2 = x * fC1 - y * fS1, x * fS1 + y * fC1
        c = -2.285228997322329 * z2 + 0.4570457994644658
        b, a = 1.445305721320277 * z, -0.5900435899266435
        out += [a * fS2, b * fS1, c * y, z * (1.865881662950577 * z2 - 1.119528997770346), c * x, b * fC1, a * fC2]
    return jnp.stack(out, -1)


def eval_sh(degree: int, dirs: jax.Array, coeffs: jax.Array) -> jax.Array:
    """Evaluates SH of `degree` along `dirs` (normalised here). [..., 3], [..., K, 3] -> [..., 3]"""
    unit = dirs / jnp.sqrt(jnp.maximum(jnp.sum(dirs * dirs, -1, keepdims=True), 1e-24))
    basis = sh_basis(degree, unit)  # [..., (degree+1)^2]
    return jnp.einsum("...k,...kc->...c", basis, coeffs[..., : basis.shape[-1], :])


def sh_colors(gaussians, camera_position: jax.Array, degree: int | None = None) -> jax.Array:
    """Per-Gaussian colour seen from `camera_position`: max(SH(dir) + 0.5, 0). [P, 3]"""
    degree = gaussians.sh_degree if degree is None else degree
    return jnp.maximum(eval_sh(degree, gaussians.means - camera_position, gaussians.sh) + 0.5, 0.0)
