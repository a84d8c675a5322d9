"""BackgroundModel: a 32-d code of the views decoded to Gaussians on a sphere around the rig.

Lets the losses use raw studio frames: what is not head is explained by the sphere."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from headsup_jax.model.layers import Buffer, conv, dense
from headsup_jax.render import Gaussians
from headsup_jax.render.projection import facing_quats
from headsup_jax.render.sh import rgb_to_sh


def fibonacci_sphere(n: int) -> np.ndarray:
    """n nearly uniform unit vectors. [n, 3]"""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.cos(phi), np.sin(theta) * np.sin(phi)], -1).astype(np.float32)


class BackgroundModel(nnx.Module):
    def __init__(self, num_gaussians: int, radius: float, code_dim: int = 32, width: int = 64, *,
                 rngs: nnx.Rngs, dtype=jnp.float32):
        self.convs = nnx.List([conv(3, width, rngs, stride=2, dtype=dtype),
                               conv(width, width, rngs, stride=2, dtype=dtype),
                               conv(width, width, rngs, stride=2, dtype=dtype)])
        self.to_code = dense(width, code_dim, ("conv_out", None), rngs, dtype)
        self.hidden = dense(code_dim, width, (None, "mlp"), rngs, dtype)
        self.out = dense(width, num_gaussians * 4, ("mlp", None), rngs, dtype, zero_init=True)
        directions = fibonacci_sphere(num_gaussians)
        disc = radius * np.sqrt(4 * np.pi / num_gaussians)  # disc radius that tiles the sphere
        self.means = Buffer(jnp.asarray(radius * directions))
        self.quats = Buffer(jnp.asarray(facing_quats(-directions)))
        self.scales = Buffer(jnp.tile(jnp.array([[disc, disc, 1e-3 * disc]], jnp.float32), (num_gaussians, 1)))

    def code(self, images):  # [B, N, H, W, 3] -> [B, code_dim]
        B, N, H, W, _ = images.shape
        x = jax.image.resize(images.reshape(B * N, H, W, 3), (B * N, 32, 32, 3), "linear") * 2.0 - 1.0
        for c in self.convs:
            x = nnx.silu(c(x))
        return self.to_code(x.reshape(B, N * x.shape[1] * x.shape[2], -1).mean(1)).astype(jnp.float32)

    def __call__(self, images) -> Gaussians:  # -> Gaussians with leading batch axis [B, G_bg]
        raw = self.out(nnx.gelu(self.hidden(self.code(images)))).astype(jnp.float32)
        raw = raw.reshape(raw.shape[0], -1, 4)  # [B, G_bg, 4]: colour (3), opacity logit
        colour = jax.nn.sigmoid(raw[..., :3])  # mid grey at init
        batch = lambda x: jnp.broadcast_to(x[...], (raw.shape[0],) + x.shape)
        return Gaussians(means=batch(self.means), quats=batch(self.quats), scales=batch(self.scales),
                         opacities=jax.nn.sigmoid(raw[..., 3] + 4.0), sh=rgb_to_sh(colour)[..., None, :])
