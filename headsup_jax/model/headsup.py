"""The HeadsUp model: views -> tokens -> latent Z -> UV attribute map -> Gaussians anchored on the template."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from headsup_jax.geometry import UVAtlas, anchor
from headsup_jax.model.background import BackgroundModel
from headsup_jax.model.compressor import LatentCompressor, pool_cells, pooled_prior
from headsup_jax.model.decoder import UVDecoder, split_attributes
from headsup_jax.model.encoder import ViewEncoder
from headsup_jax.model.layers import Buffer
from headsup_jax.model.pixel_aligned import PixelAlignedQueries
from headsup_jax.render import Gaussians

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def concat_gaussians(a: Gaussians, b: Gaussians) -> Gaussians:
    """Joins two batched sets [B, Ga], [B, Gb] -> [B, Ga + Gb], padding the lower SH degree with zeros."""
    k = max(a.sh.shape[-2], b.sh.shape[-2])
    pad = lambda g: dataclasses.replace(g, sh=jnp.pad(g.sh, [(0, 0), (0, 0), (0, k - g.sh.shape[-2]), (0, 0)]))
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=1), pad(a), pad(b))


def uv_to_gaussians(uv_map, template_vertices, atlas: UVAtlas, offset_scale: float) -> tuple[Gaussians, dict]:
    """The decoder's raw UV map [B, R, R, A] -> head Gaussians [B, G] on the template (offsets scaled to
    metres, all activations in geometry.anchor) and the raw per-Gaussian predictions name -> [B, G, n]."""
    raw = split_attributes(atlas.gather(uv_map))  # name -> [B, G, n]
    raw["offset"] = raw["offset"] * offset_scale  # metres
    place = lambda r: anchor(template_vertices, atlas, offsets=r["offset"], rotations=r["rotation"],
                             log_scales=r["log_scale"], opacity_logits=r["opacity"][..., 0],
                             sh=r["sh"].reshape(r["sh"].shape[:-1] + (4, 3)))
    return jax.vmap(place)(raw), raw


class HeadsUp(nnx.Module):
    """Feed-forward reconstruction: N calibrated views -> G head Gaussians (+ background Gaussians).

    G is fixed by the atlas; nothing after the compressor depends on N or on the image size.
    """

    def __init__(self, config, template_vertices, atlas: UVAtlas, *, rngs: nnx.Rngs):
        dtype = DTYPES[config.compute_dtype]
        m = config.model
        self.atlas = atlas
        self.offset_scale = m.offset_scale
        self.template_vertices = Buffer(jnp.asarray(template_vertices, jnp.float32))  # [V, 3]
        self.encoder = ViewEncoder(m.dim, m.encoder_widths, m.encoder_blocks, rngs=rngs, dtype=dtype)
        prior = pooled_prior(atlas.position_map, atlas.normal_map, atlas.mask, m.latent_size)
        points = pool_cells(atlas.position_map, atlas.mask, m.latent_size)  # [Lh, Lw, 3] template points
        self.compressor = LatentCompressor(prior, m.dim, m.depth, m.heads, m.mlp_ratio, m.self_attention,
                                           remat=m.remat, scan_layers=m.scan_layers, points=points,
                                           ray_bias=m.ray_sigmas if m.ray_bias else (), rngs=rngs, dtype=dtype)
        pa = m.get("pixel_aligned", {})
        self.pixel_aligned = (PixelAlignedQueries(atlas.position_map, atlas.normal_map, atlas.mask, m.latent_size,
                                                  pa["samples"], m.dim, m.dim, rngs=rngs, dtype=dtype)
                              if pa.get("enabled") else None)
        self.decoder = UVDecoder(m.dim, m.latent_size, atlas.resolution, m.decoder_widths, m.decoder_blocks,
                                 m.get("texel_head", False), rngs=rngs, dtype=dtype)
        bg = config.background
        self.background = (BackgroundModel(bg.num_gaussians, bg.radius, bg.code_dim, bg.width, rngs=rngs, dtype=dtype)
                           if bg.enabled else None)

    @property
    def num_gaussians(self) -> int:
        return self.atlas.count

    def latent(self, images, K, world_to_cam):
        """[B, N, H, W, 3], [B, N, 3, 3], [B, N, 4, 4] -> Z [B, Lh, Lw, dim]"""
        tokens, rays = self.encoder(images, K, world_to_cam)  # [B, N*h*w, D], [B, N*h*w, 6]
        extra = None
        if self.pixel_aligned is not None:
            B, N, H, W, _ = images.shape
            d = self.encoder.downsample
            features = tokens.reshape(B, N, H // d, W // d, -1)
            extra = self.pixel_aligned(images, features, K, world_to_cam)
        return self.compressor(tokens, rays, extra)

    def head_gaussians(self, uv_map) -> tuple[Gaussians, dict]:
        """UV map [B, R, R, A] -> head Gaussians [B, G] and the raw per-Gaussian predictions."""
        return uv_to_gaussians(uv_map, self.template_vertices[...], self.atlas, self.offset_scale)

    def __call__(self, images, K, world_to_cam) -> tuple[Gaussians, dict]:
        """Views -> Gaussians [B, G (+ G_bg)] and aux {"uv_map" [B, R, R, A], "offsets" [B, G, 3], "num_head"}."""
        uv_map = self.decoder(self.latent(images, K, world_to_cam))
        gaussians, raw = self.head_gaussians(uv_map)
        if self.background is not None:
            gaussians = concat_gaussians(gaussians, self.background(images))
        return gaussians, {"uv_map": uv_map, "offsets": raw["offset"]}
