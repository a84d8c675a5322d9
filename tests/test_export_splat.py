""".splat: 32-byte records as antimatter15/splat's convert.py writes them, in its order, and a round trip
within the format's quantisation."""
import numpy as np
import pytest

from headsup_jax.export.checks import GaussianFileError, load_gaussians, save_gaussians
from headsup_jax.export.splat import load_splat, save_splat
from headsup_jax.render import Gaussians
from headsup_jax.render.scenes import random_scene
from headsup_jax.render.sh import C0, rgb_to_sh


def scene(n=500, seed=0):
    g = random_scene(seed, n, sh_degree=1, scale_range=(0.002, 0.05))
    rgb = np.random.default_rng(seed).uniform(0.02, 0.98, (n, 3)).astype(np.float32)
    sh = np.concatenate([rgb_to_sh(rgb)[:, None], g.sh[:, 1:]], 1).astype(np.float32)  # colours inside [0, 1]
    return Gaussians(g.means, g.quats, g.scales, g.opacities, sh)


def reference_records(g: Gaussians) -> bytes:
    """convert.py's loop, on the values a PLY would hold (log scales, logit opacities)."""
    log_scales = np.log(g.scales.astype(np.float64))
    logit = np.log(g.opacities / (1 - g.opacities.astype(np.float64)))
    order = np.argsort(-np.exp(log_scales.sum(-1)) / (1 + np.exp(-logit)))
    out = b""
    for i in order:
        colour = np.array([*(0.5 + C0 * g.sh[i, 0]), 1 / (1 + np.exp(-logit[i]))])
        rot = g.quats[i].astype(np.float32)
        out += np.asarray(g.means[i], np.float32).tobytes() + np.exp(log_scales[i]).astype(np.float32).tobytes()
        out += (colour * 255).clip(0, 255).astype(np.uint8).tobytes()
        out += ((rot / np.linalg.norm(rot)) * 128 + 128).clip(0, 255).astype(np.uint8).tobytes()
    return out


def test_bytes_equal_the_reference_converter(tmp_path):
    g = scene()
    save_splat(g, tmp_path / "a.splat")
    data = (tmp_path / "a.splat").read_bytes()
    assert len(data) == 32 * g.count
    ref = reference_records(g)
    recs, want = np.frombuffer(data, np.uint8).reshape(-1, 32), np.frombuffer(ref, np.uint8).reshape(-1, 32)
    # positions (hence the order) exactly; float32 vs float64 maths may flip a truncated byte by one
    np.testing.assert_array_equal(recs[:, :12], want[:, :12])
    np.testing.assert_allclose(recs[:, 12:24].view(np.float32), want[:, 12:24].view(np.float32), rtol=1e-6)
    assert np.abs(recs[:, 24:].astype(int) - want[:, 24:]).max() <= 1
    assert np.mean(recs[:, 24:] == want[:, 24:]) > 0.99


def test_round_trip_within_quantisation(tmp_path):
    g = scene(seed=1)
    save_gaussians(g, tmp_path / "a.splat")
    back = load_gaussians(tmp_path / "a.splat")
    order = np.argsort(-np.prod(g.scales, -1) * g.opacities, kind="stable")
    np.testing.assert_array_equal(back.means, g.means[order])
    np.testing.assert_array_equal(back.scales, g.scales[order])
    rgb = 0.5 + C0 * back.sh[:, 0]
    assert back.sh.shape == (g.count, 1, 3)
    err = (0.5 + C0 * g.sh[order, 0]) - rgb
    assert np.all((err >= -1e-6) & (err < 1 / 255 + 1e-6))  # truncation: at most one step below
    np.testing.assert_allclose(back.opacities, g.opacities[order], atol=1 / 255 + 1e-6)
    q = g.quats[order] / np.linalg.norm(g.quats[order], axis=-1, keepdims=True)
    q_back = back.quats * np.sign(np.sum(back.quats * q, -1, keepdims=True))
    np.testing.assert_allclose(np.linalg.norm(back.quats, axis=-1), 1, rtol=1e-6)
    assert np.abs(q_back - q).max() < 2.5 / 128


def test_bad_files_are_named(tmp_path):
    (tmp_path / "short.splat").write_bytes(b"\0" * 40)
    with pytest.raises(GaussianFileError, match=r"short\.splat: 40 bytes is not a whole number of 32-byte"):
        load_splat(tmp_path / "short.splat")
    rec = np.zeros(2, [("p", "<f4", 6), ("c", "u1", 8)])
    rec["c"] = 128
    rec["p"][1, 0] = np.inf
    (tmp_path / "inf.splat").write_bytes(rec.tobytes())
    with pytest.raises(GaussianFileError, match=r"inf\.splat: record 1 has a non-finite position"):
        load_splat(tmp_path / "inf.splat")
    rec["p"][1, 0] = 0
    (tmp_path / "zero.splat").write_bytes(rec.tobytes())
    with pytest.raises(GaussianFileError, match=r"zero\.splat: record 0 has a zero rotation"):
        load_splat(tmp_path / "zero.splat")
