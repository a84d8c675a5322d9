"""The HeadsUp model: camera conditioning, shapes, and that Gaussians and decoder cost do not depend on N."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from headsup_jax.geometry import anchor
from headsup_jax.model.rays import plucker_rays, ray_distance2
from headsup_jax.render.cameras import look_at, orbit
from headsup_jax.train.config import size_config
from headsup_jax.train.experiment import build_model

GAUSSIAN_FIELDS = ("means", "quats", "scales", "opacities", "sh")
forward = nnx.jit(lambda model, *inputs: model(*inputs))  # one compilation per input shape


def assert_gaussians_close(got, want, err_msg=""):
    """Each field to 1e-6 of its largest magnitude: jit fusion reorders float32 ops (quats differ by ~2 ulp)."""
    for field in GAUSSIAN_FIELDS:
        g, w = np.asarray(getattr(got, field)), np.asarray(getattr(want, field))
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6 * np.abs(w).max(), err_msg=f"{field} {err_msg}")


def get_config(size="tiny"):
    config = size_config(size)
    config.template = "procedural"
    return config


@pytest.fixture(scope="module")
def tiny():
    config = get_config()
    model, atlas, template = build_model(config)
    assert not config.background.enabled  # every Gaussian is a head Gaussian
    return config, model, atlas, template


def views(n, height=64, width=48, batch=1, seed=0):
    cams = orbit(n, 0.7, width, height, 30.0, elevation_degrees=10.0)
    K = np.tile(np.stack([c.K for c in cams])[None], (batch, 1, 1, 1))
    w2c = np.tile(np.stack([c.world_to_cam for c in cams])[None], (batch, 1, 1, 1))
    images = np.random.default_rng(seed).uniform(size=(batch, n, height, width, 3)).astype(np.float32)
    return jnp.asarray(images), jnp.asarray(K), jnp.asarray(w2c)


def test_plucker_rays_pass_through_projected_points():
    cam = look_at((0.3, 0.1, 0.8), 48, 64, 35.0)
    rays = np.asarray(plucker_rays(jnp.asarray(cam.K), jnp.asarray(cam.world_to_cam), 64, 48))  # [H, W, 6]
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.1, 0.1, (50, 3))
    R, t = cam.world_to_cam[:3, :3], cam.world_to_cam[:3, 3]
    pc = points @ R.T + t
    uv = (pc @ cam.K.T)[:, :2] / pc[:, 2:]
    origin = -R.T @ t
    for p, (u, v) in zip(points, uv):
        j, i = int(u), int(v)  # the pixel containing the projection; its centre ray passes within a pixel
        d, m = rays[i, j, :3], rays[i, j, 3:]
        np.testing.assert_allclose(np.linalg.norm(d), 1.0, atol=1e-5)
        np.testing.assert_allclose(m, np.cross(origin, d), atol=1e-5)  # moment of a ray through the centre
        dist = np.linalg.norm(np.cross(p - origin, d))  # distance of the point from the ray
        assert dist < 1.5 * np.linalg.norm(p - origin) / cam.K[0, 0]


def test_ray_distance_matches_float64_point_line_distance():
    """The cross-attention bias's squared distances: queries' points [L, 3] to token rays [B, T, 6]."""
    cams = orbit(3, 0.6, 24, 32, 30.0)
    rays = np.stack([np.asarray(plucker_rays(jnp.asarray(c.K), jnp.asarray(c.world_to_cam), 32, 24)) for c in cams])
    rays = rays.reshape(1, -1, 6)  # [1, 3*32*24, 6]
    points = np.random.default_rng(1).uniform(-0.15, 0.15, (40, 3))
    got = np.asarray(ray_distance2(jnp.asarray(points, jnp.float32), jnp.asarray(rays)))[0]  # [L, T]
    origins = np.concatenate([np.broadcast_to(-c.world_to_cam[:3, :3].T @ c.world_to_cam[:3, 3], (32 * 24, 3))
                              for c in cams])  # [T, 3]
    d = rays[0, :, :3].astype(np.float64)
    rel = points[:, None, :] - origins[None]  # [L, T, 3]
    expected = np.sum(np.cross(rel, d[None]) ** 2, -1)  # |(p - o) x d|^2 for unit d
    np.testing.assert_allclose(got, expected, atol=2e-6)  # float32 cancellation of O(0.5 m^2) terms
    assert expected.min() < 1e-4 and expected.max() > 1e-2  # near and far rays both present


def test_outputs_and_gaussian_count(tiny):
    config, model, atlas, _ = tiny
    gaussians, aux = forward(model, *views(4, batch=2))
    assert gaussians.means.shape == (2, atlas.count, 3) and gaussians.sh.shape == (2, atlas.count, 4, 3)
    assert aux["uv_map"].shape == (2, atlas.resolution, atlas.resolution, 23)
    # zero-initialised head: an untrained model puts its Gaussians on the template surface
    np.testing.assert_allclose(np.asarray(aux["offsets"]), 0.0)
    assert np.all(np.isfinite(np.asarray(gaussians.means)))


def decoder_flops(model, latent):
    graphdef, state = nnx.split(model)

    def decode(state, z):
        m = nnx.merge(graphdef, state)
        return m.head_gaussians(m.decoder(z))[0]

    return jax.jit(decode).lower(state, latent).compile().cost_analysis()["flops"]


def test_untrained_model_gives_the_anchored_template(tiny):
    """Zero-initialised decoder head: every Gaussian equals `anchor(template)` with all-zero attributes (SH
    coefficients zero: mid grey), float32 rounding apart, for both batch elements (different images)."""
    config, model, atlas, template = tiny
    gaussians, _ = forward(model, *views(4, batch=2))
    # the model predicts SH degree 1: anchor's default is all-zero coefficients, given here at that degree
    expected = anchor(template.vertices, atlas, sh=jnp.zeros((atlas.count, 4, 3)))
    for b in range(2):
        assert_gaussians_close(jax.tree.map(lambda x: x[b], gaussians), expected, f"batch {b}")
    np.testing.assert_array_equal(gaussians.sh, 0.0)
    np.testing.assert_array_equal(gaussians.means[0], expected.means)  # the template points themselves


def test_head_gaussians_read_the_documented_channel_layout(tiny):
    """A random UV map [1, R, R, 23]: channels 0-2 offset (times offset_scale), 3-6 rotation, 7-9 log-scale,
    10 opacity logit, 11-22 SH with channel 11 + 3k + c coefficient k of colour c; texels row-major over
    atlas.mask. Each Gaussian equals `anchor` given those slices."""
    config, model, atlas, template = tiny
    R = atlas.resolution
    uv = np.random.default_rng(3).normal(0, 0.3, (1, R, R, 23)).astype(np.float32)
    gaussians, _ = nnx.jit(lambda m, u: m.head_gaussians(u))(model, jnp.asarray(uv))
    texels = uv[0][atlas.mask]  # [G, 23]
    expected = anchor(template.vertices, atlas, offsets=texels[:, 0:3] * config.model.offset_scale,
                      rotations=texels[:, 3:7], log_scales=texels[:, 7:10], opacity_logits=texels[:, 10],
                      sh=texels[:, 11:23].reshape(-1, 4, 3))
    assert_gaussians_close(jax.tree.map(lambda x: x[0], gaussians), expected)


def test_gaussians_and_decoder_cost_do_not_depend_on_view_count(tiny):
    config, model, atlas, _ = tiny
    graphdef, state = nnx.split(model)
    latent_fn = jax.jit(lambda s, *a: nnx.merge(graphdef, s).latent(*a))
    counts, flops, latent_shapes = [], [], []
    for n in (2, 4, 8, 16):
        z = latent_fn(state, *views(n))
        latent_shapes.append(z.shape)
        gaussians, _ = forward(model, *views(n))
        counts.append(gaussians.means.shape[1])
        flops.append(decoder_flops(model, z))
    assert len(set(latent_shapes)) == 1 and latent_shapes[0][1:3] == (config.model.latent_size,) * 2
    assert counts == [atlas.count] * 4
    assert len(set(flops)) == 1 and flops[0] > 0, flops


def test_remat_and_layer_scan_compute_the_same_function():
    config = get_config()
    config.model.depth = 3
    base, _, _ = build_model(config)
    x = views(3)
    L = config.model.latent_size
    weights = jax.random.normal(jax.random.key(0), (1, L, L, config.model.dim))
    latent = nnx.jit(lambda m: m.latent(*x))
    out = latent(base)
    grad = nnx.jit(nnx.grad(lambda m: jnp.sum(m.latent(*x) * weights)))
    g_base = grad(base).compressor.queries[...]
    assert np.abs(np.asarray(g_base)).max() > 1e-3
    for option in ("remat", "scan_layers"):
        variant = get_config()
        variant.model.depth = 3
        variant.model[option] = True
        model, _, _ = build_model(variant)
        if option == "scan_layers":  # copy the loop's block weights into the stacked ones
            stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[nnx.state(b) for b in base.compressor.blocks])
            nnx.update(model.compressor.blocks, stacked)
            others = nnx.state(base, nnx.Not(nnx.PathContains("blocks")))
            nnx.update(model, others)
        else:
            nnx.update(model, nnx.state(base))
        np.testing.assert_allclose(latent(model), out, atol=1e-5, err_msg=option)
        g_var = grad(model).compressor.queries[...]
        np.testing.assert_allclose(g_var, g_base, atol=1e-5 * np.abs(np.asarray(g_base)).max(), err_msg=option)


def test_texel_head_maps_each_latent_cell_onto_its_own_texels():
    """With the convolutional head at zero, the decoder's output at texel (i, j) is the texel head's linear
    map of latent cell (i // p, j // p), output block (i % p, j % p): checked by a NumPy loop."""
    from headsup_jax.model.decoder import NUM_ATTRIBUTES, UVDecoder

    L, R, dim = 4, 16, 8
    decoder = UVDecoder(dim, L, R, (8, 8, 8), texel_head=True, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(dim, (R // L) ** 2 * NUM_ATTRIBUTES)).astype(np.float32)
    bias = rng.normal(size=kernel.shape[1]).astype(np.float32)
    decoder.texel_head.kernel[...] = jnp.asarray(kernel)
    decoder.texel_head.bias[...] = jnp.asarray(bias)
    z = rng.normal(size=(2, L, L, dim)).astype(np.float32)
    got = np.asarray(decoder(jnp.asarray(z)))  # [2, R, R, A]
    p = R // L
    want = np.zeros_like(got)
    for b in range(2):
        for i in range(R):
            for j in range(R):
                cell = (z[b, i // p, j // p].astype(np.float64) @ kernel + bias).reshape(p, p, NUM_ATTRIBUTES)
                want[b, i, j] = cell[i % p, j % p]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
