"""`backend="auto"`: Pallas where it compiles on this device and agrees with XLA there, else XLA.

Lowering is tested on CPU for every target, but only running a kernel on the device shows that the backend
compiler accepts it and computes what the XLA path does. So the first `auto` render on a TPU or CUDA GPU
runs `check_pallas` once per (platform, device kind) and falls back to XLA, with a warning naming the
reason, when it fails.
"""
from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from headsup_jax.render.pallas_composite import gpu_lowering

log = logging.getLogger(__name__)

IMAGE_TOL = 1e-4  # max |pallas - xla| of rgb, alpha, depth
GRAD_TOL = 1e-3  # max |pallas - xla| of each gradient, relative to its largest magnitude (at least 1)


def pallas_candidate(device) -> bool:
    """Whether a compiled Pallas kernel exists for `device`: TPU, CUDA GPUs with Mosaic GPU (Hopper and
    newer) or with Triton (HEADSUP_PALLAS_GPU=triton)."""
    if device.platform == "tpu":
        return True
    if device.platform == "gpu":
        return gpu_lowering() == "triton" or float(getattr(device, "compute_capability", "0")) >= 9.0
    return False


def check_pallas(device) -> str | None:
    """Renders a small scene (two 128-entry chunks per tile list) with both backends on `device`, forward
    (rgb, alpha, depth) and gradients (Gaussians, background). None if they agree within IMAGE_TOL and
    GRAD_TOL, else the reason: the exception text or the largest error. On CPU the Pallas kernels run in
    interpret mode."""
    from headsup_jax.render.cameras import look_at
    from headsup_jax.render.rasterize import rasterize
    from headsup_jax.render.scenes import random_scene

    cam = look_at((0.3, 0.2, 1.0), 32, 32, 40.0)

    def loss(g, bg, weights, backend):
        out = rasterize(g, cam, background=bg, backend=backend, tile_capacity=256, max_pairs=2048)
        images = (out.rgb, out.alpha, out.depth)
        return jnp.sum(out.rgb * weights) + jnp.sum(out.alpha) + jnp.sum(out.depth), images

    def run(backend, *args):  # lowered and compiled ahead: `auto` is resolved while the caller is traced
        fn = jax.jit(jax.value_and_grad(functools.partial(loss, backend=backend), argnums=(0, 1), has_aux=True))
        (_, images), grads = fn.lower(*args).compile()(*args)
        return jax.device_get((images, grads))

    try:
        with jax.ensure_compile_time_eval():  # concrete arrays on `device`, even inside a trace
            args = jax.device_put((random_scene(3, 300), np.full(3, 0.3, np.float32),
                                   np.random.default_rng(0).normal(size=(32, 32, 3)).astype(np.float32)), device)
        (images_p, grads_p), (images_x, grads_x) = run("pallas", *args), run("xla", *args)
    except Exception as e:  # noqa: BLE001 -- any failure to compile or run means: do not use Pallas here
        return f"{type(e).__name__}: {e}"
    for name, a, b in zip(("rgb", "alpha", "depth"), images_p, images_x):
        if not np.abs(a - b).max() <= IMAGE_TOL:
            return f"{name} differs from XLA by up to {np.abs(a - b).max():.3g} (tolerance {IMAGE_TOL})"
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads_p), jax.tree.leaves(grads_x)):
        scale = max(float(np.abs(b).max()), 1.0)
        if not np.abs(a - b).max() <= GRAD_TOL * scale:
            return (f"gradient {jax.tree_util.keystr(path)} differs from XLA by up to {np.abs(a - b).max():.3g} "
                    f"(tolerance {GRAD_TOL} x {scale:.3g})")
    return None


@functools.cache
def _checked(platform: str, device_kind: str) -> str:
    device = next(d for d in jax.devices() if (d.platform, d.device_kind) == (platform, device_kind))
    reason = check_pallas(device)
    if reason is None:
        return "pallas"
    log.warning("backend='auto' uses xla on %s (%s): the Pallas self-check failed: %s", platform, device_kind,
                reason)
    return "xla"


def default_backend() -> str:
    """What `backend="auto"` means here: "pallas" on a device with a Pallas kernel that passed
    `check_pallas` (run once per platform and device kind), "xla" elsewhere."""
    device = jax.devices()[0]
    if not pallas_candidate(device):
        return "xla"
    return _checked(device.platform, device.device_kind)
