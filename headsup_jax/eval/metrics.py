"""The protocol's metrics: PSNR, SSIM and LPIPS over the whole frame and over the head region.

Images are composited on the backdrop (renders and targets alike). The head region is the target's
mask (> 0.5) dilated by HEAD_DILATION pixels (a square window), so a render that is too large or too
small around the silhouette is counted there. Every metric is one value per image `[...]`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from headsup_jax.train.metrics import psnr, ssim

HEAD_DILATION = 3  # pixels


def head_region(mask, dilation: int = HEAD_DILATION):
    """{0, 1} head region: mask > 0.5 dilated by `dilation` pixels. [..., H, W] -> [..., H, W] float32"""
    m = (jnp.asarray(mask) > 0.5).astype(jnp.float32)
    if dilation <= 0:
        return m
    batch, (H, W) = m.shape[:-2], m.shape[-2:]
    k = 2 * dilation + 1
    grown = jax.lax.reduce_window(m.reshape(-1, H, W), 0.0, jax.lax.max, (1, k, k), (1, 1, 1), "SAME")
    return grown.reshape(*batch, H, W)


def fidelity_metrics(pred, target, mask, lpips=None, dilation: int = HEAD_DILATION) -> dict:
    """{"psnr", "ssim"(, "lpips")} over the whole frame and {"psnr_head", "ssim_head"(, "lpips_head")} over
    the head region. [..., H, W, 3] x2, [..., H, W] -> name -> [...]"""
    region = head_region(mask, dilation)
    out = {"psnr": psnr(pred, target), "ssim": ssim(pred, target),
           "psnr_head": psnr(pred, target, region), "ssim_head": ssim(pred, target, region)}
    if lpips is not None:
        out["lpips"] = lpips(pred, target)
        out["lpips_head"] = lpips(pred, target, mask=region)
    return out
