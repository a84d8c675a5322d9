"""Anchoring Gaussians to the template and the blendshape rig."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from geometry_reference import ICT, ICT_SKIP_REASON, mesh_silhouette
from headsup_jax.geometry import anchor, build_atlas, deform, expression_coefficients, load_template
from headsup_jax.geometry.anchor import MAX_FOOTPRINT, NORMAL_SCALE, TANGENT_SCALE, matrix_to_quat, quat_multiply
from headsup_jax.geometry.procedural import procedural_template
from headsup_jax.render import rasterize
from headsup_jax.render.cameras import orbit


@pytest.fixture(scope="module")
def proc():
    return procedural_template()


@pytest.fixture(scope="module")
def atlas(proc):
    return build_atlas(proc, 128)


def predictions(G, seed=0):
    rng = np.random.default_rng(seed)
    return dict(offsets=rng.normal(0, 0.002, (G, 3)).astype(np.float32),
                rotations=rng.normal(0, 0.3, (G, 4)).astype(np.float32),
                log_scales=rng.normal(0, 0.2, (G, 3)).astype(np.float32))


def rotmat(q):
    """(w, x, y, z) -> [..., 3, 3] via scipy (x, y, z, w)."""
    q = np.asarray(q, np.float64)
    return Rotation.from_quat(np.concatenate([q[..., 1:], q[..., :1]], -1)).as_matrix()


@pytest.mark.parametrize("which,resolution", [("procedural", 128), ("ict", 256)])
def test_zero_predictions_match_mesh_silhouette(which, resolution):
    """4 views at 128 x 128: alpha > 0.5 against the pixel-centre silhouette of the atlas's triangles.
    The renderer's 0.3 px anti-aliasing dilation (which the mesh rasteriser lacks) is off here."""
    if which == "ict" and not ICT.exists():
        pytest.skip(ICT_SKIP_REASON)
    t = load_template(which)
    atlas = build_atlas(t, resolution)
    g = anchor(t.vertices, atlas)
    render = jax.jit(lambda cam: rasterize(g, cam, background=jnp.ones(3), eps2d=0.0, tile_capacity=8192,
                                           max_pairs=16 * atlas.count))
    ious = []
    for cam in orbit(4, 0.7, 128, 128, fov_y_degrees=30.0, elevation_degrees=10.0):
        out = render(cam)
        assert int(out.stats["dropped_pairs"]) == 0
        alpha = np.asarray(out.alpha)
        mesh = mesh_silhouette(t.vertices, t.faces[atlas.faces], cam.world_to_cam, cam.K, 128, 128)
        ious.append(((alpha > 0.5) & mesh).sum() / ((alpha > 0.5) | mesh).sum())
        assert alpha[mesh].min() > 0.9  # closed: no holes inside the silhouette
    print(f"{which} R={resolution} G={atlas.count} silhouette IoU per view:", np.round(ious, 4))
    assert min(ious) >= 0.97


def test_anchor_matches_float64_reference(proc, atlas):
    """Anchor points, frames (tangent along +u, normal), footprints and scales against NumPy float64."""
    p = predictions(atlas.count)
    g = anchor(proc.vertices, atlas, **p)
    vid, bary, uv = atlas.binding()
    P = proc.vertices.astype(np.float64)[vid]  # [G, 3, 3]
    point = np.einsum("gk,gkc->gc", bary, P)
    # the affine map uv -> surface of each triangle: J = [e1 e2] [d1 d2]^-1
    E = np.stack([P[:, 1] - P[:, 0], P[:, 2] - P[:, 0]], -1)  # [G, 3, 2]
    D = np.stack([uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]], -1).astype(np.float64)  # [G, 2, 2]
    J = E @ np.linalg.inv(D)  # [G, 3, 2] columns dp/du, dp/dv
    n = np.cross(E[..., 0], E[..., 1])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    t = J[..., 0] - np.einsum("gc,gc->g", J[..., 0], n)[:, None] * n
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    faces = proc.vertices.astype(np.float64)[proc.faces[atlas.faces]]
    total = 0.5 * np.linalg.norm(np.cross(faces[:, 1] - faces[:, 0], faces[:, 2] - faces[:, 0]), axis=1).sum()
    packed = atlas.face_uvs.astype(np.float64)
    d1, d2 = packed[:, 1] - packed[:, 0], packed[:, 2] - packed[:, 0]
    texel = np.sqrt(total / (0.5 * np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]).sum())) / atlas.resolution
    assert atlas.texel_size == pytest.approx(texel, rel=1e-6)
    assert atlas.exact.sum() * texel ** 2 == pytest.approx(total, rel=0.02)  # texels tile the surface area
    b = np.cross(n, t)
    dpdu, dpdv = J[..., 0], J[..., 1]
    along_t = np.hypot(np.einsum("gc,gc->g", dpdu, t), np.einsum("gc,gc->g", dpdv, t))
    along_b = np.abs(np.einsum("gc,gc->g", dpdv, b))
    footprint = np.minimum(np.stack([along_t, along_b], -1) / atlas.resolution, MAX_FOOTPRINT * texel)
    frame = np.stack([t, b, n], -1)
    np.testing.assert_allclose(g.means, point + np.einsum("gij,gj->gi", frame, p["offsets"]), atol=2e-6)
    local = p["rotations"] + np.array([1, 0, 0, 0])
    np.testing.assert_allclose(rotmat(g.quats), frame @ rotmat(local), atol=2e-5)
    extent = np.concatenate([footprint, np.sqrt(footprint.prod(1, keepdims=True))], 1)
    base = np.array([TANGENT_SCALE, TANGENT_SCALE, NORMAL_SCALE])
    np.testing.assert_allclose(g.scales, extent * base * np.exp(p["log_scales"]), rtol=2e-5)
    np.testing.assert_allclose(g.opacities, 1 / (1 + np.exp(-3.0)), rtol=1e-6)
    # a texel maps to the parallelogram (dp/du, dp/dv) / R: their areas add up to the surface area, and
    # the footprint box along (t, b) contains it
    texel_area = np.linalg.norm(np.cross(dpdu, dpdv), axis=1) / atlas.resolution ** 2
    assert texel_area.sum() == pytest.approx(total, rel=0.05)
    assert np.all(footprint.prod(1) >= texel_area * (1 - 1e-9))


def test_rigid_transform_moves_gaussians_identically(proc, atlas):
    p = predictions(atlas.count, seed=1)
    R = Rotation.from_rotvec([0.3, -1.1, 0.7]).as_matrix()
    t = np.array([0.1, -0.2, 0.05])
    g0 = anchor(proc.vertices, atlas, **p)
    g1 = anchor((proc.vertices.astype(np.float64) @ R.T + t).astype(np.float32), atlas, **p)
    np.testing.assert_allclose(g1.means, np.asarray(g0.means, np.float64) @ R.T + t, atol=3e-6)
    np.testing.assert_allclose(rotmat(g1.quats), R @ rotmat(g0.quats), atol=1e-4)  # float32 on tiny triangles
    np.testing.assert_allclose(g1.scales, g0.scales, rtol=1e-3)  # float32 on 0.1 mm triangles


def test_matrix_to_quat_against_scipy():
    rots = Rotation.random(500, random_state=0)
    near_pi = Rotation.from_rotvec(np.array([[np.pi - 1e-4, 0, 0], [0, np.pi, 0], [0, 0, np.pi - 1e-3]]))
    mats = np.concatenate([rots.as_matrix(), near_pi.as_matrix(), np.eye(3)[None]])
    q = np.asarray(matrix_to_quat(jnp.asarray(mats, jnp.float32)), np.float64)
    np.testing.assert_allclose(rotmat(q), mats, atol=1e-5)
    a, b = Rotation.random(2, random_state=1).as_quat()
    ab = quat_multiply(jnp.asarray(np.r_[a[3], a[:3]]), jnp.asarray(np.r_[b[3], b[:3]]))
    np.testing.assert_allclose(rotmat(ab), (Rotation.from_quat(a) * Rotation.from_quat(b)).as_matrix(), atol=1e-6)


def test_gaussians_follow_the_deformed_mesh(proc, atlas):
    coeffs = expression_coefficients(proc, {"jawOpen": 1.0, "mouthSmile_L": 1.0})
    ident = np.random.default_rng(0).normal(size=proc.identity_deltas.shape[0]).astype(np.float32)
    verts = np.asarray(deform(proc, ident, coeffs), np.float64)
    ref = proc.vertices.astype(np.float64) + np.einsum("k,kvc->vc", ident, proc.identity_deltas) \
        + np.einsum("k,kvc->vc", coeffs, proc.expression_deltas)
    np.testing.assert_allclose(verts, ref, atol=1e-6)
    assert np.abs(verts - proc.vertices).max() > 0.01  # jawOpen moves the chin by centimetres
    g = anchor(verts.astype(np.float32), atlas)
    vid, bary, _ = atlas.binding()
    P = verts[vid]
    np.testing.assert_allclose(g.means, np.einsum("gk,gkc->gc", bary, P), atol=2e-6)
    n = np.cross(P[:, 1] - P[:, 0], P[:, 2] - P[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    np.testing.assert_allclose(rotmat(g.quats)[:, :, 2], n, atol=2e-5)  # local z = deformed normal


def test_zero_coefficients_give_the_neutral_mesh(proc):
    E, I = len(proc.expression_names), proc.identity_deltas.shape[0]
    np.testing.assert_array_equal(deform(proc, np.zeros(I), np.zeros(E)), proc.vertices)
    np.testing.assert_array_equal(deform(proc), proc.vertices)


def test_gradients_flow_to_coefficients(proc, atlas):
    """d/dc of a loss on anchored means (with offsets, so frames matter) against central differences.
    (Gradients from images to Gaussians are the renderer's tests.)"""
    E, I = len(proc.expression_names), proc.identity_deltas.shape[0]
    offsets = jnp.asarray(predictions(atlas.count, seed=2)["offsets"] * 5)
    w = jnp.asarray(np.random.default_rng(3).normal(size=(atlas.count, 3)), jnp.float32)

    def loss(ident, expr):
        return jnp.sum(w * anchor(deform(proc, ident, expr), atlas, offsets=offsets).means)

    c_id, c_ex = jnp.full(I, 0.3), jnp.full(E, 0.2)
    g_id, g_ex = jax.jit(jax.grad(loss, argnums=(0, 1)))(c_id, c_ex)
    jaw = proc.expression_names.index("jawOpen")
    loss_fn = jax.jit(loss)
    for grad, k, which in ((g_ex, jaw, 1), (g_id, 4, 0)):
        h = 1e-2
        args = [np.asarray(c_id, np.float64), np.asarray(c_ex, np.float64)]
        plus, minus = [a.copy() for a in args], [a.copy() for a in args]
        plus[which][k] += h
        minus[which][k] -= h
        fd = (float(loss_fn(*plus)) - float(loss_fn(*minus))) / (2 * h)
        assert float(grad[k]) == pytest.approx(fd, rel=2e-2, abs=1e-3)
        assert abs(fd) > 1e-3


def test_expression_coefficients_by_name(proc):
    names = proc.expression_names
    for required in ("jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R", "browInnerUp",
                     "mouthPucker", "cheekPuff"):
        assert required in names
    c = expression_coefficients(proc, {"jawOpen": 0.5, "eyeBlink_R": 1.0})
    assert c.shape == (len(names),) and c[names.index("jawOpen")] == 0.5 and c[names.index("eyeBlink_R")] == 1
    assert c.sum() == 1.5
    np.testing.assert_array_equal(expression_coefficients(proc, c), c)
    arkit = expression_coefficients(proc, {"JawOpen": 0.5, "eyeBlinkRight": 1.0})  # ARKit spellings (capture files)
    np.testing.assert_array_equal(arkit, c)
    split = dataclasses.replace(proc, expression_names=tuple(n if n != "cheekPuff" else "cheekPuff_L" for n in names)
                                + ("cheekPuff_R",), expression_deltas=np.concatenate([proc.expression_deltas,
                                                                                        proc.expression_deltas[:1]]))
    both = expression_coefficients(split, {"cheekPuff": 0.7})  # an ARKit name the template splits drives both sides
    assert both[names.index("cheekPuff")] == both[-1] == np.float32(0.7) and both.sum() == np.float32(1.4)
    with pytest.raises(ValueError, match="unknown expression names \\['jawOpn'\\]; valid names: .*jawOpen"):
        expression_coefficients(proc, {"jawOpn": 1.0})
    with pytest.raises(ValueError, match="outside \\[0, 1\\].*jawOpen.*allow_out_of_range"):
        expression_coefficients(proc, {"jawOpen": 1.5})
    assert expression_coefficients(proc, {"jawOpen": -0.5}, allow_out_of_range=True)[names.index("jawOpen")] == -0.5
    with pytest.raises(ValueError, match="shape \\[3\\], expected"):
        expression_coefficients(proc, np.zeros(3))
    with pytest.raises(ValueError, match="non-finite weights for \\['cheekPuff'\\]"):
        expression_coefficients(proc, {"cheekPuff": float("nan")})
    with pytest.raises(ValueError, match="expression_coeffs: shape \\[2\\]"):
        deform(proc, None, np.zeros(2))
