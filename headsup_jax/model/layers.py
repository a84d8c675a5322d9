"""Building blocks shared by the encoder, decoder and compressor, with logical axis names on weights.

Every kernel carries `logical_axes` metadata (e.g. ("embed", "mlp")); `train/sharding.py` maps them to
mesh axes with the rules of the config.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class Buffer(nnx.Variable):
    """A constant array held by a module (saved with it, never trained)."""


def axes(*names):
    return {"logical_axes": names}


def dense(din: int, dout: int, names, rngs: nnx.Rngs, dtype=jnp.float32, zero_init=False) -> nnx.Linear:
    init = nnx.initializers.zeros_init() if zero_init else nnx.initializers.lecun_normal()
    return nnx.Linear(din, dout, kernel_init=init, kernel_metadata=axes(*names), bias_metadata=axes(names[-1]),
                      dtype=dtype, rngs=rngs)


def conv(cin: int, cout: int, rngs: nnx.Rngs, kernel: int = 3, stride: int = 1, dtype=jnp.float32,
         zero_init=False) -> nnx.Conv:
    init = nnx.initializers.zeros_init() if zero_init else nnx.initializers.lecun_normal()
    return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding="SAME", kernel_init=init,
                    kernel_metadata=axes(None, None, "conv_in", "conv_out"), bias_metadata=axes("conv_out"),
                    dtype=dtype, rngs=rngs)


def group_norm(channels: int, rngs: nnx.Rngs, dtype=jnp.float32) -> nnx.GroupNorm:
    return nnx.GroupNorm(channels, num_groups=min(32, channels // 4) or 1, dtype=dtype,
                         scale_metadata=axes("conv_out"), bias_metadata=axes("conv_out"), rngs=rngs)


class ResBlock(nnx.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, conv3x3) x 2, strided or not; 1x1 skip if needed."""

    def __init__(self, cin: int, cout: int, rngs: nnx.Rngs, stride: int = 1, dtype=jnp.float32):
        self.norm1 = group_norm(cin, rngs, dtype)
        self.conv1 = conv(cin, cout, rngs, stride=stride, dtype=dtype)
        self.norm2 = group_norm(cout, rngs, dtype)
        self.conv2 = conv(cout, cout, rngs, dtype=dtype)
        self.skip = conv(cin, cout, rngs, kernel=1, stride=stride, dtype=dtype) if (cin != cout or stride != 1) else None

    def __call__(self, x):  # [B, H, W, Cin] -> [B, H/stride, W/stride, Cout]
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = self.conv2(nnx.silu(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class Mlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, rngs: nnx.Rngs, dtype=jnp.float32):
        self.up = dense(dim, hidden, ("embed", "mlp"), rngs, dtype)
        self.down = dense(hidden, dim, ("mlp", "embed"), rngs, dtype)

    def __call__(self, x):
        return self.down(nnx.gelu(self.up(x)))


class Attention(nnx.Module):
    """Multi-head attention from queries to a (possibly other) token set; heads shard over "heads"."""

    def __init__(self, dim: int, num_heads: int, rngs: nnx.Rngs, dtype=jnp.float32):
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        make = lambda: nnx.LinearGeneral(dim, (num_heads, self.head_dim), kernel_metadata=axes("embed", "heads", "kv"),
                                         bias_metadata=axes("heads", "kv"), dtype=dtype, rngs=rngs)
        self.q, self.k, self.v = make(), make(), make()
        self.out = nnx.LinearGeneral((num_heads, self.head_dim), dim, axis=(-2, -1),
                                     kernel_metadata=axes("heads", "kv", "embed"), bias_metadata=axes("embed"),
                                     dtype=dtype, rngs=rngs)

    def __call__(self, x, context, bias=None):  # [B, Q, D], [B, T, D], [B, H, Q, T] logits -> [B, Q, D]
        out = jax.nn.dot_product_attention(self.q(x), self.k(context), self.v(context), bias=bias)  # [B, Q, H, Dh]
        return self.out(out)
