"""Losses and metrics against independent float64 NumPy/SciPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from headsup_jax.train import losses, metrics


def images(seed, shape=(2, 3, 40, 48, 3)):
    """A textured image (smooth gradient + noise) and a noisy, shifted copy, both in [0, 1]."""
    rng = np.random.default_rng(seed)
    H, W = shape[-3:-1]
    ramp = np.linspace(0, 1, H)[:, None, None] * np.linspace(0.2, 0.8, W)[None, :, None]
    x = np.clip(ramp + 0.3 * rng.random(shape), 0, 1)
    y = np.clip(x + rng.normal(0, 0.1, shape) + 0.05, 0, 1)
    return x.astype(np.float32), y.astype(np.float32)


def ssim_map_reference(x, y):
    """3DGS SSIM in float64: 11-tap Gaussian (sigma 1.5) with zero padding per channel, channel mean. [H, W, C]"""
    x, y = x.astype(np.float64), y.astype(np.float64)

    def blur(a):
        return np.stack([ndimage.gaussian_filter(a[..., c], 1.5, mode="constant", cval=0.0, radius=5)
                         for c in range(a.shape[-1])], -1)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean(-1)


def weighted_mean_reference(x, w):
    w = np.broadcast_to(w, x.shape).astype(np.float64)
    return (w * x).sum() / w.sum()


def test_ssim_map_matches_scipy_reference():
    """Per-pixel SSIM (borders included) within 2e-5 of the float64 reference, for batch axes [2, 3]."""
    x, y = images(0)
    got = np.asarray(jax.jit(metrics.ssim_map)(x, y))
    assert got.shape == (2, 3, 40, 48)
    ref = np.stack([[ssim_map_reference(x[a, b], y[a, b]) for b in range(3)] for a in range(2)])
    np.testing.assert_allclose(got, ref, atol=2e-5)
    assert 0.2 < ref.mean() < 0.9  # a non-trivial case


def test_ssim_and_dssim_with_mask_match_reference():
    x, y = images(1, (2, 32, 36, 3))
    mask = (np.random.default_rng(1).random((2, 32, 36)) > 0.4).astype(np.float32)
    ref_maps = np.stack([ssim_map_reference(x[i], y[i]) for i in range(2)])
    per_image = [weighted_mean_reference(ref_maps[i], mask[i]) for i in range(2)]
    np.testing.assert_allclose(metrics.ssim(x, y, mask), per_image, atol=2e-5)
    dssim_ref = weighted_mean_reference((1 - ref_maps) / 2, mask)
    np.testing.assert_allclose(jax.jit(losses.dssim_loss)(x, y, mask), dssim_ref, atol=1e-5)
    np.testing.assert_allclose(losses.dssim_loss(x, y), ((1 - ref_maps) / 2).mean(), atol=1e-5)


def test_ssim_of_identical_images_is_one():
    x, _ = images(2, (3, 32, 32, 3))
    np.testing.assert_allclose(metrics.ssim(x, x), 1.0, atol=1e-6)
    assert abs(float(losses.dssim_loss(x, x))) < 1e-6


def test_dssim_gradient_is_finite_and_nonzero():
    x, y = images(3, (1, 24, 24, 3))
    g = np.asarray(jax.grad(losses.dssim_loss)(jnp.asarray(x), y))
    assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_psnr_against_formula_and_mask():
    x, y = images(4, (2, 3, 20, 24, 3))
    mse = ((x.astype(np.float64) - y) ** 2).mean(axis=(-3, -2, -1))
    np.testing.assert_allclose(metrics.psnr(x, y), 10 * np.log10(1 / mse), rtol=1e-5)
    # A constant error of 0.1 on the kept pixels is 20 dB, whatever the excluded pixels hold.
    mask = np.zeros((2, 3, 20, 24), np.float32)
    mask[..., 5:15, 3:20] = 1
    pred = np.where(mask[..., None] > 0, y - 0.1, 7.0)
    np.testing.assert_allclose(metrics.psnr(pred, y, mask), 20.0, atol=1e-4)
    np.testing.assert_allclose(metrics.psnr(x, y, max_val=2.0), 10 * np.log10(4 / mse), rtol=1e-5)


def test_image_metrics_keys_and_shapes():
    x, y = images(5, (4, 16, 16, 3))
    out = metrics.image_metrics(x, y)
    assert set(out) == {"psnr", "ssim"} and all(v.shape == (4,) for v in out.values())
    out = metrics.image_metrics(x, y, lpips=lambda a, b: jnp.zeros(a.shape[:-3]))
    assert out["lpips"].shape == (4,)


def test_l1_weighted_and_masked_pixels_excluded():
    x, y = images(6, (2, 16, 20, 3))
    w = np.random.default_rng(6).random((2, 16, 20)).astype(np.float32)
    w[:, :4] = 0
    l1 = jax.jit(losses.l1_loss)
    np.testing.assert_allclose(l1(x, y), np.abs(x.astype(np.float64) - y).mean(), rtol=1e-5)
    np.testing.assert_allclose(l1(x, y, w), weighted_mean_reference(np.abs(x.astype(np.float64) - y), w[..., None]),
                               rtol=1e-5)
    x2 = x.copy()
    x2[:, :4] = 1 - x2[:, :4]  # only zero-weight pixels change
    assert float(l1(x2, y, w)) == pytest.approx(float(l1(x, y, w)), rel=1e-6)
    assert float(losses.dssim_loss(x, y, np.zeros((2, 16, 20)))) == 0.0


def test_mask_losses_against_numpy():
    rng = np.random.default_rng(7)
    alpha = rng.random((2, 3, 12, 10)).astype(np.float32)
    alpha[0, 0, 0, :3] = (0.0, 1.0, 0.5)  # saturated values exercise the clipping
    mask = (rng.random((2, 3, 12, 10)) > 0.5).astype(np.float32)
    w = rng.random((2, 3, 12, 10)).astype(np.float32)
    a64 = alpha.astype(np.float64)
    np.testing.assert_allclose(losses.mask_l1_loss(alpha, mask, w), weighted_mean_reference(np.abs(a64 - mask), w),
                               rtol=1e-5)
    eps = 1e-6
    a = np.clip(a64, eps, 1 - eps)
    bce = -(mask * np.log(a) + (1 - mask) * np.log(1 - a))
    np.testing.assert_allclose(jax.jit(losses.mask_bce_loss)(alpha, mask), bce.mean(), rtol=1e-4)
    np.testing.assert_allclose(losses.mask_bce_loss(alpha, mask, w), weighted_mean_reference(bce, w), rtol=1e-4)


def tv_brute_force(uv, valid, squared):
    B, R, _, A = uv.shape
    total, pairs = 0.0, 0
    for i in range(R):
        for j in range(R):
            for di, dj in ((1, 0), (0, 1)):
                i2, j2 = i + di, j + dj
                if i2 < R and j2 < R and valid[i, j] and valid[i2, j2]:
                    pairs += 1
                    for b in range(B):
                        for a in range(A):
                            d = float(uv[b, i2, j2, a]) - float(uv[b, i, j, a])
                            total += d * d if squared else abs(d)
    return total / (pairs * B * A)


@pytest.mark.parametrize("squared", [False, True])
def test_uv_tv_matches_brute_force_and_ignores_invalid_texels(squared):
    rng = np.random.default_rng(8)
    uv = rng.normal(size=(2, 7, 7, 3)).astype(np.float32)
    valid = rng.random((7, 7)) > 0.35
    tv = jax.jit(losses.uv_tv_loss, static_argnames="squared")
    np.testing.assert_allclose(tv(uv, valid, squared=squared), tv_brute_force(uv, valid, squared), rtol=1e-5)
    uv2 = uv.copy()
    uv2[:, ~valid] = 100.0
    np.testing.assert_allclose(tv(uv2, valid, squared=squared), tv(uv, valid, squared=squared), rtol=1e-6)
    # A texel valid alone (no valid neighbour) contributes nothing either.
    lonely = np.zeros((7, 7), bool)
    lonely[1, 1] = lonely[1, 2] = lonely[5, 5] = True
    uv3 = uv.copy()
    uv3[:, 5, 5] += 50.0
    np.testing.assert_allclose(tv(uv3, lonely, squared=squared), tv_brute_force(uv, lonely, squared), rtol=1e-5)


def test_offset_loss_and_region_weights():
    rng = np.random.default_rng(9)
    offsets = rng.normal(size=(2, 50, 3)).astype(np.float32)
    np.testing.assert_allclose(losses.offset_loss(offsets), (offsets.astype(np.float64) ** 2).sum(-1).mean(), rtol=1e-5)
    regions = rng.random((2, 8, 9, 2)).astype(np.float32)
    rw = np.array([4.0, 2.5], np.float32)
    w = losses.region_weight_map(regions, rw, base=0.5)
    np.testing.assert_allclose(w, 0.5 + regions[..., 0] * 4.0 + regions[..., 1] * 2.5, rtol=1e-6)
    x, y = images(9, (2, 8, 9, 3))  # per-pixel errors differ, so a gradient through the weights would not vanish
    g = jax.grad(lambda r: losses.l1_loss(x, y, losses.region_weight_map(r, rw)))(jnp.asarray(regions))
    assert not np.asarray(g).any()  # weights are constants for the optimiser
