"""The renderer's shared helpers: `camera_centre` (every -R^T t) and `facing_quats` (every +z -> normal)."""
import jax.numpy as jnp
import numpy as np

from headsup_jax.render.cameras import look_at
from headsup_jax.render.projection import facing_quats
from headsup_jax.render.types import camera_centre


def _rotate(q, v):
    """v rotated by unit quaternion q = (w, x, y, z), float64: v + 2 w (u x v) + 2 u x (u x v)."""
    w, u = q[..., :1], q[..., 1:]
    return v + 2 * w * np.cross(u, v) + 2 * np.cross(u, np.cross(u, v))


def test_camera_centre_numpy_jax_and_batched():
    eyes = np.array([[0.3, 0.1, 0.8], [-0.5, 0.4, 0.2], [0.0, -0.2, -0.9]])
    w2c = np.stack([np.asarray(look_at(e, 8, 8, target=(0.05, 0.0, -0.02)).world_to_cam, np.float64) for e in eyes])
    centre = camera_centre(w2c)  # [3, 3]
    assert isinstance(centre, np.ndarray) and centre.dtype == np.float64
    np.testing.assert_allclose(centre, eyes, atol=1e-6)  # look_at stores float32
    np.testing.assert_allclose(centre, np.linalg.inv(w2c)[:, :3, 3], atol=1e-6)  # cam_to_world's translation
    np.testing.assert_allclose(np.asarray(camera_centre(jnp.asarray(w2c[None], jnp.float32)))[0], centre, atol=1e-6)
    cam = look_at(eyes[1], 8, 8)
    np.testing.assert_allclose(np.asarray(cam.position), eyes[1], atol=1e-6)


def test_facing_quats_turn_z_onto_the_normals():
    rng = np.random.default_rng(0)
    n = rng.normal(size=(64, 3))
    n = np.concatenate([n, [[0, 0, 1], [0, 0, -1], [1e-9, 0, -1]]])
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    q = facing_quats(n)
    assert q.shape == (67, 4) and q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1, atol=1e-6)
    np.testing.assert_allclose(_rotate(q.astype(np.float64), np.array([0.0, 0.0, 1.0])), n, atol=1e-5)
    np.testing.assert_array_equal(q[-3], [1, 0, 0, 0])
