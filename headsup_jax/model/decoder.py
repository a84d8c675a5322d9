"""UVDecoder: a convolutional ResNet upsampler from the latent grid to the atlas' UV map of attributes."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from headsup_jax.model.layers import ResBlock, conv, dense, group_norm

# Raw attribute channels of the UV map, in order (activations live in geometry.anchor).
ATTRIBUTES = (("offset", 3), ("rotation", 4), ("log_scale", 3), ("opacity", 1), ("sh", 12))
NUM_ATTRIBUTES = sum(n for _, n in ATTRIBUTES)


def split_attributes(uv_values):
    """[..., A] -> dict name -> [..., n] in the order of ATTRIBUTES."""
    out, start = {}, 0
    for name, n in ATTRIBUTES:
        out[name] = uv_values[..., start:start + n]
        start += n
    return out


class UVDecoder(nnx.Module):
    """Z [B, L, L, dim] -> UV map [B, R, R, A]; one level of `widths` per resolution, L up to R.

    With `texel_head`, a linear map from each latent cell to the attributes of its (R / L)^2 texels is
    added to the convolutional output: a short path by which a cell's code (e.g. the colours its
    pixel-aligned queries read) reaches every texel it covers at full resolution, which the upsampling
    stack only learns slowly. Both heads are zero-initialised: an untrained decoder predicts zeros, i.e.
    the template surface covered by mid-grey Gaussians."""

    def __init__(self, dim: int, latent_size: int, resolution: int, widths, blocks: int = 1,
                 texel_head: bool = False, *, rngs: nnx.Rngs, dtype=jnp.float32):
        levels = math.log2(resolution / latent_size)
        if levels != int(levels) or levels < 0:
            raise ValueError(f"atlas resolution {resolution} must be latent size {latent_size} times a power of 2")
        if len(widths) != int(levels) + 1:
            raise ValueError(f"decoder needs {int(levels) + 1} widths (one per resolution), got {tuple(widths)}")
        self.conv_in = conv(dim, widths[0], rngs, dtype=dtype)
        levels_, cin = [], widths[0]
        for i, width in enumerate(widths):
            level = [ResBlock(cin, width, rngs, dtype=dtype)] + [ResBlock(width, width, rngs, dtype=dtype)
                                                                  for _ in range(blocks - 1)]
            up = conv(width, widths[i + 1], rngs, dtype=dtype) if i + 1 < len(widths) else None
            levels_.append(nnx.List(level + ([up] if up else [])))
            cin = widths[i + 1] if up else width
        self.levels = nnx.List(levels_)
        self.norm = group_norm(cin, rngs, dtype)
        self.head = conv(cin, NUM_ATTRIBUTES, rngs, kernel=1, dtype=dtype, zero_init=True)
        self.patch = resolution // latent_size
        self.texel_head = (dense(dim, self.patch ** 2 * NUM_ATTRIBUTES, ("embed", "mlp"), rngs, dtype, zero_init=True)
                           if texel_head else None)

    def __call__(self, z):  # [B, L, L, dim] -> [B, R, R, A]
        x = self.conv_in(z)
        for i, level in enumerate(self.levels):
            blocks = level if i + 1 == len(self.levels) else level[:-1]
            for block in blocks:
                x = block(x)
            if i + 1 < len(self.levels):
                B, H, W, C = x.shape
                x = level[-1](jax.image.resize(x, (B, 2 * H, 2 * W, C), "nearest"))
        out = self.head(nnx.silu(self.norm(x)))
        if self.texel_head is not None:
            B, L, _, _ = z.shape
            p = self.patch
            cells = self.texel_head(z).reshape(B, L, L, p, p, NUM_ATTRIBUTES)
            out = out + cells.transpose(0, 1, 3, 2, 4, 5).reshape(out.shape)  # [B, R, R, A]
        return out.astype(jnp.float32)
