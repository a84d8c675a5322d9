"""Image quality metrics: PSNR, SSIM and LPIPS, one value per image.

Images are `[..., H, W, 3]` floats in [0, 1]; masks are `[..., H, W]` non-negative weights (0/1 for a
silhouette). Metrics reduce H, W (and channels) and keep the leading batch axes: `[...]`.

`ssim_map` is the project's one SSIM implementation (the D-SSIM loss in `losses` uses it). It follows
the 3DGS code: an 11 x 11 Gaussian window (sigma 1.5, normalised to sum 1) applied with zero padding
("same" size output), C1 = 0.01^2, C2 = 0.03^2, dynamic range 1, the map averaged over channels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


def weighted_mean(x, weights=None, axis=None):
    """sum(w * x) / sum(w) over `axis` (plain mean without weights); 0 where all weights are 0.

    `weights` (non-negative) broadcasts against `x`; the denominator counts every broadcast element, so
    per-pixel weights `[..., H, W, 1]` on `[..., H, W, 3]` give the mean over the weighted pixels' channels.
    """
    if weights is None:
        return jnp.mean(x, axis=axis)
    weights = jnp.broadcast_to(jnp.asarray(weights, x.dtype), x.shape)
    total = jnp.sum(weights, axis=axis)
    return jnp.sum(weights * x, axis=axis) / jnp.maximum(total, jnp.finfo(x.dtype).tiny)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The separable 1D SSIM window, normalised to sum 1. [size]"""
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-x ** 2 / (2.0 * sigma ** 2))
    return (g / g.sum()).astype(np.float32)


def _blur(x):
    """Separable Gaussian window with zero padding, per channel. [N, H, W, C] -> [N, H, W, C]"""
    channels, r = x.shape[-1], SSIM_WINDOW // 2
    column = jnp.tile(jnp.asarray(gaussian_window())[:, None, None, None], (1, 1, 1, channels))  # [11, 1, 1, C]
    for kernel, pad in ((column, ((r, r), (0, 0))), (column.reshape(1, SSIM_WINDOW, 1, channels), ((0, 0), (r, r)))):
        # HIGHEST: the variances below are differences of blurred squares; bf16 passes (TPU default) ruin them.
        x = jax.lax.conv_general_dilated(x, kernel, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=channels, precision=jax.lax.Precision.HIGHEST)
    return x


def ssim_map(pred, target):
    """Per-pixel SSIM averaged over channels (float32). [..., H, W, C] x2 -> [..., H, W]"""
    pred, target = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
    batch, (H, W, C) = pred.shape[:-3], pred.shape[-3:]
    x, y = pred.reshape(-1, H, W, C), target.reshape(-1, H, W, C)  # [N, H, W, C]
    moments = _blur(jnp.concatenate([x, y, x * x, y * y, x * y], -1))  # [N, H, W, 5C]
    mu_x, mu_y, xx, yy, xy = jnp.split(moments, 5, axis=-1)
    var_x, var_y, cov = xx - mu_x ** 2, yy - mu_y ** 2, xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return jnp.mean(num / den, axis=-1).reshape(*batch, H, W)


def ssim(pred, target, mask=None):
    """Mean SSIM of each image over the (mask-weighted) pixels. [..., H, W, 3] x2, [..., H, W] -> [...]"""
    return weighted_mean(ssim_map(pred, target), mask, axis=(-2, -1))


def psnr(pred, target, mask=None, max_val: float = 1.0):
    """10 log10(max_val^2 / MSE), MSE over each image's (mask-weighted) pixels and channels. -> [...]"""
    err = (jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32)) ** 2  # [..., H, W, 3]
    mse = weighted_mean(err, None if mask is None else jnp.asarray(mask)[..., None], axis=(-3, -2, -1))
    return 10.0 * jnp.log10(max_val ** 2 / mse)


def image_metrics(pred, target, mask=None, lpips=None) -> dict:
    """{"psnr", "ssim"} (and "lpips" when an `LPIPS` module is given), each `[...]`.

    The mask weights PSNR and SSIM; LPIPS sees the whole images (composite both on the same background
    to compare only the head).
    """
    out = {"psnr": psnr(pred, target, mask), "ssim": ssim(pred, target, mask)}
    if lpips is not None:
        out["lpips"] = lpips(pred, target)
    return out
