"""The training objective: render the supervision views of the predicted Gaussians and compare."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from headsup_jax.render import Camera, rasterize
from headsup_jax.train import losses


def render_views(gaussians, K, world_to_cam, height: int, width: int, background, render_config):
    """Renders batched Gaussians [B, G] in their views (K [B, M, 3, 3], world_to_cam [B, M, 4, 4]).

    -> RenderOutput with leaves [B, M, H, W(, 3)]."""
    options = dict(background=background, backend=render_config.backend,
                   tile_capacity=render_config.tile_capacity or None, max_pairs=render_config.max_pairs or None)

    def one(g, k, w2c):
        return rasterize(g, Camera(world_to_cam=w2c, K=k, width=width, height=height), **options)

    return jax.vmap(lambda g, ks, ws: jax.vmap(lambda k, w: one(g, k, w))(ks, ws))(gaussians, K, world_to_cam)


def objective(model, batch: dict, config):
    """Weighted sum of the configured losses. -> (loss, (terms, renders, composited targets))"""
    cams, targets = batch["input_cameras"], batch["targets"]  # [B, M, H, W, 3]
    gaussians, aux = model(batch["inputs"], cams["K"], cams["world_to_cam"])
    H, W = targets.shape[2:4]
    tc = batch["target_cameras"]
    background = jnp.asarray(config.loss.background, jnp.float32)
    renders = render_views(gaussians, tc["K"], tc["world_to_cam"], H, W, background, config.render)
    mask = batch["target_masks"].astype(jnp.float32)  # [B, M, H, W]
    if config.background.enabled:  # raw frames: the background model explains what is not head
        target = targets
    else:  # masked supervision on a known background
        target = targets * mask[..., None] + background * (1.0 - mask[..., None])
    w = config.loss
    terms = {
        "l1": losses.l1_loss(renders.rgb, target),
        "dssim": losses.dssim_loss(renders.rgb, target),
        "tv": losses.uv_tv_loss(aux["uv_map"], model.atlas.mask),
        "offset": losses.offset_loss(aux["offsets"]),
    }
    if not config.background.enabled:  # the sphere would cover the whole silhouette
        terms["mask"] = losses.mask_l1_loss(renders.alpha, mask)
    total = sum(getattr(w, name) * value for name, value in terms.items() if getattr(w, name))
    return total, (terms, renders, target)
