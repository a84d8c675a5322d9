"""ViewEncoder: a ResNet per view (shared weights) conditioned on Plücker rays -> tokens of all views."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from headsup_jax.model.layers import ResBlock, conv, dense
from headsup_jax.model.rays import plucker_rays


class ViewEncoder(nnx.Module):
    """Images and cameras of N views -> tokens [B, N*h*w, dim], h = H / 2**len(widths).

    The ray map is an input channel group (so early features know the viewing geometry) and is added
    again, at token resolution and exact for that resolution, as an embedding of each token.
    """

    def __init__(self, dim: int, widths=(64, 128, 256, 512), blocks: int = 2, *, rngs: nnx.Rngs,
                 dtype=jnp.float32):
        self.stem = conv(3 + 6, widths[0], rngs, stride=2, dtype=dtype)
        layers, cin = [], widths[0]
        for i, width in enumerate(widths):
            for b in range(blocks):
                layers.append(ResBlock(cin, width, rngs, stride=2 if (b == 0 and i > 0) else 1, dtype=dtype))
                cin = width
        self.stages = nnx.List(layers)
        self.proj = dense(cin, dim, ("conv_out", "embed"), rngs, dtype)
        self.ray_embed = dense(6, dim, (None, "embed"), rngs, dtype)
        self.norm = nnx.LayerNorm(dim, dtype=dtype, scale_metadata={"logical_axes": ("embed",)},
                                  bias_metadata={"logical_axes": ("embed",)}, rngs=rngs)
        self.downsample = 2 ** len(widths)

    def __call__(self, images, K, world_to_cam):
        """images [B, N, H, W, 3] in [0, 1], K [B, N, 3, 3], world_to_cam [B, N, 4, 4]
        -> tokens [B, N*h*w, dim] and their rays [B, N*h*w, 6] (Plücker, through each token's centre)"""
        B, N, H, W, _ = images.shape
        if H % self.downsample or W % self.downsample:
            raise ValueError(f"image size {H}x{W} must be a multiple of {self.downsample}")
        h, w = H // self.downsample, W // self.downsample
        rays = plucker_rays(K, world_to_cam, H, W)  # [B, N, H, W, 6]
        x = jnp.concatenate([images * 2.0 - 1.0, rays], -1).reshape(B * N, H, W, 9)
        x = self.stem(x.astype(self.proj.dtype or jnp.float32))
        for layer in self.stages:
            x = layer(x)
        scale = jnp.diag(jnp.array([w / W, h / H, 1.0]))
        token_rays = plucker_rays(scale @ K, world_to_cam, h, w).reshape(B * N, h, w, 6)
        tokens = self.norm(self.proj(x) + self.ray_embed(token_rays))  # [B*N, h, w, dim]
        return tokens.reshape(B, N * h * w, -1), token_rays.reshape(B, N * h * w, 6)
