"""Per-subject fitting: the template-anchored Gaussians' attributes optimised directly on a subject's views.

This is the optimisation-based approach that feed-forward reconstruction replaces, and the reference
point every fidelity table shows: the same Gaussians (the atlas' G), the same parameterisation (the
decoder's raw UV map; offsets in units of model.offset_scale, activations in geometry.anchor), the same
renderer and image losses as training (L1, D-SSIM, mask, UV total variation, offset; no eye/mouth
weighting, no LPIPS). Adam on the UV map for a fixed number of steps, from zeros (the template, grey)
or from a feed-forward prediction (`init`).
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from headsup_jax.model.decoder import NUM_ATTRIBUTES
from headsup_jax.model.headsup import uv_to_gaussians
from headsup_jax.train import losses
from headsup_jax.train.objective import composite_on_background, render_views


@dataclasses.dataclass(frozen=True)
class FitSettings:
    steps: int = 600
    lr: float = 0.02  # Adam, on the raw UV map (SH, log-scales, logits, offsets in 1 cm units)


@dataclasses.dataclass
class FitResult:
    uv_map: np.ndarray  # [R, R, A] raw attributes
    losses: np.ndarray  # [steps] total loss before each update
    seconds: float  # wall time of the optimisation (compilation excluded)


class SubjectFitter:
    """Fits one subject at a time; compiled once per (number of views, image size)."""

    def __init__(self, template_vertices, atlas, config, settings: FitSettings = FitSettings()):
        self.vertices = jnp.asarray(template_vertices, jnp.float32)
        self.atlas, self.config, self.settings = atlas, config, settings
        self._compiled = {}

    def gaussians(self, uv_map):
        """Raw UV map [R, R, A] -> head Gaussians [G]."""
        g, _ = uv_to_gaussians(jnp.asarray(uv_map)[None], self.vertices, self.atlas, self.config.model.offset_scale)
        return jax.tree.map(lambda x: x[0], g)

    def _objective(self, uv, images, masks, K, world_to_cam):
        w, bg = self.config.loss, jnp.asarray(self.config.loss.background, jnp.float32)
        g, raw = uv_to_gaussians(uv[None], self.vertices, self.atlas, self.config.model.offset_scale)
        H, W = images.shape[1:3]
        out = render_views(g, K[None], world_to_cam[None], H, W, bg, self.config.render)  # [1, V, H, W, .]
        target = composite_on_background(images, masks, bg)[None]
        terms = {"l1": losses.l1_loss(out.rgb, target), "dssim": losses.dssim_loss(out.rgb, target),
                 "mask": losses.mask_l1_loss(out.alpha, masks[None]),
                 "tv": losses.uv_tv_loss(uv[None], self.atlas.mask), "offset": losses.offset_loss(raw["offset"])}
        return sum(getattr(w, k) * v for k, v in terms.items() if getattr(w, k))

    def _run(self, uv0, images, masks, K, world_to_cam):
        opt = optax.adam(self.settings.lr)

        def step(carry, _):
            uv, state = carry
            loss, grad = jax.value_and_grad(self._objective)(uv, images, masks, K, world_to_cam)
            updates, state = opt.update(grad, state)
            return (uv + updates, state), loss

        (uv, _), history = jax.lax.scan(step, (uv0, opt.init(uv0)), None, length=self.settings.steps)
        return uv, history

    def fit(self, images, masks, K, world_to_cam, init=None) -> FitResult:
        """images [V, H, W, 3] (raw frames), masks [V, H, W], K [V, 3, 3], world_to_cam [V, 4, 4];
        `init`: a raw UV map [R, R, A] to start from (default zeros: the template)."""
        R = self.atlas.resolution
        uv0 = jnp.zeros((R, R, NUM_ATTRIBUTES), jnp.float32) if init is None else jnp.asarray(init, jnp.float32)
        args = [jnp.asarray(a, jnp.float32) for a in (images, masks, K, world_to_cam)]
        key = tuple(a.shape for a in args)
        if key not in self._compiled:
            self._compiled[key] = jax.jit(self._run).lower(uv0, *args).compile()
        t0 = time.perf_counter()
        uv, history = self._compiled[key](uv0, *args)
        uv = np.asarray(uv)  # waits for the result
        return FitResult(uv, np.asarray(history), time.perf_counter() - t0)
