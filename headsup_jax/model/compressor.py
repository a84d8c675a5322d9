"""LatentCompressor: learnable UV-grid queries cross-attend to the tokens of all views (Perceiver style).

The latent has Lh x Lw x dim entries whatever the number of views or the image size. Queries start from
the template's positional prior (its UV position and normal maps, pooled to the latent grid). With
`ray_bias`, cross-attention also knows where each query sits: its logits get -g_h |p - ray|^2, the squared
distance from the query's template point p to each token's camera ray, with a learnable gain g_h per head
(initially 1 / (2 sigma_h^2), sigma_h spread geometrically over the given range). Each query then starts
out looking at the pixels where its part of the head appears, in every view, instead of having to
discover that correspondence from data.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from headsup_jax.model.layers import Attention, Buffer, Mlp, axes, dense
from headsup_jax.model.rays import ray_distance2

POSITION_SCALE = 0.15  # metres, about a head's radius: the prior's unit of position


def layer_norm(dim: int, rngs: nnx.Rngs, dtype) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, dtype=dtype, scale_metadata=axes("embed"), bias_metadata=axes("embed"), rngs=rngs)


def pool_cells(uv_map: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """Mean over the valid texels of each cell of a size x size grid. [R, R, C], [R, R] -> [size, size, C]"""
    R, C = uv_map.shape[0], uv_map.shape[-1]
    if R % size:
        raise ValueError(f"atlas resolution {R} is not a multiple of the latent grid {size}")
    f = R // size
    m = mask.astype(np.float64).reshape(size, f, size, f)
    total = (uv_map.reshape(size, f, size, f, C) * m[..., None]).sum((1, 3))
    return total / np.maximum(m.sum((1, 3)), 1)[..., None]


def pooled_prior(position_map: np.ndarray, normal_map: np.ndarray, mask: np.ndarray, size: int,
                 frequencies: int = 4) -> np.ndarray:
    """Template prior on a size x size grid: mean position and normal of the valid texels of each cell,
    their coverage, and Fourier features of the position. [R, R, 3] x2, [R, R] -> [size, size, F]"""
    pos, nrm = pool_cells(position_map, mask, size) / POSITION_SCALE, pool_cells(normal_map, mask, size)
    f = mask.shape[0] // size
    cover = mask.astype(np.float64).reshape(size, f, size, f).mean((1, 3))
    bands = [fn(2.0 ** k * np.pi * pos) for k in range(frequencies) for fn in (np.sin, np.cos)]
    return np.concatenate([pos, nrm, cover[..., None]] + bands, -1).astype(np.float32)


class CompressorBlock(nnx.Module):
    """Pre-norm: cross-attention to the view tokens, optional self-attention among queries, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, self_attention: bool, ray_bias=(), *,
                 rngs: nnx.Rngs, dtype):
        self.norm_q, self.norm_kv = layer_norm(dim, rngs, dtype), layer_norm(dim, rngs, dtype)
        self.cross = Attention(dim, heads, rngs, dtype)
        sigmas = np.geomspace(ray_bias[0], ray_bias[1], heads) if ray_bias else None
        self.ray_gain = (nnx.Param(jnp.asarray(np.log(0.5 / sigmas ** 2), jnp.float32), **axes("heads"))
                         if ray_bias else None)  # log of the per-head gain on -|p - ray|^2 (m^-2)
        self.norm_s = layer_norm(dim, rngs, dtype) if self_attention else None
        self.self_attn = Attention(dim, heads, rngs, dtype) if self_attention else None
        self.norm_m = layer_norm(dim, rngs, dtype)
        self.mlp = Mlp(dim, mlp_ratio * dim, rngs, dtype)

    def __call__(self, x, tokens, distance2=None):  # [B, L, D], [B, T, D], [B, L, T] m^2 -> [B, L, D]
        bias = None
        if self.ray_gain is not None:
            bias = -jnp.exp(self.ray_gain[...])[None, :, None, None] * distance2[:, None]  # [B, H, L, T]
            bias = bias.astype(x.dtype)
        x = x + self.cross(self.norm_q(x), self.norm_kv(tokens), bias)
        if self.self_attn is not None:
            h = self.norm_s(x)
            x = x + self.self_attn(h, h)
        return x + self.mlp(self.norm_m(x))


class LatentCompressor(nnx.Module):
    def __init__(self, prior: np.ndarray, dim: int, depth: int, heads: int, mlp_ratio: int = 4,
                 self_attention: bool = True, remat: bool = False, scan_layers: bool = False, points=None,
                 ray_bias=(), *, rngs: nnx.Rngs, dtype=jnp.float32):
        """prior [Lh, Lw, F]; points [Lh, Lw, 3] (metres) each query's template point, needed by ray_bias
        (sigma_min, sigma_max) in metres; () turns the ray bias off."""
        self.grid = prior.shape[:2]
        if ray_bias and points is None:
            raise ValueError("ray_bias needs the queries' template points")
        self.points = Buffer(jnp.asarray(points, jnp.float32).reshape(-1, 3)) if ray_bias else None  # [L, 3]
        self.prior = Buffer(jnp.asarray(prior.reshape(-1, prior.shape[-1])))  # [L, F]
        self.queries = nnx.Param(0.02 * jax.random.normal(rngs.params(), (self.prior.shape[0], dim)),
                                 **axes("latent", "embed"))
        self.prior_in = dense(prior.shape[-1], dim, (None, "embed"), rngs, dtype)
        self.prior_out = dense(dim, dim, ("mlp", "embed"), rngs, dtype)
        make = lambda r: CompressorBlock(dim, heads, mlp_ratio, self_attention, tuple(ray_bias), rngs=r, dtype=dtype)
        self.scan_layers, self.remat = scan_layers, remat
        if scan_layers:  # one stacked block: compiles once whatever the depth
            self.blocks = nnx.split_rngs(splits=depth)(nnx.vmap(make, in_axes=0, out_axes=0))(rngs)
        else:
            self.blocks = nnx.List([make(rngs) for _ in range(depth)])
        self.norm = layer_norm(dim, rngs, dtype)

    def __call__(self, tokens, token_rays=None, query_features=None):
        """tokens [B, T, D], token_rays [B, T, 6] Plücker, query_features [B, L, D] (optional, added to the
        queries: model.pixel_aligned) -> [B, Lh, Lw, D]"""
        q = self.queries[...] + self.prior_out(nnx.gelu(self.prior_in(self.prior[...])))  # [L, D]
        x = jnp.broadcast_to(q.astype(tokens.dtype), (tokens.shape[0],) + q.shape)
        if query_features is not None:
            x = x + query_features.astype(x.dtype)
        distance2 = None if self.points is None else ray_distance2(self.points[...], token_rays)  # [B, L, T]
        step = lambda block, x: block(x, tokens, distance2)
        if self.remat:
            step = nnx.remat(step)
        if self.scan_layers:
            x = nnx.scan(lambda x, block: (step(block, x), None), in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))(
                x, self.blocks)[0]
        else:
            for block in self.blocks:
                x = step(block, x)
        return self.norm(x).reshape(x.shape[0], *self.grid, -1)
