"""The training objective: render the supervision views of the predicted Gaussians and compare."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from headsup_jax.errors import ConfigError
from headsup_jax.geometry.features import FEATURES
from headsup_jax.model.layers import Buffer
from headsup_jax.render import Camera, rasterize
from headsup_jax.render.sh import rgb_to_sh
from headsup_jax.train import losses


class Supervision(nnx.Module):
    """The objective's frozen inputs: which Gaussians show the eyes and mouth, and the LPIPS network."""

    def __init__(self, feature_texels, lpips=None):
        self.feature_texels = Buffer(jnp.asarray(feature_texels, jnp.float32))  # [G, len(FEATURES)]
        self.lpips = lpips  # headsup_jax.model.lpips.LPIPS, or None


def render_views(gaussians, K, world_to_cam, height: int, width: int, background, render_config):
    """Renders batched Gaussians [B, G] in their views (K [B, M, 3, 3], world_to_cam [B, M, 4, 4]).

    -> RenderOutput with leaves [B, M, H, W(, 3)]."""
    options = dict(background=background, backend=render_config.backend,
                   tile_capacity=render_config.tile_capacity or None, max_pairs=render_config.max_pairs or None)

    def one(g, k, w2c):
        return rasterize(g, Camera(world_to_cam=w2c, K=k, width=width, height=height), **options)

    return jax.vmap(lambda g, ks, ws: jax.vmap(lambda k, w: one(g, k, w))(ks, ws))(gaussians, K, world_to_cam)


def composite_on_background(images, masks, background):
    """Masked supervision: images [..., H, W, 3] where masks [..., H, W] say head, background elsewhere."""
    masks = masks.astype(jnp.float32)[..., None]
    return images * masks + background * (1.0 - masks)


def mask_weights(batch: dict, shape) -> jax.Array:
    """batch["has_masks"] [B] (all True when absent) as 0/1 mask-loss weights broadcast to `shape` [B, ...]."""
    has = batch.get("has_masks")
    has = jnp.ones(shape[:1], jnp.float32) if has is None else jnp.asarray(has, jnp.float32)
    return jnp.broadcast_to(has.reshape(has.shape + (1,) * (len(shape) - 1)), shape)


def feature_maps(gaussians, feature_texels, K, world_to_cam, height: int, width: int, render_config):
    """Where the eyes and mouth land in each view: the Gaussians [B, G (+ background)] rendered with their
    feature membership [G, F] as colour (background Gaussians and the backdrop: 0), no gradient.

    -> [B, M, H, W, F] in [0, 1]"""
    B, G_all = gaussians.opacities.shape
    G, F = feature_texels.shape
    colour = jnp.zeros((G_all, 3), jnp.float32).at[:G, :F].set(feature_texels)
    sh = jnp.broadcast_to(rgb_to_sh(colour)[:, None, :], (B, G_all, 1, 3))
    painted = jax.lax.stop_gradient(dataclasses.replace(gaussians, sh=sh))
    out = render_views(painted, K, world_to_cam, height, width, jnp.zeros(3), render_config)
    return out.rgb[..., :F]


def objective(model, supervision: Supervision, batch: dict, config):
    """Weighted sum of the configured losses. -> (loss, (terms, renders, composited targets))"""
    cams, targets = batch["input_cameras"], batch["targets"]  # [B, M, H, W, 3]
    gaussians, aux = model(batch["inputs"], cams["K"], cams["world_to_cam"])
    H, W = targets.shape[2:4]
    tc = batch["target_cameras"]
    background = jnp.asarray(config.loss.background, jnp.float32)
    renders = render_views(gaussians, tc["K"], tc["world_to_cam"], H, W, background, config.render)
    mask = batch["target_masks"].astype(jnp.float32)  # [B, M, H, W]
    has_masks = mask_weights(batch, mask.shape)  # [B, M, H, W]: 0 for records without masks
    if config.background.enabled:  # raw frames: the background model explains what is not head
        target = targets
    else:  # masked supervision on a known background (`train.data.require_masks` refuses unmasked data)
        target = composite_on_background(targets, mask, background)
    w = config.loss
    region_weights = jnp.asarray([w.regions[name] for name in FEATURES], jnp.float32)
    pixel_weights = None  # [B, M, H, W]: 1 + the region weights where the eyes and mouth land
    if any(w.regions[name] for name in FEATURES):
        regions = feature_maps(gaussians, supervision.feature_texels[...], tc["K"], tc["world_to_cam"], H, W,
                               config.render)
        pixel_weights = losses.region_weight_map(regions, region_weights)
    terms = {
        "l1": losses.l1_loss(renders.rgb, target, pixel_weights),
        "dssim": losses.dssim_loss(renders.rgb, target, pixel_weights),
        "tv": losses.uv_tv_loss(aux["uv_map"], model.atlas.mask),
        "offset": losses.offset_loss(aux["offsets"]),
    }
    if not config.background.enabled:
        terms["mask"] = losses.mask_l1_loss(renders.alpha, mask, has_masks)
    elif w.mask:  # the sphere covers every pixel: the silhouette is the head Gaussians' alpha alone
        head = jax.tree.map(lambda x: x[:, :model.num_gaussians], gaussians)
        head_alpha = render_views(head, tc["K"], tc["world_to_cam"], H, W, jnp.zeros(3), config.render).alpha
        terms["mask"] = losses.mask_l1_loss(head_alpha, mask, has_masks)
    if w.lpips:
        if supervision.lpips is None:
            raise ConfigError("config.loss.lpips > 0 needs config.loss.lpips_weights (see `headsup lpips convert`)")
        terms["lpips"] = losses.lpips_loss(supervision.lpips, renders.rgb, target)
    total = sum(getattr(w, name) * value for name, value in terms.items() if getattr(w, name))
    return total, (terms, renders, target)
