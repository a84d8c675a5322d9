"""Camera rigs: counts, image sizes, every camera sees the head, rigid poses, seeded randomness."""
import numpy as np
import pytest

from headsup_jax.geometry.rigs import TARGET, Jitter, dome80, frontal16, jitter, make_rig, random_rig


def _project(cam, X):
    w2c, K = np.asarray(cam.world_to_cam, np.float64), np.asarray(cam.K, np.float64)
    Xc = w2c[:3, :3] @ X + w2c[:3, 3]
    uv = K @ (Xc / Xc[2])
    return uv[:2], Xc[2]


def _assert_rigid(cam):
    R = np.asarray(cam.world_to_cam, np.float64)[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-5)
    assert np.linalg.det(R) > 0


def _sees_head(cam, half_extent=(0.1, 0.155, 0.1)):
    """The 8 corners of a 20 x 31 x 20 cm box (crown to neck) around the aim point project inside the image, in front."""
    for corner in np.array(np.meshgrid(*[[-h, h] for h in half_extent])).reshape(3, -1).T + TARGET:
        (u, v), z = _project(cam, corner)
        assert z > 0 and 0 <= u <= cam.width and 0 <= v <= cam.height, (u, v, z)


@pytest.mark.parametrize("rig,count", [(frontal16, 16), (dome80, 80)])
def test_rig_sizes_and_visibility(rig, count):
    cams = rig(resolution=200)
    assert len(cams) == count
    for cam in cams:
        assert (cam.width, cam.height) == (150, 200)
        _assert_rigid(cam)
        _sees_head(cam)
        (u, v), _ = _project(cam, np.asarray(TARGET))
        assert abs(u - 75) < 1 and abs(v - 100) < 1  # aimed at the head
    positions = np.array([np.asarray(c.position) for c in cams])
    assert len(np.unique(positions.round(4), axis=0)) == count
    if rig is frontal16:
        assert (positions[:, 2] > 0).all()  # frontal hemisphere only
    else:
        assert (positions[:, 2] < -0.5).sum() >= 15  # the dome also sees the back of the head


def test_up_is_up():
    cam = frontal16(resolution=100)[2]  # high row, azimuth 0
    (_, v_top), _ = _project(cam, np.array([0.0, 0.1, 0.0]))
    (_, v_bottom), _ = _project(cam, np.array([0.0, -0.1, 0.0]))
    assert v_top < v_bottom


def test_random_rig_and_jitter_are_seeded_and_rigid():
    a, b, c = random_rig(6, seed=1, resolution=64), random_rig(6, seed=1, resolution=64), random_rig(6, 2, 64)
    assert all(np.array_equal(x.world_to_cam, y.world_to_cam) for x, y in zip(a, b))
    assert not np.array_equal(a[0].world_to_cam, c[0].world_to_cam)
    base = frontal16(resolution=100)
    j1, j2 = jitter(base, 5), jitter(base, 5)
    assert all(np.array_equal(x.K, y.K) and np.array_equal(x.world_to_cam, y.world_to_cam) for x, y in zip(j1, j2))
    moved = [np.linalg.norm(np.asarray(x.position) - np.asarray(y.position)) for x, y in zip(base, j1)]
    assert 0.001 < np.mean(moved) < 0.1
    for cam in j1 + a:
        _assert_rigid(cam)
        _sees_head(cam, half_extent=(0.08, 0.1, 0.08))
    no_noise = jitter(base, 5, Jitter(0, 0, 0, 0, 0))
    np.testing.assert_allclose(no_noise[3].world_to_cam, base[3].world_to_cam, atol=1e-5)


def test_make_rig_names():
    assert len(make_rig("random7", 64, seed=3)) == 7
    assert len(make_rig("frontal16", 64, seed=3, noise=Jitter())) == 16
    with pytest.raises(ValueError, match="unknown rig 'dome81'"):
        make_rig("dome81", 64)
