"""BlendshapeRegressor: driving images -> expression coefficients (issue 13: animation from images).

    regressor = BlendshapeRegressor(template.expression_names, (64, 48), rngs=nnx.Rngs(0))
    coefficients = regressor(images, world_to_cam)   # [B, V, H, W, 3], [B, V, 4, 4] -> [B, E] in [0, 1]

One small CNN per view (shared weights): strided 3x3 convs with GroupNorm and SiLU, the last feature map
flattened (where on the face a feature lies matters: mouth or eyes), projected to `hidden`. With
`cameras`, each view's direction seen from the head (its unit camera centre) is embedded and added, so
the mean over the V views knows which view saw what. A two-layer head and a sigmoid give one weight in
[0, 1] per template expression blendshape, in the order of `names`. The output layer's kernel starts at
zero and its bias at the logit of `start` (e.g. the training set's mean coefficients; default 0.5), so
the untrained regressor is that constant predictor.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from headsup_jax.model.layers import conv, dense, group_norm
from headsup_jax.render.types import camera_centre


class BlendshapeRegressor(nnx.Module):
    def __init__(self, names, image_size, widths=(16, 32, 64, 64), hidden: int = 128, cameras: bool = True,
                 start=None, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.names = tuple(names)  # the template's expression names: the outputs, in order
        self.image_size = tuple(int(s) for s in image_size)  # (H, W)
        layers, norms, cin = [], [], 3
        h, w = self.image_size
        for width in widths:
            layers.append(conv(cin, width, rngs, stride=2, dtype=dtype))
            norms.append(group_norm(width, rngs, dtype))
            cin, h, w = width, math.ceil(h / 2), math.ceil(w / 2)
        self.convs, self.norms = nnx.List(layers), nnx.List(norms)
        self.proj = dense(h * w * cin, hidden, ("conv_out", "mlp"), rngs, dtype)
        self.camera_embed = dense(3, hidden, (None, "mlp"), rngs, dtype) if cameras else None
        self.view_mlp = dense(hidden, hidden, ("mlp", "mlp"), rngs, dtype)
        self.out = dense(hidden, len(self.names), ("mlp", None), rngs, dtype, zero_init=True)
        if start is not None:  # [E] in [0, 1]
            self.out.bias[...] = jax.scipy.special.logit(jnp.clip(jnp.asarray(start, dtype), 1e-3, 1 - 1e-3))

    def __call__(self, images, world_to_cam=None):  # [B, V, H, W, 3], [B, V, 4, 4] -> [B, E]
        if images.ndim != 5 or tuple(images.shape[2:]) != self.image_size + (3,):
            raise ValueError(f"images: shape {list(images.shape)}, expected [B, V, {self.image_size[0]}, "
                             f"{self.image_size[1]}, 3]")
        B, V = images.shape[:2]
        x = images.reshape((B * V,) + images.shape[2:])  # [B*V, H, W, 3]
        mean = jnp.mean(x, axis=(1, 2), keepdims=True)  # per view: skin tone, lighting and background level
        x = (x - mean) / (jnp.std(x - mean, axis=(1, 2, 3), keepdims=True) + 1e-3)
        for layer, norm in zip(self.convs, self.norms):
            x = nnx.silu(norm(layer(x)))
        x = self.proj(x.reshape(B, V, -1))  # [B, V, hidden]
        if self.camera_embed is not None:
            if world_to_cam is None or tuple(world_to_cam.shape) != (B, V, 4, 4):
                raise ValueError(f"world_to_cam: {None if world_to_cam is None else list(world_to_cam.shape)}, "
                                 f"expected [{B}, {V}, 4, 4] (this regressor uses the views' cameras)")
            centre = camera_centre(world_to_cam)  # [B, V, 3]
            x = x + self.camera_embed(centre / jnp.linalg.norm(centre, axis=-1, keepdims=True))
        x = jnp.mean(self.view_mlp(nnx.silu(x)), axis=1)  # [B, hidden] pooled over the views
        return nnx.sigmoid(self.out(nnx.silu(x)))
