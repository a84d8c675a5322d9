"""ExpressionModel: the paper's latent expression transformer F(Z_neutral, b) -> Z_expression.

    expression = ExpressionModel(latent_dim=64, num_coefficients=53, width=64, depth=2, heads=4, rngs=rngs)
    z_expression = expression(z_neutral, coefficients)   # [B, Lh, Lw, D], [B, E] -> [B, Lh, Lw, D]
    gaussians, _ = base.head_gaussians(base.decoder(z_expression))   # the frozen base decoder

Conditioning: cross-attention to coefficient tokens. Blendshape e has a learned embedding; its token is
that embedding scaled by the weight b_e, so an absent blendshape contributes a zero token and a weight's
magnitude sets its token's size. Each cell of the latent grid is a query; a block is the compressor's
(`CompressorBlock`: cross-attention to the E coefficient tokens, self-attention among the cells, MLP).
The model predicts a residual added to Z_neutral through a zero-initialised output projection, so at
initialisation every coefficient vector (zero included) returns Z_neutral exactly; training on neutral
frames with zero coefficients keeps that identity learned.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from headsup_jax.model.compressor import CompressorBlock, layer_norm
from headsup_jax.model.layers import axes, dense


class ExpressionModel(nnx.Module):
    def __init__(self, latent_dim: int, num_coefficients: int, width: int, depth: int, heads: int,
                 mlp_ratio: int = 4, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.num_coefficients = num_coefficients
        self.embeddings = nnx.Param(jax.random.normal(rngs.params(), (num_coefficients, width)),
                                    **axes(None, "embed"))  # one token direction per blendshape
        self.latent_in = dense(latent_dim, width, ("embed", "mlp"), rngs, dtype)
        self.blocks = nnx.List([CompressorBlock(width, heads, mlp_ratio, True, rngs=rngs, dtype=dtype)
                                for _ in range(depth)])
        self.norm = layer_norm(width, rngs, dtype)
        self.latent_out = dense(width, latent_dim, ("mlp", "embed"), rngs, dtype, zero_init=True)

    def __call__(self, z_neutral, coefficients):  # [B, Lh, Lw, D], [B, E] -> [B, Lh, Lw, D]
        coefficients = jnp.asarray(coefficients)
        B = z_neutral.shape[0]
        if coefficients.shape != (B, self.num_coefficients):
            raise ValueError(f"expression coefficients: shape {list(coefficients.shape)}, expected "
                             f"[{B}, {self.num_coefficients}] (batch, the template's expression blendshapes)")
        tokens = coefficients[..., None].astype(self.embeddings.dtype) * self.embeddings[...]  # [B, E, W]
        cells = z_neutral.reshape(B, -1, z_neutral.shape[-1])  # [B, L, D]
        x = self.latent_in(cells)
        for block in self.blocks:
            x = block(x, tokens.astype(x.dtype))
        delta = self.latent_out(self.norm(x)).astype(z_neutral.dtype)  # [B, L, D]
        return z_neutral + delta.reshape(z_neutral.shape)
