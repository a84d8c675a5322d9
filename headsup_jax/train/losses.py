"""Training losses: pure JAX, jit-able, each returning a float32 scalar.

Normalisation. Image losses take `[..., H, W, 3]` images in [0, 1] and optional non-negative per-pixel
weights `[..., H, W]`; they return the weighted mean over the whole batch, sum(w * l) / sum(w) (the
plain mean without weights; 0 when every weight is 0), where l is the per-pixel, per-channel value.
So 0/1 weights give the mean over the selected pixels, and region weights (`region_weight_map`) shift
emphasis towards eyes and mouth without changing the loss's scale. The UV and offset regularisers say
their own normalisation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from headsup_jax.train.metrics import ssim_map, weighted_mean


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _pixel_weights(weights):
    """[..., H, W] -> [..., H, W, 1] (broadcasts over channels), or None."""
    return None if weights is None else _f32(weights)[..., None]


def l1_loss(pred, target, weights=None):
    """Weighted mean |pred - target| over pixels and channels. [..., H, W, 3] x2, [..., H, W] -> []"""
    return weighted_mean(jnp.abs(_f32(pred) - _f32(target)), _pixel_weights(weights))


def dssim_loss(pred, target, weights=None):
    """Weighted mean of (1 - SSIM) / 2 over pixels (SSIM map averaged over channels, `metrics.ssim_map`)."""
    return weighted_mean((1.0 - ssim_map(pred, target)) / 2.0, None if weights is None else _f32(weights))


def mask_l1_loss(alpha, mask, weights=None):
    """Weighted mean |alpha - mask| of rendered alpha vs the target mask. [..., H, W] x2 (x3) -> []"""
    return weighted_mean(jnp.abs(_f32(alpha) - _f32(mask)), None if weights is None else _f32(weights))


def mask_bce_loss(alpha, mask, weights=None, eps: float = 1e-6):
    """Weighted mean binary cross-entropy of alpha (clipped to [eps, 1 - eps]) against a mask in [0, 1]."""
    a, m = jnp.clip(_f32(alpha), eps, 1.0 - eps), _f32(mask)
    bce = -(m * jnp.log(a) + (1.0 - m) * jnp.log1p(-a))  # [..., H, W]
    return weighted_mean(bce, None if weights is None else _f32(weights))


def uv_tv_loss(uv_maps, valid, squared: bool = False):
    """Total variation of UV attribute maps over neighbouring valid texels.

    uv_maps `[B, R, R, A]`, valid `[R, R]` bool (e.g. `atlas.mask`). A horizontal or vertical pair of
    neighbours counts only when both texels are valid; the loss is the sum over counted pairs of
    |difference| (squared difference with `squared=True`), divided by B * A * (number of counted pairs).
    """
    uv, valid = _f32(uv_maps), jnp.asarray(valid, bool)
    total, pairs = jnp.float32(0.0), jnp.float32(0.0)
    for axis in (1, 2):  # rows (vertical pairs), columns (horizontal pairs)
        n = uv.shape[axis]
        diff = jax.lax.slice_in_dim(uv, 1, n, axis=axis) - jax.lax.slice_in_dim(uv, 0, n - 1, axis=axis)
        both = jax.lax.slice_in_dim(valid, 1, n, axis=axis - 1) & jax.lax.slice_in_dim(valid, 0, n - 1, axis=axis - 1)
        penalty = diff ** 2 if squared else jnp.abs(diff)  # [B, R-1, R, A] or [B, R, R-1, A]
        total += jnp.sum(penalty * both[None, :, :, None])
        pairs += jnp.sum(both)
    return total / jnp.maximum(pairs * uv.shape[0] * uv.shape[-1], 1.0)


def offset_loss(offsets):
    """Mean over batch and Gaussians of the squared norm of the offsets from the template. [B, G, 3] -> []"""
    return jnp.mean(jnp.sum(_f32(offsets) ** 2, axis=-1))


def region_weight_map(regions, region_weights, base: float = 1.0):
    """Per-pixel loss weights base + sum_k w_k r_k from region maps (no gradient flows through them).

    regions `[..., H, W, k]` indicator or soft maps in [0, 1] (e.g. rendered eye/mouth masks),
    region_weights `[k]` non-negative -> `[..., H, W]`. Multiply by a mask to also restrict the loss.
    """
    regions = jax.lax.stop_gradient(_f32(regions))
    return base + jnp.sum(regions * _f32(region_weights), axis=-1)


def lpips_loss(lpips, pred, target):
    """Mean LPIPS distance over the batch (`lpips`: a loaded `headsup_jax.model.lpips.LPIPS`). -> []"""
    return jnp.mean(lpips(pred, target))
