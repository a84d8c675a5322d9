"""Anchoring Gaussians to a (deformed) template through the UV atlas.

All activations of the decoder's raw predictions live here: offsets are metres in the local frame,
rotations are added to the identity quaternion and normalised, log-scales are relative to the local
texel footprint, opacity logits pass through a sigmoid with a bias, SH coefficients pass through.
Zero predictions give opaque, flat surfels that tile the surface without holes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from headsup_jax.geometry.atlas import UVAtlas
from headsup_jax.render import Gaussians

TANGENT_SCALE = 0.6  # tangential standard deviation at zero log-scale, in texel footprints
NORMAL_SCALE = 0.1  # standard deviation along the normal, in texel footprints
OPACITY_BIAS = 3.0  # zero logits give sigmoid(3) = 0.95
MAX_FOOTPRINT = 3.0  # footprints are capped at this many mean texel sizes (triangles squashed in UV)


def _normalize(x, eps=1e-12):
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps))


def matrix_to_quat(m: jax.Array) -> jax.Array:
    """Rotation matrices [..., 3, 3] to unit quaternions (w, x, y, z) [..., 4] (Shepperd's method)."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    root = lambda x: 2 * jnp.sqrt(jnp.maximum(x, 1e-12))  # noqa: E731
    s0, s1 = root(1 + m00 + m11 + m22), root(1 + m00 - m11 - m22)
    s2, s3 = root(1 - m00 + m11 - m22), root(1 - m00 - m11 + m22)
    cands = jnp.stack([
        jnp.stack([s0 / 4, (m21 - m12) / s0, (m02 - m20) / s0, (m10 - m01) / s0], -1),
        jnp.stack([(m21 - m12) / s1, s1 / 4, (m01 + m10) / s1, (m02 + m20) / s1], -1),
        jnp.stack([(m02 - m20) / s2, (m01 + m10) / s2, s2 / 4, (m12 + m21) / s2], -1),
        jnp.stack([(m10 - m01) / s3, (m02 + m20) / s3, (m12 + m21) / s3, s3 / 4], -1),
    ], -2)  # [..., 4, 4]
    pick = jnp.argmax(jnp.stack([m00 + m11 + m22, m00, m11, m22], -1), -1)
    return _normalize(jnp.take_along_axis(cands, pick[..., None, None], -2)[..., 0, :])


def quat_multiply(a: jax.Array, b: jax.Array) -> jax.Array:
    """Hamilton product a * b of (w, x, y, z) quaternions. [..., 4]"""
    aw, ax, ay, az = jnp.moveaxis(a, -1, 0)
    bw, bx, by, bz = jnp.moveaxis(b, -1, 0)
    return jnp.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                      aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def surface_frames(vertices: jax.Array, atlas: UVAtlas):
    """Anchor points [G, 3], local frames [G, 3, 3] (columns: tangent along +u, bitangent, normal) and
    texel footprints [G, 2] of the valid texels on `vertices` [V, 3]: the extent along the tangent and
    the bitangent of the surface parallelogram one texel maps to (each at most MAX_FOOTPRINT mean
    texel sizes, for triangles squashed in UV)."""
    vid, bary, uv = atlas.binding()
    p = vertices[vid]  # [G, 3, 3]
    anchor = jnp.einsum("gk,gkc->gc", bary, p)
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    d1, d2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]  # [G, 2]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]  # signed UV area x 2 (non-zero: rasterised triangles)
    dp_du = (e1 * d2[:, 1:] - e2 * d1[:, 1:]) / det[:, None]  # [G, 3] surface per unit u
    dp_dv = (e2 * d1[:, :1] - e1 * d2[:, :1]) / det[:, None]
    n = _normalize(jnp.cross(e1, e2))
    t = _normalize(dp_du - jnp.sum(dp_du * n, -1, keepdims=True) * n)
    b = jnp.cross(n, t)
    frame = jnp.stack([t, b, n], -1)
    along_t = jnp.sqrt(jnp.sum(dp_du * t, -1) ** 2 + jnp.sum(dp_dv * t, -1) ** 2)
    along_b = jnp.abs(jnp.sum(dp_dv * b, -1))  # dp_du has no b component
    footprint = jnp.minimum(jnp.stack([along_t, along_b], -1) / atlas.resolution, MAX_FOOTPRINT * atlas.texel_size)
    return anchor, frame, footprint


def anchor(template_vertices: jax.Array, atlas: UVAtlas, offsets=None, rotations=None, log_scales=None,
           opacity_logits=None, sh=None) -> Gaussians:
    """Gaussians on the valid texels of `atlas`, riding the mesh `template_vertices` [V, 3].

    offsets [G, 3] metres in the local frame; rotations [G, 4] added to the identity (w, x, y, z);
    log_scales [G, 3] relative to TANGENT_SCALE x the footprint along the tangent and the bitangent and
    NORMAL_SCALE x their geometric mean along the normal;
    opacity_logits [G]; sh [G, K, 3] (default: zeros, mid grey). None means zeros.
    """
    G = atlas.count
    zeros = lambda *s: jnp.zeros((G, *s), jnp.float32)  # noqa: E731
    offsets = zeros(3) if offsets is None else offsets
    rotations = zeros(4) if rotations is None else rotations
    log_scales = zeros(3) if log_scales is None else log_scales
    opacity_logits = zeros() if opacity_logits is None else opacity_logits
    sh = zeros(1, 3) if sh is None else sh
    point, frame, footprint = surface_frames(jnp.asarray(template_vertices, jnp.float32), atlas)
    means = point + jnp.einsum("gij,gj->gi", frame, offsets)
    local = _normalize(jnp.array([1.0, 0, 0, 0]) + rotations)
    quats = quat_multiply(matrix_to_quat(frame), local)
    extent = jnp.concatenate([footprint, jnp.sqrt(jnp.prod(footprint, -1, keepdims=True))], -1)  # [G, 3]
    scales = extent * jnp.array([TANGENT_SCALE, TANGENT_SCALE, NORMAL_SCALE]) * jnp.exp(log_scales)
    return Gaussians(means=means, quats=quats, scales=scales,
                     opacities=jax.nn.sigmoid(opacity_logits + OPACITY_BIAS), sh=sh)
