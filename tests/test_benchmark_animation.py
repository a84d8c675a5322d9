"""benchmarks/animation.py's feature regions (the landmarks' pixel boxes, against boxes built from known
pixels), and `headsup animate --method latent` end to end: every frame it writes is the frozen base
decoder's Gaussians of F(Z_neutral, b) for the file's coefficients, which is not the rig's animation.

The latent route reuses test_model_expression's base (an untrained tiny run with random decoder heads, so
its Gaussians depend on Z) and its expression run (the tiny config trained 40 steps on synthetic frames)."""
import importlib.util
import json
import pathlib

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.transform import Rotation

from test_model_expression import base, expression_config, expression_run  # noqa: F401 (fixtures)

from headsup_jax.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_animation", ROOT / "benchmarks" / "animation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_feature_regions_are_the_landmarks_boxes_grown_and_clipped():
    bench = load_benchmark()
    H, W = 64, 48
    margin = 2  # round(0.03 * 64)
    K = np.array([[70.0, 0, 23.0], [0, 70.0, 31.0], [0, 0, 1]])
    world_to_cam = np.eye(4)
    world_to_cam[:3, :3] = Rotation.from_euler("yx", [30, -10], degrees=True).as_matrix()
    world_to_cam[:3, 3] = [0.05, -0.02, 1.1]
    rng = np.random.default_rng(0)
    # pixel (column, row) of each of the 68 landmarks: mouth in one block, one eye at the left image edge,
    # the other eye behind the camera (no box)
    pixels = np.zeros((68, 2), int)
    pixels[48:68] = rng.integers([20, 40], [30, 46], (20, 2))
    pixels[36:42] = rng.integers([0, 10], [4, 13], (6, 2))
    pixels[42:48] = rng.integers([30, 10], [36, 13], (6, 2))
    depth = rng.uniform(0.9, 1.2, 68)
    depth[42:48] *= -1
    camera_points = depth[:, None] * (np.c_[pixels + 0.5, np.ones(68)] @ np.linalg.inv(K).T)  # [68, 3]
    w2c_inverse = np.linalg.inv(world_to_cam)
    world = camera_points @ w2c_inverse[:3, :3].T + w2c_inverse[:3, 3]
    landmarks = rng.permutation(300)[:68]  # vertex indices into a larger mesh
    vertices = rng.normal(size=(300, 3))
    vertices[landmarks] = world

    def box(group):
        (c0, r0), (c1, r1) = pixels[group].min(0), pixels[group].max(0)
        out = np.zeros((H, W), np.float32)
        out[max(0, r0 - margin):r1 + margin + 1, max(0, c0 - margin):c1 + margin + 1] = 1
        return out

    regions = bench.region_masks(landmarks, vertices, K, world_to_cam, H, W)
    np.testing.assert_array_equal(regions["mouth"], box(slice(48, 68)))
    np.testing.assert_array_equal(regions["eyes"], box(slice(36, 42)))
    assert regions["eyes"][:, 0].any()  # clipped at the edge, not dropped

    depth[42:48] *= -1  # both eyes in front: the union of two boxes
    camera_points = depth[:, None] * (np.c_[pixels + 0.5, np.ones(68)] @ np.linalg.inv(K).T)
    vertices[landmarks] = camera_points @ w2c_inverse[:3, :3].T + w2c_inverse[:3, 3]
    eyes = bench.region_masks(landmarks, vertices, K, world_to_cam, H, W)["eyes"]
    np.testing.assert_array_equal(eyes, np.maximum(box(slice(36, 42)), box(slice(42, 48))))
    assert eyes[:, 20].sum() == 0  # nothing between the eyes


FIELDS = ("means", "quats", "scales", "opacities", "sh")


def test_a_region_moves_by_its_farthest_landmark_and_identical_pixels_score_the_cap():
    """A one-sided blink moving 4 of the 12 eye landmarks by 3 mm moves the eyes by 3 mm (a mean would say
    1 mm, under MOVED); a region an expression leaves untouched scores PSNR_CAP, not infinity."""
    bench = load_benchmark()
    landmarks = np.arange(68) * 2  # vertex index of each landmark
    neutral = np.random.default_rng(1).normal(size=(200, 3))
    moved = neutral.copy()
    moved[landmarks[[37, 38, 40, 41]], 1] -= 0.003  # the left eye's lids close (metres)
    motion = bench.landmark_motion(landmarks, neutral, moved)
    assert abs(motion["eyes"] - 0.003) < 1e-12 and motion["mouth"] == 0.0, motion
    assert motion["eyes"] > bench.MOVED
    from headsup_jax.train.metrics import psnr
    image = np.full((2, 8, 6, 3), 0.5, np.float32)
    other = image + np.array([0, 0.1], np.float32)[:, None, None, None]  # the second differs by 0.1: 20 dB
    scores = np.asarray(psnr(other, image, np.ones((2, 8, 6))))
    assert np.isinf(scores[0])  # why the benchmark caps it
    capped = bench.cap_psnr({("psnr", "mouth"): scores, ("ssim", "mouth"): np.array([1.0, 0.5])})
    np.testing.assert_allclose(capped["psnr", "mouth"], [bench.PSNR_CAP, 20.0], rtol=1e-5)
    np.testing.assert_array_equal(capped["ssim", "mouth"], [1.0, 0.5])


def test_cli_latent_route_writes_the_expression_models_decoded_frames(tmp_path, capsys, base,  # noqa: F811
                                                                      expression_run):  # noqa: F811
    from headsup_jax.data.capture import load_capture
    from headsup_jax.export.ply import load_ply
    from headsup_jax.geometry import expression_coefficients
    from headsup_jax.infer.animate import animate_rig, capture_latent, neutral_head
    from headsup_jax.train.expression import load_expression

    trained, source = base
    neutral = source / "synth_000000" / "frame_00"
    frames = [{}, {"jawOpen": 1.0}, {"mouthSmile_L": 0.7, "eyeBlink_R": 0.5}]
    (tmp_path / "anim.json").write_text(json.dumps(frames))
    code = main(["animate", "--workdir", str(trained.workdir), "--capture", str(neutral), "--method", "latent",
                 "--expression-workdir", str(expression_run[0]), "--blendshapes", str(tmp_path / "anim.json"),
                 "--resolution", "32", "--out", str(tmp_path / "a.mp4"), "--ply-sequence", str(tmp_path / "plys")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "3 frames" in out.out and "(latent, frontal16)" in out.out
    assert iio.imread(tmp_path / "a.mp4").shape == (3, 32, 24, 3)
    written = [load_ply(tmp_path / "plys" / f"frame_{f:05d}.ply") for f in range(3)]

    # the frozen base decoder's Gaussians of F(Z_neutral, b), Z_neutral from the views reconstruct picks
    model = load_expression(expression_run[0], trained=trained)[0]
    coeffs = np.stack([expression_coefficients(trained.template, f) for f in frames])  # [3, E]
    z = jnp.asarray(capture_latent(trained, load_capture(neutral)))
    expected, _ = trained.model.head_gaussians(trained.model.decoder(model(jnp.broadcast_to(z, (3,) + z.shape),
                                                                           jnp.asarray(coeffs))))
    for f, got in enumerate(written):
        for k in FIELDS:
            want = np.asarray(getattr(expected, k))[f]
            if k == "quats":  # q and -q are one rotation
                want = want * np.sign(np.sum(want * got.quats, -1, keepdims=True))
            np.testing.assert_allclose(getattr(got, k), want, rtol=1e-4, atol=1e-5, err_msg=f"frame {f} {k}")

    # the coefficients reach the decoded head, and it is not the rig: at zero the latent head stays near the
    # reconstruction; under jawOpen the rig drops the chin centimetres, which the latent head does not copy
    decoded = jax.tree.map(lambda x: np.asarray(x[0]), trained.model.head_gaussians(trained.model.decoder(z[None]))[0])
    head = neutral_head(trained.template, trained.atlas, decoded)  # the reconstruction (unjitted)
    rig = animate_rig(head, coeffs)
    from_head = [np.abs(w.means - head.gaussians.means).max() for w in written]
    from_rig = np.abs(written[1].means - np.asarray(rig.means)[1]).max()
    print(f"latent frames: max |mean - reconstruction| {from_head} m; jawOpen frame vs the rig's {from_rig:.3g} m")
    assert from_head[0] < min(from_head[1:])
    assert from_rig > 5e-3
