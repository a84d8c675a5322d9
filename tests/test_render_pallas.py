"""The Pallas backend: interpret-mode numerics equal the XLA path (also under the objective's double vmap);
lowering for TPU and CUDA at the configs' tile capacities; `auto`'s self-check and fallback."""
import functools
import importlib.util
import logging
import os
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from headsup_jax.render import Camera, backend, composite, pallas_composite, rasterize
from headsup_jax.render.cameras import look_at
from headsup_jax.render.rasterize import default_capacities
from headsup_jax.render.scenes import head_scene, random_scene
from headsup_jax.render.tiles import TileGrid
from headsup_jax.train.objective import render_views

TOL = 1e-5
BACKGROUND = jnp.array([0.3, 0.3, 0.3])


def config_sizes():
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "headsup.py")
    spec = importlib.util.spec_from_file_location("headsup_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SIZES


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

    for fn, kernels in [(forward, 1), (backward, 2)]:
        assert kernel_calls(fn, platform, g).count(target) == kernels


def kernel_calls(fn, platform, *args):
    """The custom calls in `fn` exported for `platform` (lowering only; nothing runs)."""
    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]  # Triton has no stable ABI
    exported = export.export(jax.jit(fn), platforms=[platform], disabled_checks=checks)(*args)
    return re.findall(r"custom_call @([\w$.]+)", exported.mlir_module())


def views(batch: int, cams: int, n: int, size: int, opacity_range=(0.05, 0.99)):
    """`batch` random scenes [B, G] and `cams` cameras each (K [B, M, 3, 3], world_to_cam [B, M, 4, 4])."""
    scenes = [random_scene(b, n, opacity_range=opacity_range) for b in range(batch)]
    g = jax.tree.map(lambda *x: jnp.asarray(np.stack(x)), *scenes)
    cams = [[look_at((0.3 * m - 0.1, 0.2, 1.0 + 0.1 * b), size, size, 40.0) for m in range(cams)]
            for b in range(batch)]
    K = jnp.asarray([[c.K for c in row] for row in cams])
    w2c = jnp.asarray([[c.world_to_cam for c in row] for row in cams])
    return g, K, w2c


def image_weights(shape):
    return jnp.sin(jnp.arange(np.prod(shape), dtype=jnp.float32)).reshape(shape)


def render_loss(backend, size, capacity, max_pairs=0):
    """value_and_grad of a weighted sum of the objective's renders (`render_views`: vmap of vmap)."""
    config = types.SimpleNamespace(backend=backend, tile_capacity=capacity, max_pairs=max_pairs)

    def loss(g, K, w2c):
        out = render_views(g, K, w2c, size, size, BACKGROUND, config)
        return jnp.sum(out.rgb * image_weights(out.rgb.shape)) + jnp.sum(out.alpha) + 0.5 * jnp.sum(out.depth), out

    return jax.value_and_grad(loss, has_aux=True)


def test_interpret_equals_xla_under_double_vmap():
    """B=2 scenes x M=2 cameras through `render_views`, 4 tiles each, lists over two 128-entry chunks
    (faint Gaussians, so that pixels do not stop early): Pallas equals XLA rendering one image at a time."""
    size, capacity = 32, 256
    g, K, w2c = views(2, 2, 400, size, opacity_range=(0.02, 0.1))
    (_, op), gp = jax.jit(render_loss("pallas", size, capacity))(g, K, w2c)
    w = image_weights(op.rgb.shape)

    @jax.jit
    @functools.partial(jax.value_and_grad, has_aux=True)
    def one(g, cam, w):
        out = rasterize(g, cam, background=BACKGROUND, backend="xla", tile_capacity=capacity)
        return jnp.sum(out.rgb * w) + jnp.sum(out.alpha) + 0.5 * jnp.sum(out.depth), out

    for b, m in np.ndindex(2, 2):
        g_b = jax.tree.map(lambda x: x[b], g)
        (_, ox), gx = one(g_b, Camera(world_to_cam=w2c[b, m], K=K[b, m], width=size, height=size), w[b, m])
        assert int(ox.stats["max_tile_count"]) > 128 and int(ox.stats["dropped_pairs"]) == 0
        for name in ("rgb", "alpha", "depth"):
            np.testing.assert_allclose(np.asarray(getattr(op, name)[b, m]), np.asarray(getattr(ox, name)),
                                       atol=TOL, rtol=0, err_msg=f"{name} of scene {b}, camera {m}")
        ref = gx if m == 0 else jax.tree.map(jnp.add, ref, gx)  # the loss sums the cameras' terms
        if m == 1:
            for a, r in zip(jax.tree.leaves(jax.tree.map(lambda x: x[b], gp)), jax.tree.leaves(ref)):
                scale = max(float(np.abs(np.asarray(r)).max()), 1.0)
                np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=TOL * scale, rtol=0)


# the configs' tile capacities; 0 (tiny) means the renderer's default, at most 2048
DEFAULT_CAPACITY = default_capacities(10**6, TileGrid(64, 64, 16))[1]
CAPACITIES = sorted({s["tiles"] or DEFAULT_CAPACITY for s in config_sizes().values()})


@pytest.mark.parametrize("capacity", CAPACITIES)
@pytest.mark.parametrize("platform, gpu_lowering, target", [
    ("tpu", "mosaic", "tpu_custom_call"),
    ("cuda", "mosaic", "mosaic_gpu_v2"),
    ("cuda", "triton", "__gpu$xla.gpu.triton"),
])
def test_training_render_lowers_at_config_capacities(platform, gpu_lowering, target, capacity, monkeypatch):
    """The objective's render (double vmap, forward and backward) exports at every config's tile capacity."""
    monkeypatch.setenv("HEADSUP_PALLAS_GPU", gpu_lowering)
    g, K, w2c = views(2, 2, 64, 64)
    calls = kernel_calls(render_loss("pallas", 64, capacity, max_pairs=4096), platform, g, K, w2c)
    assert calls.count(target) == 2


@pytest.fixture
def fresh_auto(monkeypatch):
    """`auto` as on an accelerator (the CPU counts as one; Pallas runs in interpret mode), nothing cached."""
    monkeypatch.setattr(backend, "pallas_candidate", lambda device: True)
    backend._checked.cache_clear()
    yield
    backend._checked.cache_clear()


def test_self_check_passes_in_interpret_mode():
    assert backend.check_pallas(jax.devices("cpu")[0]) is None


def test_auto_is_xla_on_cpu():
    assert backend.default_backend() == "xla"


@pytest.mark.parametrize("failure, reason", [
    ("wrong", "rgb differs from XLA by up to 0.1"),
    ("raises", "RuntimeError: no kernel today"),
])
def test_auto_falls_back_to_xla_naming_the_reason(failure, reason, fresh_auto, monkeypatch, caplog):
    def broken(attrs, counts, grid, rules):
        if failure == "raises":
            raise RuntimeError("no kernel today")
        out, last = composite.xla_forward(attrs, counts, grid, rules)
        return out.at[:, 0].add(0.1), last

    monkeypatch.setattr(pallas_composite, "pallas_forward", broken)
    with caplog.at_level(logging.WARNING, logger=backend.__name__):
        assert backend.default_backend() == "xla"
    assert "Pallas self-check failed" in caplog.text and reason in caplog.text


def test_auto_checks_once(fresh_auto, monkeypatch):
    calls = []
    monkeypatch.setattr(backend, "check_pallas", lambda device: calls.append(device))  # None: passed
    g = jax.tree.map(jnp.asarray, random_scene(0, 20))
    cam = look_at((0.3, 0.2, 1.0), 16, 16, 40.0)
    assert [backend.default_backend() for _ in range(3)] == ["pallas"] * 3
    jax.make_jaxpr(lambda g: rasterize(g, cam).rgb)(g)  # `auto` resolved inside a trace: the cached answer
    assert calls == [jax.devices()[0]]
