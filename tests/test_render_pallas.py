"""The Pallas backend: interpret-mode numerics equal the XLA path; lowering for TPU and CUDA."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from headsup_jax.render import rasterize
from headsup_jax.render.cameras import look_at
from headsup_jax.render.scenes import head_scene, random_scene

TOL = 1e-5


def loss_and_outputs(g, cam, backend):
    w = jnp.asarray(np.random.default_rng(0).normal(size=(cam.height, cam.width, 3)), jnp.float32)

    def loss(g, bg):
        out = rasterize(g, cam, background=bg, backend=backend)
        return jnp.sum(out.rgb * w) + jnp.sum(out.alpha) + 0.5 * jnp.sum(out.depth), out

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


@pytest.mark.parametrize("scene", ["random", "head"])
def test_interpret_equals_xla(scene):
    if scene == "random":
        g, cam = random_scene(9, 800), look_at((0.3, 0.2, 1.0), 97, 61, 40.0)
    else:
        g, cam = head_scene(1, 1500), look_at((0.1, 0.1, 0.45), 48, 48, 35.0)
    g = jax.tree.map(jnp.asarray, g)
    bg = jnp.array([0.3, 0.3, 0.3])
    (_, ox), gx = loss_and_outputs(g, cam, "xla")(g, bg)
    (_, op), gp = loss_and_outputs(g, cam, "pallas")(g, bg)
    for a, b in [(op.rgb, ox.rgb), (op.alpha, ox.alpha), (op.depth, ox.depth)]:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL, rtol=0)
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gx)):
        scale = max(float(np.abs(np.asarray(b)).max()), 1.0)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL * scale, rtol=0)


@pytest.mark.parametrize("platform, gpu_lowering, target", [
    ("tpu", "mosaic", "tpu_custom_call"),
    ("cuda", "mosaic", "mosaic_gpu_v2"),
    ("cuda", "triton", "__gpu$xla.gpu.triton"),
])
def test_lowers_for_accelerators(platform, gpu_lowering, target, monkeypatch):
    """Forward and forward+backward of the whole renderer export for the platform with both kernels."""
    monkeypatch.setenv("HEADSUP_PALLAS_GPU", gpu_lowering)
    g = jax.tree.map(jnp.asarray, random_scene(0, 256))
    cam = look_at((0.3, 0.2, 1.0), 64, 48, 40.0)

    def forward(g):
        return rasterize(g, cam, backend="pallas").rgb

    def backward(g):
        return jax.grad(lambda g: jnp.sum(rasterize(g, cam, backend="pallas").rgb))(g)

    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]  # Triton has no stable ABI
    for fn, kernels in [(forward, 1), (backward, 2)]:
        exported = export.export(jax.jit(fn), platforms=[platform], disabled_checks=checks)(g)
        calls = re.findall(r"custom_call @([\w$.]+)", exported.mlir_module())
        assert calls.count(target) == kernels, calls
