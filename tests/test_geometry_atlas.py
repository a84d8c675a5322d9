"""The UV atlas: packing without overlap, exact + conservative rasterisation, maps, caching."""
import numpy as np
import pytest

from geometry_reference import ICT, ICT_SKIP_REASON, barycentric, overlapping_pairs, texel_centres
from headsup_jax.geometry import HeadTemplate, build_atlas, load_template
from headsup_jax.geometry.packing import chart_labels
from headsup_jax.geometry.procedural import procedural_template


@pytest.fixture(scope="module")
def proc():
    return procedural_template()


@pytest.fixture(scope="module")
def ict():
    if not ICT.exists():
        pytest.skip(ICT_SKIP_REASON)
    return load_template(str(ICT))


def disc_template(n=64, rings=8) -> HeadTemplate:
    """A flat regular n-gon of radius 0.1 m triangulated in rings, UV = a scaled copy of x, y."""
    verts, faces = [[0.0, 0.0]], []
    for r in range(1, rings + 1):
        a = 2 * np.pi * np.arange(n) / n
        verts += list(np.stack([np.cos(a), np.sin(a)], -1) * 0.1 * r / rings)
    for r in range(rings):
        inner = [0] * n if r == 0 else list(1 + (r - 1) * n + np.arange(n))
        outer = list(1 + r * n + np.arange(n))
        for k in range(n):
            k1 = (k + 1) % n
            faces.append([inner[k], outer[k], outer[k1]])
            if r:
                faces.append([inner[k], outer[k1], inner[k1]])
    xy = np.asarray(verts)
    v = np.concatenate([xy, np.zeros((len(xy), 1))], 1).astype(np.float32)
    f = np.asarray(faces, np.int32)
    return HeadTemplate(vertices=v, faces=f, uvs=(xy * 3 + 0.5).astype(np.float32), face_uvs=f, regions={},
                        expression_names=(), expression_deltas=np.zeros((0, len(v), 3), np.float32), name="disc")


def test_overlap_checker_detects_overlap():
    tri = np.array([[[0, 0], [1, 0], [0, 1]], [[0.2, 0.2], [1.2, 0.2], [0.2, 1.2]],  # overlap
                    [[1, 0], [1, 1], [0, 1]], [[2, 2], [3, 2], [2, 3]]], np.float64)  # touches 0 along an edge
    assert overlapping_pairs(tri).tolist() == [[0, 1], [1, 2]]


def test_ict_source_uvs_overlap_but_packed_atlas_does_not(ict):
    """Shared UV space in the source layout (eyeballs in the face tile) must not survive packing."""
    atlas = build_atlas(ict, 256)
    assert set(atlas.region_names) == {"face", "head_neck", "mouth_socket", "eyeball_left", "eyeball_right"}
    source = ict.uvs[ict.face_uvs[atlas.faces]].astype(np.float64)
    assert len(overlapping_pairs(source)) > 1000
    assert len(overlapping_pairs(atlas.face_uvs.astype(np.float64))) == 0
    assert atlas.face_uvs.min() >= 0 and atlas.face_uvs.max() <= 1
    print(f"ict R=256: G={atlas.count}, exact={int(atlas.exact.sum())}, charts={len(atlas.charts)}")


def test_procedural_atlas_has_no_overlap(proc):
    atlas = build_atlas(proc, 128)
    assert len(overlapping_pairs(atlas.face_uvs.astype(np.float64))) == 0
    assert len(atlas.charts) == 1  # one seamless-wrapped chart


def test_charts_are_area_proportional():
    """Two copies of a disc, one with 4x the surface area: its packed rectangle gets 4x the area."""
    d = disc_template(n=16, rings=2)
    F, V = len(d.faces), len(d.vertices)
    t = HeadTemplate(vertices=np.concatenate([d.vertices, d.vertices * 2 + [1, 0, 0]]).astype(np.float32),
                     faces=np.concatenate([d.faces, d.faces + V]), uvs=np.concatenate([d.uvs, d.uvs]),
                     face_uvs=np.concatenate([d.face_uvs, d.face_uvs + V]),
                     regions={"small": np.arange(F, dtype=np.int32), "big": np.arange(F, 2 * F, dtype=np.int32)},
                     expression_names=(), expression_deltas=np.zeros((0, 2 * V, 3), np.float32))
    atlas = build_atlas(t, 256, regions=["small", "big"])
    uv = atlas.face_uvs.astype(np.float64)
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    small = area[np.isin(atlas.faces, t.regions["small"])].sum()
    big = area[np.isin(atlas.faces, t.regions["big"])].sum()
    assert big / small == pytest.approx(4.0, rel=1e-6)
    assert len(overlapping_pairs(uv)) == 0


def test_valid_texels_scale_with_resolution_squared():
    """A regular 64-gon filling its chart: exact texels = packed area x R^2 up to the boundary, the ring
    adds about one perimeter of texels, and doubling R quadruples the count."""
    t = disc_template()
    n, counts = 64, {}
    for R in (64, 128, 256, 512):
        atlas = build_atlas(t, R)
        side = 1 - 2 / R  # the chart square inside its rectangle: half the 2-texel gutter on each side
        area = n / 2 * np.sin(2 * np.pi / n) / 4 * side ** 2  # polygon of circumradius side / 2
        perimeter = n * 2 * np.sin(np.pi / n) * side / 2
        exact, total = int(atlas.exact.sum()), atlas.count
        assert abs(exact - area * R * R) <= 0.5 * perimeter * R, (R, exact, area * R * R)
        assert 0.6 * perimeter * R <= total - exact <= 1.6 * perimeter * R, (R, total - exact, perimeter * R)
        counts[R] = exact
    assert counts[512] / counts[256] == pytest.approx(4.0, rel=0.02)
    assert counts[256] / counts[128] == pytest.approx(4.0, rel=0.04)


def test_exact_texels_match_brute_force():
    """Every texel against every triangle in float64 (a coarse procedural head, R = 64)."""
    t = procedural_template(num_rings=12, segments=16, num_identity=3)
    atlas = build_atlas(t, 64)
    tri = atlas.face_uvs.astype(np.float64)  # [Fs, 3, 2]
    q = texel_centres(64).reshape(-1, 2)
    inside = np.zeros(len(q), bool)
    for k in range(len(tri)):
        b = barycentric(q, np.broadcast_to(tri[k], (len(q), 3, 2)))
        inside |= b.min(1) >= -1e-9
    np.testing.assert_array_equal(atlas.exact.ravel(), inside)
    assert (atlas.mask | ~atlas.exact).all()


@pytest.mark.parametrize("which", ["proc", "ict"])
def test_texel_barycentrics_and_points(which, request):
    t = request.getfixturevalue(which)
    R = 128
    atlas = build_atlas(t, R)
    bary = atlas.texel_barycentrics().astype(np.float64)
    assert bary.min() >= 0 and bary.max() <= 1
    np.testing.assert_allclose(bary.sum(1), 1, atol=1e-6)
    # exact texels: the barycentric point of the packed triangle is the texel centre
    local = np.searchsorted(atlas.faces, atlas.texel_faces())
    tri_uv = atlas.face_uvs[local].astype(np.float64)
    centre = texel_centres(R).reshape(-1, 2)[atlas.texel_index]
    exact = atlas.exact.ravel()[atlas.texel_index]
    recon = np.einsum("gk,gkc->gc", bary, tri_uv)
    np.testing.assert_allclose(recon[exact], centre[exact], atol=1e-5)
    # ring texels: bound to a point of the triangle within half a texel diagonal of the centre
    dist = np.linalg.norm(recon[~exact] - centre[~exact], axis=1) * R
    assert (~exact).sum() > 0 and dist.max() <= np.sqrt(0.5) + 1e-4
    # the position map is that point on the 3D triangle: in its plane and inside it
    p = atlas.position_map.reshape(-1, 3)[atlas.texel_index].astype(np.float64)
    corners = t.vertices[t.faces[atlas.texel_faces()]].astype(np.float64)  # [G, 3, 3]
    n = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    assert np.abs(np.einsum("gc,gc->g", p - corners[:, 0], n)).max() < 1e-6
    e1, e2, d = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], p - corners[:, 0]
    dot = lambda a, b: np.einsum("gc,gc->g", a, b)  # noqa: E731
    gram = np.stack([np.stack([dot(e1, e1), dot(e1, e2)], -1), np.stack([dot(e1, e2), dot(e2, e2)], -1)], -2)
    w = np.linalg.solve(gram, np.stack([(d * e1).sum(1), (d * e2).sum(1)], -1)[..., None])[..., 0]
    assert w.min() >= -1e-4 and (w.sum(1)).max() <= 1 + 1e-4
    # normals: unit length, and on the closed procedural head they point away from the centre
    normals = atlas.normal_map.reshape(-1, 3)[atlas.texel_index]
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-5)
    if which == "proc":
        assert (np.einsum("gc,gc->g", normals, p) > 0).mean() > 0.99
    assert not atlas.position_map[~atlas.mask].any() and not atlas.normal_map[~atlas.mask].any()


def test_ict_region_selection(ict):
    atlas = build_atlas(ict, 64, regions=["teeth"])
    assert atlas.region_names == ("teeth",) and set(np.unique(atlas.region[atlas.mask])) == {0}
    assert np.isin(atlas.faces, ict.regions["teeth"]).all()


def test_bad_arguments(proc):
    with pytest.raises(ValueError, match="unknown regions \\['nose'\\]; valid regions: face, head_neck"):
        build_atlas(proc, 64, regions=["nose"])
    with pytest.raises(ValueError, match="outside \\[32, 1024\\]"):
        build_atlas(proc, 2048)


def test_gather_scatter_round_trip(proc):
    atlas = build_atlas(proc, 64)
    uv_map = np.random.default_rng(0).normal(size=(2, 64, 64, 5)).astype(np.float32)
    g = atlas.gather(uv_map)
    assert g.shape == (2, atlas.count, 5)
    np.testing.assert_array_equal(atlas.scatter(g[1]), np.where(atlas.mask[..., None], uv_map[1], 0))


def test_cache_round_trip(proc, tmp_path):
    a = build_atlas(proc, 64, cache_dir=tmp_path)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("atlas_") and files[0].suffix == ".npz"
    b = build_atlas(proc, 64, cache_dir=tmp_path)
    for field in ("triangle", "barycentric", "mask", "exact", "region", "position_map", "normal_map", "face_uvs"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert b.region_names == a.region_names and b.resolution == 64
    build_atlas(proc, 32, cache_dir=tmp_path)  # another R: another file, no temporary files left over
    assert len(list(tmp_path.iterdir())) == 2 and not list(tmp_path.glob("*.tmp*"))
    files[0].write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="unreadable atlas cache"):
        build_atlas(proc, 64, cache_dir=tmp_path)


def test_chart_labels_split_by_winding():
    uv = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float64)
    face_uvs = np.array([[0, 1, 2], [1, 3, 2], [0, 2, 1]], np.int32)  # the third is flipped
    labels = chart_labels(face_uvs, uv[face_uvs])
    assert labels[0] == labels[1] != labels[2]


def test_large_resolution_is_practical(proc):
    import time

    t0 = time.perf_counter()
    atlas = build_atlas(proc, 1024)
    assert time.perf_counter() - t0 < 60
    assert atlas.count > 0.95 * 1024 ** 2


def test_folded_chart_triangles_are_detached():
    """A fan winding 480 degrees around a vertex: same winding throughout, the last triangle lies on the
    first. Both get charts of their own; the middle two stay together."""
    angles = np.radians([0, 120, 240, 360, 480])
    uv = np.concatenate([[[0.5, 0.5]], 0.5 + 0.4 * np.stack([np.cos(angles), np.sin(angles)], -1)])
    face_uvs = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 5]], np.int32)
    labels = chart_labels(face_uvs, uv[face_uvs])
    assert labels[1] == labels[2] and len({labels[0], labels[1], labels[3]}) == 3
    assert len(overlapping_pairs(uv[face_uvs])) == 1  # the reference sees the fold too


def test_skyline_rectangles_are_disjoint_and_inside():
    from headsup_jax.geometry.packing import _skyline

    rng = np.random.default_rng(0)
    w, h = rng.uniform(0.02, 0.3, 60), rng.uniform(0.02, 0.3, 60)
    x, y, top = _skyline(w, h, np.argsort(-w * h), 1.0)
    assert np.all(x >= 0) and np.all(x + w <= 1 + 1e-12) and np.all(y >= 0) and top == pytest.approx((y + h).max())
    ox = np.minimum(x[:, None] + w[:, None], x[None] + w[None]) - np.maximum(x[:, None], x[None])
    oy = np.minimum(y[:, None] + h[:, None], y[None] + h[None]) - np.maximum(y[:, None], y[None])
    overlap = (ox > 1e-12) & (oy > 1e-12)
    np.fill_diagonal(overlap, False)
    assert not overlap.any()
    assert top < 1.6 * (w * h).sum()  # packed densely: at least 62% of the used area is rectangles
