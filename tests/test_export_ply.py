"""PLY in the 3DGS layout: exact round trip, a file from an independent writer renders like the original,
gsplat's reference projection/SH fed our file agrees with our renderer, and malformed files are named."""
import jax
import numpy as np
import plyfile
import pytest

from headsup_jax.export.checks import GaussianFileError, load_gaussians, save_gaussians
from headsup_jax.export.ply import load_ply, save_ply
from headsup_jax.render import Gaussians, project, rasterize
from headsup_jax.render.cameras import look_at
from headsup_jax.render.scenes import random_scene
from headsup_jax.render.sh import sh_colors

CAM = look_at((0.25, 0.15, 1.1), 40, 32, 35.0)


def scene(sh_degree=1, seed=0, n=300):
    return random_scene(seed, n, sh_degree=sh_degree, extent=0.2, scale_range=(0.005, 0.05))


def assert_same(a: Gaussians, b: Gaussians, rtol=1e-6):
    for f in ("means", "quats", "scales", "opacities", "sh"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype == np.float32 and x.shape == y.shape, f
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-7, err_msg=f)


def independent_ply(g: Gaussians, path):
    """The layout written from its definition (Inria's point_cloud.ply), without our writer: float64 maths,
    f_rest filled coefficient by coefficient as f_rest_{c * (K - 1) + (k - 1)} = sh[:, k, c]."""
    P, K = g.sh.shape[:2]
    cols = {"x": g.means[:, 0], "y": g.means[:, 1], "z": g.means[:, 2],
            "nx": np.zeros(P), "ny": np.zeros(P), "nz": np.zeros(P)}
    for c in range(3):
        cols[f"f_dc_{c}"] = g.sh[:, 0, c]
    for c in range(3):
        for k in range(1, K):
            cols[f"f_rest_{c * (K - 1) + k - 1}"] = g.sh[:, k, c]
    op = g.opacities.astype(np.float64)
    cols["opacity"] = np.log(op) - np.log1p(-op)
    for i in range(3):
        cols[f"scale_{i}"] = np.log(g.scales[:, i].astype(np.float64))
    for i in range(4):
        cols[f"rot_{i}"] = g.quats[:, i]
    arr = np.empty(P, [(n, "f4") for n in cols])
    for n, v in cols.items():
        arr[n] = v
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")]).write(str(path))


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_round_trip_exact_to_float32(tmp_path, degree):
    g = scene(degree)
    g = Gaussians(g.means, g.quats, g.scales, np.concatenate([g.opacities[:-2], [0.0, 1.0]]).astype(np.float32), g.sh)
    save_ply(g, tmp_path / "a.ply")
    back = load_ply(tmp_path / "a.ply")
    # log/logit stored as float32: a few ulp of relative error after exp/sigmoid
    assert_same(back, g, rtol=2e-6)
    assert back.opacities[-1] == 1.0 and back.opacities[-2] < 1e-11  # 0 and 1 survive as finite logits
    names = [p.name for p in plyfile.PlyData.read(str(tmp_path / "a.ply"))["vertex"].properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert len(names) == 17 + 3 * ((degree + 1) ** 2 - 1)


def test_sh_degree_3_pads_zeros_to_45_f_rest(tmp_path):
    g = scene(1)
    save_gaussians(g, tmp_path / "a.ply", sh_degree=3)
    vertex = plyfile.PlyData.read(str(tmp_path / "a.ply"))["vertex"]
    rest = [p.name for p in vertex.properties if p.name.startswith("f_rest_")]
    assert rest == [f"f_rest_{i}" for i in range(45)]
    # channel-major: R's 15 coefficients first; degree-1 R coefficients are f_rest_0..2, G's f_rest_15..17
    np.testing.assert_array_equal(vertex["f_rest_1"], g.sh[:, 2, 0])
    np.testing.assert_array_equal(vertex["f_rest_16"], g.sh[:, 2, 1])
    np.testing.assert_array_equal(vertex["f_rest_44"], 0)
    back = load_gaussians(tmp_path / "a.ply")
    assert back.sh.shape == (g.count, 16, 3)
    np.testing.assert_array_equal(back.sh[:, :4], g.sh)
    np.testing.assert_array_equal(back.sh[:, 4:], 0)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_independent_file_loads_and_renders_like_the_original(tmp_path, degree):
    g = scene(degree, seed=degree)
    independent_ply(g, tmp_path / "other.ply")
    loaded = load_ply(tmp_path / "other.ply")
    assert_same(loaded, g, rtol=2e-6)
    render = jax.jit(lambda gs: rasterize(gs, CAM, background=np.full(3, 0.2, np.float32), backend="xla"))
    a, b = render(g), render(loaded)
    assert float(a.alpha.max()) > 0.5  # the scene is in view
    np.testing.assert_allclose(np.asarray(b.rgb), np.asarray(a.rgb), atol=1e-5)
    np.testing.assert_allclose(np.asarray(b.alpha), np.asarray(a.alpha), atol=1e-5)


def test_gsplat_reference_on_our_file_agrees_with_our_renderer(tmp_path):
    """Our file read by the layout's rules (exp, sigmoid, normalised quats, channel-major SH) into gsplat
    1.5.3's PyTorch reference: means2d, conics, depths and SH colours equal our projection of the
    original Gaussians (float64 both sides, 1e-4 relative)."""
    torch = pytest.importorskip("torch")
    from gsplat.cuda import _torch_impl as gs

    g = scene(3, seed=5, n=400)
    save_ply(g, tmp_path / "head.ply")
    v = plyfile.PlyData.read(str(tmp_path / "head.ply"))["vertex"]
    t = lambda a: torch.tensor(np.asarray(a, np.float64))
    col = lambda *names: np.stack([np.asarray(v[n], np.float64) for n in names], 1)
    means, scales = t(col("x", "y", "z")), torch.exp(t(col("scale_0", "scale_1", "scale_2")))
    quats = torch.nn.functional.normalize(t(col("rot_0", "rot_1", "rot_2", "rot_3")), dim=-1)
    rest = t(col(*[f"f_rest_{i}" for i in range(45)])).reshape(-1, 3, 15).transpose(1, 2)  # [P, 15, 3]
    coeffs = torch.cat([t(col("f_dc_0", "f_dc_1", "f_dc_2"))[:, None], rest], 1)  # [P, 16, 3]
    covars, _ = gs._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, _ = gs._fully_fused_projection(
        means, covars, t(CAM.world_to_cam)[None], t(CAM.K)[None], CAM.width, CAM.height, eps2d=0.3)
    eye = -t(CAM.world_to_cam)[:3, :3].T @ t(CAM.world_to_cam)[:3, 3]
    ref_rgb = torch.clamp_min(gs._spherical_harmonics(3, means - eye, coeffs) + 0.5, 0.0).numpy()
    with jax.enable_x64(True):
        g64 = jax.tree.map(lambda a: np.asarray(a, np.float64), g)
        cam64 = jax.tree.map(lambda a: np.asarray(a, np.float64), CAM)
        ours = jax.jit(project)(g64, cam64)
        ours_rgb = np.asarray(sh_colors(g64, cam64.position))
    both = np.asarray(ours.visible) & np.all(radii[0].numpy() > 0, -1)
    assert both.sum() > 200
    np.testing.assert_allclose(np.asarray(ours.means2d)[both], means2d[0].numpy()[both], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours.depths)[both], depths[0].numpy()[both], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(ours.conics)[both], conics[0].numpy()[both], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours_rgb, ref_rgb, rtol=1e-4, atol=1e-5)
    opacity = 1 / (1 + np.exp(-np.asarray(v["opacity"], np.float64)))
    np.testing.assert_allclose(opacity, g.opacities, rtol=1e-6)


def _write_vertex(path, names, n=3, nan=None):
    arr = np.full(n, 0.1, [(name, "f4") for name in names])
    if nan:
        arr[nan][1] = np.nan
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")]).write(str(path))


def test_malformed_files_name_file_and_property(tmp_path):
    from headsup_jax.export.ply import property_names

    names = property_names(1)
    _write_vertex(tmp_path / "noscale.ply", [n for n in names if n != "scale_1"])
    with pytest.raises(GaussianFileError, match=r"noscale\.ply: vertex property 'scale_1' is missing"):
        load_ply(tmp_path / "noscale.ply")
    _write_vertex(tmp_path / "rest.ply", [n for n in names if n != "f_rest_8"])
    with pytest.raises(GaussianFileError, match=r"rest\.ply: 8 f_rest_\* properties; SH degrees 0\.\.3 have \[0, 9, 24, 45\]"):
        load_ply(tmp_path / "rest.ply")
    _write_vertex(tmp_path / "gap.ply", [n if n != "f_rest_4" else "f_rest_9" for n in names])
    with pytest.raises(GaussianFileError, match=r"gap\.ply: vertex property 'f_rest_4' is missing"):
        load_ply(tmp_path / "gap.ply")
    _write_vertex(tmp_path / "nan.ply", names, nan="opacity")
    with pytest.raises(GaussianFileError, match=r"nan\.ply: vertex property 'opacity' has non-finite values \(first at vertex 1\)"):
        load_ply(tmp_path / "nan.ply")
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all\n")
    with pytest.raises(GaussianFileError, match=r"junk\.ply: not a readable PLY file"):
        load_ply(tmp_path / "junk.ply")
    good = tmp_path / "good.ply"
    save_ply(scene(0), good)
    (tmp_path / "cut.ply").write_bytes(good.read_bytes()[:-50])
    with pytest.raises(GaussianFileError, match=r"cut\.ply: not a readable PLY file"):
        load_ply(tmp_path / "cut.ply")
    with pytest.raises(GaussianFileError, match=r"head\.obj: unknown Gaussians file type '\.obj'"):
        load_gaussians(tmp_path / "head.obj")
    with pytest.raises(ValueError, match="one set of Gaussians"):
        save_ply(jax.tree.map(lambda a: a[None], scene(0)), tmp_path / "batch.ply")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries left
