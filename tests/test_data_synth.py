"""Synthetic subjects: deterministic per (seed, index), valid capture folders, consistent ground truth, and
the full round trip synth -> validate -> TFDS -> Grain, where the batch's cameras put the subject's mesh
silhouette on the right pixels of its masks."""
import dataclasses
import json

import time

import grain
import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

from headsup_jax.cli import main
from headsup_jax.data.appearance import paint, texel_basis
from headsup_jax.data.capture import load_capture
from headsup_jax.data.pipeline import PipelineConfig, make_pipeline
from headsup_jax.data.raycast import MeshRenderer, Surface, _rays, sample_texture
from headsup_jax.data.synth import STAGES, Generator, SynthConfig, generate, sample_expression, subject_name
from headsup_jax.geometry import load_template
from headsup_jax.data.tfds_builder import build_dataset, load_source
from headsup_jax.data.views import ViewSpec

CONFIG = SynthConfig(rig="frontal16", resolution=64, seed=7, texture_resolution=128)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert generate(out, 6, CONFIG, workers=2, progress=False) == 6 * 16
    return out


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_subject_regenerated_alone_is_identical(synth_dir, tmp_path):
    generate(tmp_path, 1, CONFIG, start=4, progress=False)
    alone, full = _files(tmp_path / subject_name(4)), _files(synth_dir / subject_name(4))
    assert len(alone) == 2 + 3 * 16 and alone == full  # cameras, blendshapes, 16 x (image, mask, depth)
    other = _files(synth_dir / subject_name(3))
    assert other["images/cam00.png"] != full["images/cam00.png"]


def test_valid_capture_with_consistent_ground_truth(synth_dir, capsys):
    assert main(["data", "validate", str(synth_dir)]) == 0
    assert "6 captures, 0 with problems" in capsys.readouterr().out
    cap = load_capture(synth_dir / subject_name(0))
    assert len(cap.cameras) == 16 and (cap.cameras[0].width, cap.cameras[0].height) == (48, 64)
    for cid in ("cam00", "cam07"):
        mask = np.asarray(Image.open(cap.mask_files[cid])) / 255.0
        depth = np.asarray(Image.open(cap.depth_files[cid])).astype(np.float64) / 1000.0
        rgb = np.asarray(Image.open(cap.image_files[cid])).astype(np.float64)
        assert 0.05 < (mask > 0.5).mean() < 0.6  # the head fills part of the frame
        assert ((depth > 0) == (mask > 0.5)).mean() > 0.97
        assert 0.75 < depth[depth > 0].min() and depth.max() < 1.25  # cameras 1 m from the head
        background = rgb[mask == 0]
        assert background.std(0).max() < 1.0 and abs(rgb[mask == 1].mean() - background.mean()) > 1


def test_identities_differ_in_shape_and_appearance(synth_dir):
    g = Generator(CONFIG)
    a, b = g.vertices(g.identity(0), {}), g.vertices(g.identity(1), {})
    assert np.abs(a - b).max() > 0.003
    colors = [np.asarray(Image.open(synth_dir / subject_name(i) / "images" / "cam02.png"))[24:40, 18:30].mean((0, 1))
              for i in range(6)]
    assert np.ptp(np.array(colors), axis=0).max() > 10  # skin tones differ between subjects


def test_expression_frames(tmp_path):
    cfg = SynthConfig(rig="random3", resolution=32, seed=1, texture_resolution=64, frames=2)
    generate(tmp_path, 1, cfg, progress=False)
    neutral = load_capture(tmp_path / subject_name(0) / "frame_00")
    expr = load_capture(tmp_path / subject_name(0) / "frame_01")
    assert neutral.blendshapes == {} and 1 <= len(expr.blendshapes) <= 3
    assert all(0.3 <= w <= 1 for w in expr.blendshapes.values())
    assert json.loads((tmp_path / "synth.json").read_text())["frames"] == 2
    assert generate(tmp_path, 1, cfg, progress=False) == 0  # finished subjects are skipped
    with pytest.raises(ValueError, match="was generated with"):
        generate(tmp_path, 1, dataclasses.replace(cfg, seed=2), progress=False)


def test_expression_frames_keep_the_light_and_sample_every_shape_the_template_drives(tmp_path):
    cfg = SynthConfig(rig="random3", resolution=48, seed=3, texture_resolution=64, frames=2)
    generate(tmp_path, 1, cfg, progress=False)
    frames = [tmp_path / subject_name(0) / f"frame_{f:02d}" for f in range(2)]
    for cam in ("cam00", "cam01", "cam02"):
        rgb, depth = ([np.asarray(Image.open(folder / sub / f"{cam}.png"), np.int32) for folder in frames]
                      for sub in ("images", "depth"))
        still = (depth[0] == depth[1]) & (depth[0] > 0)  # head pixels the expression does not move
        assert still.sum() > 100
        assert (np.abs(rgb[0] - rgb[1]).max(-1)[still] <= 1).mean() > 0.9  # same light: same colours there
    template = load_template("procedural")
    rng = np.random.default_rng(0)
    drawn = set().union(*(sample_expression(template, rng) for _ in range(400)))
    assert drawn == {"jawOpen", "jawLeft", "jawRight", "mouthPucker", "cheekPuff", "browInnerUp", "mouthSmileLeft",
                     "mouthSmileRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeWideLeft", "eyeWideRight",
                     "browDownLeft", "browDownRight"}  # ARKit names, the sided ones included


def _bbox(points_u, points_v):
    return np.array([points_u.min(), points_v.min(), points_u.max(), points_v.max()])


def test_round_trip_batch_cameras_match_the_mesh(synth_dir, tmp_path):
    ds = build_dataset(synth_dir, tmp_path, split_seed=0, validation=0.0, test=1 / 6)
    views = ViewSpec(num_inputs=4, num_targets=4, width=40, height=40)  # crops 48x64 to 48x48, resizes
    it = make_pipeline(load_source(ds, "train"), PipelineConfig(batch_size=2, views=views), seed=0,
                       shard_options=grain.sharding.ShardOptions(0, 1))
    batch = next(it)
    assert batch["inputs"].shape == (2, 4, 40, 40, 3) and batch["target_masks"].shape == (2, 4, 40, 40)
    assert batch["inputs"].dtype == np.float32 and 0 <= batch["inputs"].min() and batch["inputs"].max() <= 1
    g = Generator(CONFIG)
    checked = 0
    for b, subject in enumerate(batch["subject"]):
        verts = g.vertices(g.identity(int(subject.decode().split("_")[1])), {})  # [V, 3]
        for m in range(4):
            K, w2c = batch["target_cameras"]["K"][b, m], batch["target_cameras"]["world_to_cam"][b, m]
            x = verts @ w2c[:3, :3].T + w2c[:3, 3]
            uv = x[:, :2] / x[:, 2:] * K[[0, 1], [0, 1]] + K[:2, 2]
            ys, xs = np.nonzero(batch["target_masks"][b, m] > 0.5)
            mask_box = _bbox(xs, ys) + np.array([0, 0, 1, 1])  # pixel edges
            mesh_box = _bbox(uv[:, 0], uv[:, 1])
            inside = (mesh_box > 0.5) & (mesh_box < 39.5)  # silhouette edges not cut by the image border
            assert inside.sum() >= 2
            np.testing.assert_allclose(mask_box[inside], mesh_box[inside], atol=1.0)
            checked += int(inside.sum())
    assert checked >= 16


def _pupil(image, u, v, r=3):
    """Sub-pixel centre of the darkest spot within r pixels of (u, v): the painted pupil. image [H, W]"""
    i0, j0 = int(v), int(u)
    win = image[i0 - r:i0 + r + 1, j0 - r:j0 + r + 1]
    a, b = np.clip(np.unravel_index(np.argmin(win), win.shape), 1, 2 * r - 1)
    w = np.clip(np.median(win) - win[a - 1:a + 2, b - 1:b + 2], 0, None) ** 2
    dy, dx = np.mgrid[-1:2, -1:2]
    return j0 - r + b + 0.5 + (w * dx).sum() / w.sum(), i0 - r + a + 0.5 + (w * dy).sum() / w.sum()


def test_round_trip_landmarks_land_on_their_pixels(tmp_path):
    """The eye anchors of each subject's deformed mesh, projected with the batch's cameras (after the
    pipeline's crop and resize), fall on the pupils painted there, within 1 px."""
    cfg = SynthConfig(rig="frontal16", resolution=256, seed=3, texture_resolution=512)
    generate(tmp_path / "caps", 3, cfg, progress=False)
    ds = build_dataset(tmp_path / "caps", tmp_path / "tfds", split_seed=0, validation=0.0, test=1 / 3)
    views = ViewSpec(num_inputs=1, num_targets=15, width=176, height=224)  # crops 192x256 to 192x244, shrinks 1.09x
    batch = next(make_pipeline(load_source(ds, "train"), PipelineConfig(batch_size=2, views=views), seed=0,
                               shard_options=grain.sharding.ShardOptions(0, 1)))
    g = Generator(cfg)
    errors = []
    for b, subject in enumerate(batch["subject"]):
        landmarks = g.landmarks(int(subject.decode().split("_")[1]))
        for m in range(15):
            K, w2c = batch["target_cameras"]["K"][b, m], batch["target_cameras"]["world_to_cam"][b, m]
            centre = -w2c[:3, :3].T @ w2c[:3, 3]
            gray = batch["targets"][b, m].mean(-1)
            for name in ("eye_left", "eye_right"):
                p = landmarks[name]
                if (centre - p)[2] / np.linalg.norm(centre - p) < 0.85:
                    continue  # only eyes seen nearly head-on (no eyelid or nose in the way)
                x = w2c[:3, :3] @ p + w2c[:3, 3]
                u, v = (K @ (x / x[2]))[:2]
                errors.append(np.hypot(*np.subtract(_pupil(gray, u, v), (u, v))))
    assert len(errors) >= 8 and max(errors) < 1.0, errors


def test_ict_template_subject(tmp_path):
    """ICT-FaceKit: 100 identity modes, UDIM tiles with overlapping charts, landmark-placed features."""
    from headsup_jax.geometry.loaders import ict_path

    if not ict_path().exists():
        pytest.skip(f"ICT-FaceKit archive not found at {ict_path()} (see the shared data README)")
    cfg = SynthConfig(rig="random4", resolution=64, seed=0, template="ict", texture_resolution=64)
    generate(tmp_path, 1, cfg, progress=False)
    cap = load_capture(tmp_path / subject_name(0))
    g = Generator(cfg)
    assert g.identity(0).shape == (100,)
    assert g.basis.valid.shape[1] > 64  # several canvases: the eyeballs overlap the face in UV space
    hidden = np.concatenate([f for n, f in g.template.regions.items() if n.startswith(cfg.hidden_regions)])
    assert len(hidden) and np.array_equal(np.sort(g.basis.faces), np.setdiff1d(np.arange(len(g.template.faces)), hidden))
    centre = g.basis.corner_uvs.mean(1)  # [F', 2]: each laid-out face's UV centroid lands on a painted texel
    texel = np.clip(((1 - centre[:, 1]) * 64).astype(int), 0, 63), np.clip((centre[:, 0] * 64).astype(int), 0, None)
    assert g.basis.valid[texel].mean() > 0.99
    masks = [np.asarray(Image.open(cap.mask_files[c.id])) for c in cap.cameras]
    assert all(0.05 < (m > 127).mean() < 0.7 for m in masks)


def test_synth_and_build_commands(tmp_path, capsys):
    args = ["--rig", "random3", "--resolution", "32", "--texture-resolution", "64", "--seed", "5"]
    assert main(["data", "synth", "--subjects", "3", "--out", str(tmp_path / "caps"), *args]) == 0
    assert "9 views rendered" in capsys.readouterr().out  # 3 subjects x 3 cameras
    assert sorted(p.name for p in (tmp_path / "caps").iterdir()) == ["synth.json"] + [subject_name(i) for i in range(3)]
    assert main(["data", "build", str(tmp_path / "caps"), "--out", str(tmp_path / "tfds"), "--test", "0.34",
                 "--validation", "0"]) == 0
    assert "subjects test: 1, validation: 0, train: 2; 0 skipped" in capsys.readouterr().out


def test_sample_texture_is_bilinear_with_clamped_edges():
    """raycast.sample_texture equals scipy's order-1 map_coordinates (edges replicated) in float64, with
    texel (i, j) centred at u = (j + .5) / T, v = 1 - (i + .5) / T, on two canvases side by side."""
    rng = np.random.default_rng(0)
    tex = rng.random((8, 16, 3), dtype=np.float32)  # [T, 2T, 3]
    uv = rng.uniform([-0.2, -0.2], [2.2, 1.2], (500, 2)).astype(np.float32)
    rows, cols = (1 - uv[:, 1].astype(np.float64)) * 8 - 0.5, uv[:, 0].astype(np.float64) * 8 - 0.5
    want = np.stack([scipy.ndimage.map_coordinates(tex[..., c].astype(np.float64), [rows, cols], order=1,
                                                   mode="nearest") for c in range(3)], -1)
    np.testing.assert_allclose(sample_texture(tex, uv), want, atol=1e-6)
    centres = np.array([[(5 + 0.5) / 8, 1 - (2 + 0.5) / 8]], np.float32)
    np.testing.assert_array_equal(sample_texture(tex, centres)[0], tex[2, 5])


def _texel_classes(basis):
    """Texel masks [N] of features by position on the neutral procedural head (relative to its anchors)."""
    x, y, z = basis.points.astype(np.float64)
    e = basis.eyes[0]
    r, front = np.hypot(x - e[0], y - e[1]), z > e[2] - 0.01
    lips = ((x - basis.mouth[0]) / basis.mouth_half_width) ** 2 + ((y - basis.mouth[1]) / 0.007) ** 2 < 0.25
    lips &= np.abs(z - basis.mouth[2]) < 0.02
    eye_y = basis.eyes[:, 1].mean()
    return {"pupil": front & (r < 0.0015), "iris": front & (r > 0.0028) & (r < 0.0045),
            "sclera": front & (np.abs(x - e[0]) > 0.008) & (np.abs(x - e[0]) < 0.012) & (np.abs(y - e[1]) < 0.002),
            "lips": lips, "forehead": front & (np.abs(x) < 0.02) & (y > eye_y + 0.025) & (y < eye_y + 0.035),
            "crown": y > eye_y + 0.1}


def test_features_in_place_at_any_texture_resolution():
    """The same subject painted at T = 128 and 512: pupil, iris and sclera have their exact colours where
    the eye is, lips are redder than the forehead, the crown is hair or cap, not skin; each feature's mean
    colour agrees between the resolutions (only the per-texel noise depends on T), and the pores vary
    texel to texel at both."""
    template = load_template("procedural")
    bases = {T: texel_basis(template, T) for T in (128, 512)}
    for seed in range(4):
        means = {}
        for T, basis in bases.items():
            tex = paint(basis, np.random.default_rng(seed)).reshape(-1, 3)[basis.texels]  # [N, 3]
            classes = _texel_classes(basis)
            assert all(m.sum() >= (1 if T == 128 else 5) for k, m in classes.items() if k != "pupil"), T
            if classes["pupil"].any():
                np.testing.assert_array_equal(tex[classes["pupil"]], np.float32(0.01))
            np.testing.assert_allclose(tex[classes["sclera"]], np.broadcast_to([0.7, 0.68, 0.65], (classes["sclera"].sum(), 3)),
                                       rtol=1e-6)
            iris = tex[classes["iris"]]
            assert np.ptp(iris, axis=0).max() == 0 and iris.max() < 0.5  # one eye colour
            m = means[T] = {k: tex[c].mean(0) for k, c in classes.items() if k != "pupil"}
            redness = lambda c: c[0] / c[1]
            assert redness(m["lips"]) > 1.5 * redness(m["forehead"]), (seed, T)
            assert np.abs(m["crown"] - m["forehead"]).max() > 0.02, (seed, T)
            skin = tex[classes["forehead"]]
            assert 0.01 < (skin / skin.mean(0)).std() < 0.15  # pores (and smooth variation) per texel
        for k in means[128]:
            np.testing.assert_allclose(means[128][k], means[512][k], atol=0.04, err_msg=f"seed {seed} {k}")


def _texels_per_pixel(gen, camera) -> float:
    """Median over the face in one view of sqrt(texture texels covered by an image pixel), from the UVs
    hit by rays through pixel centres: |det| of the UV step to the right and down, in texels."""
    t, basis = gen.template, gen.basis
    renderer = MeshRenderer(Surface(gen.vertices(gen.identity(0), {}), t.faces[basis.faces], basis.corner_uvs,
                                    np.zeros((*basis.shape, 3), np.float32)))
    origins, dirs, _ = _rays(camera, 1)
    hit = renderer.scene.run(np.ascontiguousarray(origins), dirs, output=1)
    f = np.maximum(hit["primID"], 0)
    b = np.stack([1 - hit["u"] - hit["v"], hit["u"], hit["v"]], -1)  # [P, 3]
    uv = np.einsum("pk,pkc->pc", b, basis.corner_uvs[f]).reshape(camera.height, camera.width, 2) * basis.shape[0]
    face = (np.isin(basis.faces, t.regions["face"])[f] & (hit["primID"] >= 0)).reshape(camera.height, camera.width)
    right, down = np.diff(uv, axis=1)[:-1], np.diff(uv, axis=0)[:, :-1]  # [H-1, W-1, 2] texels
    texels = np.abs(right[..., 0] * down[..., 1] - right[..., 1] * down[..., 0])
    quad = face[1:, 1:] & face[1:, :-1] & face[:-1, 1:] & face[:-1, :-1]
    return float(np.median(np.sqrt(texels[quad & (texels < 100)])))  # chart seams excluded


@pytest.mark.parametrize("template", ["procedural", "ict"])
def test_default_texture_resolution_matches_the_images(template):
    """With the default texture resolution the face gets TEXELS_PER_PIXEL (2) texels per image pixel,
    measured on rays in four frontal16 views at two image heights (1.6 to 2.8: foreshortening adds a
    little): detail down to the pixel, no more."""
    from headsup_jax.geometry.loaders import ict_path

    if template == "ict" and not ict_path().exists():
        pytest.skip(f"ICT-FaceKit archive not found at {ict_path()} (see the shared data README)")
    for resolution in (64, 128):
        gen = Generator(SynthConfig(template=template, resolution=resolution, jitter=False))
        density = [_texels_per_pixel(gen, cam) for cam in np.array(gen.cameras(0))[[2, 7, 8, 13]]]
        assert 1.6 < min(density) and max(density) < 2.8, (resolution, gen.basis.shape, density)


def test_stage_seconds_add_up(tmp_path):
    """Generator.seconds: set-up stages, then each subject's stages sum to (nearly all of) its wall time."""
    gen = Generator(SynthConfig(rig="random3", resolution=32, texture_resolution=64))
    assert gen.seconds["template"] > 0 and gen.seconds["basis"] > 0
    gen.subject(0, tmp_path)
    gen.seconds.clear()
    t0 = time.perf_counter()
    gen.subject(1, tmp_path)
    wall = time.perf_counter() - t0
    assert set(gen.seconds) == set(STAGES) and 0.9 * wall < sum(gen.seconds.values()) <= wall
